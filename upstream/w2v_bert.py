"""w2v-BERT 2.0 (transformers' `Wav2Vec2BertModel`): every hidden layer, from waveforms.

The model reads 80-bin Kaldi fbank at 100 frames/s, normalised per utterance and mel bin, with pairs of consecutive
frames stacked into 160-dim features (50 per second), and takes an attention mask, so padding never changes a valid
frame.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel
from transformers.audio_utils import mel_filter_bank, window_function

from .base import Upstream, conv_output_lengths, lengths_to_mask
from .hf import MODEL_TYPES, readable_load_error, saved_feature_extractor

FRAME_LENGTH, HOP_LENGTH, FFT_LENGTH = 400, 160, 512  # 25 ms / 10 ms at 16 kHz, as the extractor fixes them
MEL_FLOOR = 1.192092955078125e-07  # Kaldi's epsilon


class StackedFbank(nn.Module):
    """`SeamlessM4TFeatureExtractor` in torch, batched: `wavs [B, S]`, `wav_lengths [B]` -> `features [B, T, 160]`,
    `lengths [B]`.

    Per frame (snip edges, 400 samples every 160, on 16-bit values): DC removed, pre-emphasis 0.97, Povey window,
    512-point power spectrum, the extractor's Kaldi mel filters (20 Hz to Nyquist), log floored at Kaldi's epsilon.
    Each utterance is normalised per mel bin over its own frames (unbiased variance), padded frames take
    `padding_value`, and frames 2j, 2j+1 are stacked into frame j, which is valid when both are: n fbank frames give
    n // 2 stacked ones (an odd last frame counts in the normalisation statistics only, as in the extractor).
    """

    def __init__(self, num_mel_bins: int = 80, stride: int = 2, padding_value: float = 0.0, sample_rate: int = 16000):
        super().__init__()
        self.stride = stride
        self.padding_value = padding_value
        filters = mel_filter_bank(
            num_frequency_bins=FFT_LENGTH // 2 + 1,
            num_mel_filters=num_mel_bins,
            min_frequency=20,
            max_frequency=sample_rate // 2,
            sampling_rate=sample_rate,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )
        self.register_buffer("mel_filters", torch.from_numpy(filters).float(), persistent=False)  # [257, mels]
        window = window_function(FRAME_LENGTH, "povey", periodic=False)
        self.register_buffer("window", torch.from_numpy(window).float(), persistent=False)

    def fbank_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(wav_lengths, [(FRAME_LENGTH, HOP_LENGTH)]).clamp(min=0)

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(self.fbank_lengths(wav_lengths), self.stride, rounding_mode="floor")

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In float64, as the extractor (numpy) computes it: float32 drifts by about 2e-4 after the normalisation.
        frames = (wavs.double() * 32768).unfold(1, FRAME_LENGTH, HOP_LENGTH)  # [B, F, 400]
        frames = frames - frames.mean(-1, keepdim=True)
        frames = torch.cat([frames[..., :1] * (1 - 0.97), frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1)
        power = torch.fft.rfft(frames * self.window.double(), n=FFT_LENGTH).abs() ** 2
        fbank = (power @ self.mel_filters.double()).clamp(min=MEL_FLOOR).log()  # [B, F, mels]

        counts = self.fbank_lengths(wav_lengths)
        valid = lengths_to_mask(counts, fbank.size(1))[..., None]
        n = counts[:, None, None].to(fbank.dtype)
        mean = (fbank * valid).sum(1, keepdim=True) / n
        var = (((fbank - mean) * valid) ** 2).sum(1, keepdim=True) / (n - 1)
        fbank = torch.where(valid, (fbank - mean) / torch.sqrt(var + 1e-7), self.padding_value)

        # The extractor pads to whole stacks; a last incomplete stack is never valid, so it is left out instead.
        frames = fbank.size(1) // self.stride
        stacked = fbank[:, : frames * self.stride].reshape(fbank.size(0), frames, -1).to(wavs.dtype)
        return stacked, torch.div(counts, self.stride, rounding_mode="floor")


class W2vBertUpstream(Upstream):
    """Every hidden state of a `Wav2Vec2BertModel`: index 0 is the feature projection's output (what enters the
    first Conformer layer), index i the output of layer i. Every Conformer layer ends in its own layer norm and the
    encoder adds none, so the last state is the last layer's output (and there is no final norm to train).
    """

    def __init__(self, model: Wav2Vec2BertModel, fbank: StackedFbank, name: str = "") -> None:
        super().__init__()
        config = model.config
        if config.add_adapter:
            raise ValueError(
                f"{name or 'model'} has a w2v-BERT adapter, which shortens only its output; load the encoder without "
                "it (add_adapter=False)"
            )
        if config.feature_projection_input_dim != fbank.mel_filters.size(1) * fbank.stride:
            raise ValueError(
                f"{name or 'model'} takes {config.feature_projection_input_dim}-dim features but its feature extractor "
                f"makes {fbank.mel_filters.size(1)} mel bins x stride {fbank.stride}"
            )
        # Representations must not depend on the training step: no LayerDrop, no SpecAugment masking.
        config.layerdrop = 0.0
        config.apply_spec_augment = False
        self.model = model
        self.fbank = fbank
        self.name = name
        self.num_layers = config.num_hidden_layers + 1
        self.hidden_size = config.hidden_size
        self.downsample_rate = HOP_LENGTH * fbank.stride
        self.min_samples = FRAME_LENGTH + HOP_LENGTH * (fbank.stride - 1)
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return self.fbank.frame_lengths(wav_lengths)

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        features, lengths = self.fbank(wavs, wav_lengths)
        mask = lengths_to_mask(lengths, features.size(1)).long()
        out = self.model(features, attention_mask=mask, output_hidden_states=True)
        # transformers keeps the last layer's output as the last hidden state here (no tie to last_hidden_state,
        # which an intermediate FFN would change).
        return list(out.hidden_states)

    def layer_groups(self):
        # No CNN: the fbank has no weights.
        return [], [self.model.feature_projection, self.model.encoder]

    def transformer_layers(self):
        return list(self.model.encoder.layers)


def fbank_from_extractor(extractor: SeamlessM4TFeatureExtractor) -> StackedFbank:
    return StackedFbank(extractor.num_mel_bins, extractor.stride, extractor.padding_value, extractor.sampling_rate)


@MODEL_TYPES.register("wav2vec2-bert")
def build_w2v_bert_upstream(source: str, config: PretrainedConfig, local_files_only: bool = False) -> W2vBertUpstream:
    """A w2v-BERT checkpoint (hub id or directory) and its feature extractor's settings (the defaults without one)."""
    try:
        model = Wav2Vec2BertModel.from_pretrained(
            source, config=config, dtype=torch.float32, local_files_only=local_files_only
        )
    except (OSError, ValueError) as error:
        raise readable_load_error(source, error) from None
    extractor = (
        saved_feature_extractor(SeamlessM4TFeatureExtractor, source, local_files_only) or SeamlessM4TFeatureExtractor()
    )
    return W2vBertUpstream(model.eval(), fbank_from_extractor(extractor), name=source)


# A random-initialised model for tests and offline demos: w2v-BERT's Conformer at toy width.
TINY_W2V_BERT = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    output_hidden_size=64,
    conv_depthwise_kernel_size=5,
    left_max_position_embeddings=16,
    right_max_position_embeddings=4,
)


def tiny_w2v_bert_model(seed: int = 0, **overrides) -> Wav2Vec2BertModel:
    config = Wav2Vec2BertConfig(**{**TINY_W2V_BERT, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Wav2Vec2BertModel(config).eval()


def build_tiny_w2v_bert(seed: int = 0, **overrides) -> W2vBertUpstream:
    return W2vBertUpstream(tiny_w2v_bert_model(seed, **overrides), StackedFbank(), name="tiny w2v-bert")
