"""Whisper's encoder: every hidden layer, from waveforms, over consecutive 30 s windows.

The encoder takes log-mel features of exactly one window (3000 mel frames, 30 s, for the released checkpoints) and
adds one positional embedding per output frame (1500 of them, fixed sinusoids), so longer audio is cut into
consecutive windows, each padded with silence and encoded on its own, and the valid frames of each window are
concatenated: no context crosses a window boundary. Whisper takes no attention mask; every window is padded to its
full length with zeros whatever the batch, so batching never changes a valid frame, but the valid frames near a
clip's end do attend to that silence, as Whisper was trained to.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PretrainedConfig, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from . import compat
from .base import Upstream, lengths_to_mask
from .hf import MODEL_TYPES, readable_load_error, saved_feature_extractor


class WhisperLogMel(nn.Module):
    """`WhisperFeatureExtractor`'s log-mel spectrogram in torch, for a batch of whole windows.

    The same computation as the extractor's own torch path: centred STFT (reflect padding) with a periodic Hann
    window, the last frame dropped, the extractor's Slaney mel filters, log10 clamped at 1e-10 and to 8 below the
    window's maximum, then (x + 4) / 4. Dithering (`dither`, 0 in the released extractors) is left out: features
    do not change from one call to the next.
    """

    def __init__(self, extractor: WhisperFeatureExtractor) -> None:
        super().__init__()
        self.n_fft = extractor.n_fft
        self.hop_length = extractor.hop_length
        self.num_mel_bins = extractor.feature_size
        self.window_samples = extractor.n_samples
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        # [n_fft // 2 + 1, num_mel_bins], the extractor's own matrix
        self.register_buffer("mel_filters", torch.from_numpy(extractor.mel_filters).float(), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """`windows [N, window_samples]` -> `[N, num_mel_bins, window_samples // hop_length]`."""
        stft = torch.stft(windows, self.n_fft, self.hop_length, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_spec = (self.mel_filters.T @ power).clamp(min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0


class WhisperUpstream(Upstream):
    """Every hidden state of a Whisper encoder: index 0 is the convolutions' output plus the positional embedding
    (what enters the first layer), index i the output of layer i; the last is after the encoder's final layer norm
    (Whisper is pre-LN), as transformers' `last_hidden_state` and the decoder see it.

    Frames: 50 per second (hop 160, then the stride-2 convolution). A window of r samples has ceil(r / 160) valid
    mel frames (the extractor's attention-mask rule) and so ceil(r / 320) encoder frames; windows hold a whole number
    of frames, so an utterance of n samples has ceil(n / 320).
    """

    def __init__(self, encoder: nn.Module, extractor: WhisperFeatureExtractor, name: str = "") -> None:
        """`encoder`: a transformers `WhisperEncoder` (`WhisperModel.encoder`, or `compat.load_whisper_encoder`)."""
        super().__init__()
        config = encoder.config
        self.name = name
        self.log_mel = WhisperLogMel(extractor)
        conv_stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        window_frames = config.max_source_positions * conv_stride  # mel frames the encoder insists on
        if extractor.feature_size != config.num_mel_bins or extractor.nb_max_frames != window_frames:
            raise ValueError(
                f"{name or 'model'}: its feature extractor makes {extractor.feature_size} mel bins x "
                f"{extractor.nb_max_frames} frames per window, but the encoder takes {config.num_mel_bins} x "
                f"{window_frames} (num_mel_bins, max_source_positions x {conv_stride})"
            )
        # Representations must not depend on the training step: no LayerDrop.
        encoder.layerdrop = 0.0
        self.encoder = encoder
        self.window_samples = self.log_mel.window_samples
        self.window_frames = config.max_source_positions
        self.num_layers = config.encoder_layers + 1
        self.hidden_size = config.d_model
        self.downsample_rate = extractor.hop_length * encoder.conv2.stride[0]
        self.min_samples = 1  # one sample is one (mostly silent) mel frame, hence one encoder frame
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        windows = torch.div(wav_lengths, self.window_samples, rounding_mode="floor")
        rest = wav_lengths - windows * self.window_samples
        mel_frames = torch.div(rest + self.log_mel.hop_length - 1, self.log_mel.hop_length, rounding_mode="floor")
        return windows * self.window_frames + compat.feat_extract_output_lengths(self.encoder, mel_frames)

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        batch, samples = wavs.shape
        num_windows = max(1, math.ceil(samples / self.window_samples))
        # Silence past each utterance's end, then whole windows; only windows that hold some audio are encoded.
        wavs = wavs * lengths_to_mask(wav_lengths, samples)
        wavs = nn.functional.pad(wavs, (0, num_windows * self.window_samples - samples))
        windows = wavs.view(batch, num_windows, self.window_samples)
        starts = torch.arange(num_windows, device=wavs.device) * self.window_samples
        used = starts[None, :] < wav_lengths[:, None]  # [B, windows]
        out = self.encoder(self.log_mel(windows[used]), output_hidden_states=True)
        frames = int(self.frame_lengths(wav_lengths.new_tensor([samples]))[0])
        states = []
        for state in compat.encoder_output_states(out):  # [used windows, window_frames, D]
            full = state.new_zeros(batch, num_windows, self.window_frames, state.size(-1))
            full[used] = state
            states.append(full.flatten(1, 2)[:, :frames])
        return states

    def layer_groups(self):
        # The positional embedding is fixed (sinusoids, frozen by transformers too) and stays out of both groups.
        encoder = self.encoder
        return [encoder.conv1, encoder.conv2], [*encoder.layers, encoder.layer_norm]

    def transformer_layers(self):
        return list(self.encoder.layers)

    def final_norm(self):
        return self.encoder.layer_norm


def window_extractor(config: PretrainedConfig) -> WhisperFeatureExtractor:
    """The feature extractor a checkpoint without a preprocessor config implies: its mel bins, its window."""
    seconds = config.max_source_positions * 2 * 160 / 16000
    if seconds != int(seconds):
        raise ValueError(f"max_source_positions={config.max_source_positions} is not a whole number of seconds")
    return WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=int(seconds))


@MODEL_TYPES.register("whisper")
def build_whisper_upstream(source: str, config: PretrainedConfig, local_files_only: bool = False) -> WhisperUpstream:
    """The encoder of a Whisper checkpoint (hub id or directory); the decoder's weights are not loaded."""
    try:
        encoder = compat.load_whisper_encoder(source, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise readable_load_error(source, error) from None
    extractor = saved_feature_extractor(WhisperFeatureExtractor, source, local_files_only) or window_extractor(config)
    return WhisperUpstream(encoder.eval(), extractor, name=source)


# A random-initialised encoder for tests and offline demos: Whisper's architecture at toy width.
TINY_WHISPER = dict(
    d_model=64,
    encoder_layers=4,
    encoder_attention_heads=4,
    encoder_ffn_dim=256,
    decoder_layers=1,
    decoder_attention_heads=4,
    decoder_ffn_dim=256,
    vocab_size=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
    max_target_positions=16,
)


def tiny_whisper_config(**overrides) -> WhisperConfig:
    return WhisperConfig(**{**TINY_WHISPER, **overrides})


def build_tiny_whisper(seed: int = 0, **overrides) -> WhisperUpstream:
    """A 4-layer, 64-wide Whisper encoder with the real 30 s window (overrides: `max_source_positions`, ...)."""
    config = tiny_whisper_config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = WhisperModel(config).encoder.eval()  # transformers does not export WhisperEncoder itself
    return WhisperUpstream(encoder, window_extractor(config), name="tiny whisper")
