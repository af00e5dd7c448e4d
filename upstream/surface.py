"""Surface features as one-layer upstreams: the baselines every SSL result is compared with."""

from __future__ import annotations

import torch
import torchaudio
from torchaudio.compliance import kaldi

from .base import Upstream, conv_output_lengths, lengths_to_mask

WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms at 16 kHz
INT16_SCALE = 32768.0  # Kaldi computes on 16-bit sample values; the log then matches its tools


class SurfaceUpstream(Upstream):
    """Frame-level features over 25 ms windows every 10 ms, Kaldi's snip-edges framing (no centre padding), so
    `lengths` = 1 + (samples - 400) // 160 and padding never changes a valid frame.

    `cmvn=True` normalises each utterance to zero mean and unit variance per dimension over its own frames (as
    S3PRL's baseline features can). Off by default: it removes exactly the utterance-level statistics a pooled
    head classifies on (a mean-pooled CMVN utterance is all zeros); `SSLTaskModule(feature_norm=True)`
    standardises with training-set statistics instead.
    """

    num_layers = 1
    downsample_rate = HOP
    min_samples = WINDOW

    def __init__(self, sample_rate: int = 16000, cmvn: bool = False) -> None:
        super().__init__()
        if sample_rate != 16000:
            raise ValueError("surface features are set up for 16 kHz audio")
        self.sample_rate = sample_rate
        self.cmvn = cmvn
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(wav_lengths, [(WINDOW, HOP)])

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """One unpadded waveform `[S]` -> `[T, D]`."""
        raise NotImplementedError

    def batch_features(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """`[B, S]` -> `[B, T, D]`; Kaldi's routines take one utterance at a time, each sees only its own samples."""
        frames = self.frame_lengths(wav_lengths)
        out = wavs.new_zeros(wavs.size(0), int(frames.max()), self.hidden_size)
        for i, (wav, n) in enumerate(zip(wavs, wav_lengths.tolist(), strict=True)):
            feats = self.features(wav[:n])
            out[i, : feats.size(0)] = feats
        return out

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        feats = self.batch_features(wavs, wav_lengths)
        if self.cmvn:
            feats = utterance_cmvn(feats, self.frame_lengths(wav_lengths))
        return [feats]


def utterance_cmvn(feats: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance, per-dimension mean and variance normalisation over valid frames; padded frames stay 0."""
    mask = lengths_to_mask(lengths, feats.size(1)).unsqueeze(-1)
    count = lengths.clamp_min(1).view(-1, 1, 1).to(feats.dtype)
    mean = (feats * mask).sum(1, keepdim=True) / count
    var = ((feats - mean).pow(2) * mask).sum(1, keepdim=True) / count
    return torch.where(mask, (feats - mean) / (var + eps).sqrt(), torch.zeros_like(feats))


class Fbank(SurfaceUpstream):
    """80 log mel filterbanks, Kaldi's definition (povey window, pre-emphasis 0.97, DC removal), no dither."""

    def __init__(self, num_mel_bins: int = 80, sample_rate: int = 16000, cmvn: bool = False) -> None:
        super().__init__(sample_rate, cmvn)
        self.hidden_size = num_mel_bins

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        return kaldi.fbank(
            wav[None] * INT16_SCALE,
            num_mel_bins=self.hidden_size,
            sample_frequency=self.sample_rate,
            dither=0.0,
        )


class Mfcc(SurfaceUpstream):
    """13 Kaldi MFCCs with deltas and delta-deltas (39 dimensions), the classic ASR front-end."""

    def __init__(self, num_ceps: int = 13, sample_rate: int = 16000, cmvn: bool = False) -> None:
        super().__init__(sample_rate, cmvn)
        self.num_ceps = num_ceps
        self.hidden_size = 3 * num_ceps

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        ceps = kaldi.mfcc(
            wav[None] * INT16_SCALE, num_ceps=self.num_ceps, sample_frequency=self.sample_rate, dither=0.0
        )
        deltas = torchaudio.functional.compute_deltas(ceps.T)
        return torch.cat([ceps.T, deltas, torchaudio.functional.compute_deltas(deltas)]).T


class LogMel(SurfaceUpstream):
    """80 log mel power bins on a Hann window (the librosa/Whisper-style front-end, not Kaldi's)."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, cmvn: bool = False) -> None:
        super().__init__(sample_rate, cmvn)
        self.hidden_size = n_mels
        self.mel = mel_spectrogram(n_mels, sample_rate)

    def batch_features(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        return log_mel(self.mel, wavs)


def mel_spectrogram(n_mels: int = 80, sample_rate: int = 16000) -> torchaudio.transforms.MelSpectrogram:
    """Mel power spectra of 25 ms Hann windows every 10 ms, uncentred (snip-edges framing, as `SurfaceUpstream`)."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=WINDOW, win_length=WINDOW, hop_length=HOP, n_mels=n_mels, center=False
    )


def log_mel(mel: torchaudio.transforms.MelSpectrogram, wavs: torch.Tensor) -> torch.Tensor:
    """`wavs [B, S]` -> `[B, T, n_mels]`. Frames never straddle utterances (no centring), so a padded batch goes
    through in one call and padding changes no valid frame."""
    return torch.log(mel(wavs).transpose(1, 2) + 1e-6)
