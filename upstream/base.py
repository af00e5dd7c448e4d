"""The contract every front-end keeps: waveforms in, every hidden layer and its valid frame counts out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TRAINABLE_HELP = "'frozen', 'all' or 'top:K'"


class UpstreamLoadError(OSError):
    """A model could not be found or read; the message says where strata looked and what to do."""


@dataclass
class UpstreamOutput:
    """`hidden_states`: L+1 tensors `[B, T, D]` (index 0 enters the first layer, index i leaves layer i, the
    last is the encoder output, after the final norm of pre-LN encoders); `lengths [B]`: valid frames."""

    hidden_states: list[torch.Tensor]
    lengths: torch.Tensor


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """`[B]` lengths -> `[B, max_len]` bool mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def parse_trainable(trainable: str) -> int | None:
    """'frozen' -> 0 layers, 'all' -> None (every layer), 'top:K' -> K."""
    if trainable == "frozen":
        return 0
    if trainable == "all":
        return None
    if trainable.startswith("top:"):
        try:
            k = int(trainable[4:])
        except ValueError:
            k = -1
        if k >= 1:
            return k
    raise ValueError(f"trainable={trainable!r} is not one of {TRAINABLE_HELP} (K a positive integer)")


class Upstream(nn.Module):
    """Base class of every front-end.

    Subclasses set `sample_rate`, `num_layers` (L+1), `hidden_size`, `downsample_rate` and `min_samples` (the
    shortest input that yields one frame), and implement `frame_lengths` and `hidden_states`. The base class
    checks the input, runs frozen models without autograd and keeps them in eval mode.
    """

    sample_rate: int = 16000
    num_layers: int
    hidden_size: int
    downsample_rate: int
    min_samples: int

    def __init__(self) -> None:
        super().__init__()
        self.trainable = "frozen"

    # -- to implement ---------------------------------------------------------------------------------------
    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames for inputs of `wav_lengths` samples."""
        raise NotImplementedError

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        """`wavs [B, S]` -> L+1 tensors `[B, T, D]`."""
        raise NotImplementedError

    def layer_groups(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(CNN / feature-extraction modules, transformer-side modules in depth order: everything that is not the
        CNN, with the transformer layers last so that `top:K` can take the last K)."""
        return [], []

    # -- shared behaviour ----------------------------------------------------------------------------------
    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor | None = None) -> UpstreamOutput:
        """`wavs [B, S]` float, `wav_lengths [B]` valid samples (all of S when omitted)."""
        if wavs.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects mono waveforms [B, S]; got shape {tuple(wavs.shape)} "
                "(mix multi-channel audio down before the upstream)"
            )
        if wav_lengths is None:
            wav_lengths = torch.full((wavs.size(0),), wavs.size(1), dtype=torch.long, device=wavs.device)
        wav_lengths = wav_lengths.to(device=wavs.device, dtype=torch.long)
        if wav_lengths.shape != (wavs.size(0),):
            raise ValueError(f"wav_lengths has shape {tuple(wav_lengths.shape)}; expected ({wavs.size(0)},)")
        if int(wav_lengths.max()) > wavs.size(1):
            raise ValueError(f"a wav_length ({int(wav_lengths.max())}) exceeds the padded length {wavs.size(1)}")
        short = (wav_lengths < self.min_samples).nonzero().flatten().tolist()
        if short:
            raise ValueError(
                f"utterance(s) at batch index {short} have fewer than {self.min_samples} samples "
                f"({self.min_samples / self.sample_rate * 1000:.0f} ms at {self.sample_rate} Hz), the shortest "
                f"input {type(self).__name__} turns into one frame; pad or drop them"
            )
        wavs = wavs.float()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable != "frozen"):
            states = self.hidden_states(wavs, wav_lengths)
        lengths = self.frame_lengths(wav_lengths)
        # Guard the contract here so a backend can never hand the next stage a wrong frame count.
        assert len(states) == self.num_layers, (len(states), self.num_layers)
        assert int(lengths.max()) <= states[0].size(1), (int(lengths.max()), states[0].size(1))
        return UpstreamOutput(hidden_states=list(states), lengths=lengths)

    def set_trainable(self, trainable: str = "frozen", train_cnn: bool = False) -> Upstream:
        """Freeze everything, then unfreeze what `trainable` asks for; the CNN only with `train_cnn`."""
        top = parse_trainable(trainable)
        if train_cnn and top == 0:
            raise ValueError("train_cnn=True needs a trainable upstream (trainable='all' or 'top:K'), not 'frozen'")
        self.trainable = trainable
        self.requires_grad_(False)
        cnn, rest = self.layer_groups()
        if top is None:
            for module in rest:
                module.requires_grad_(True)
        elif top > 0:
            layers = self.transformer_layers()
            if top > len(layers):
                raise ValueError(f"trainable={trainable!r} but {type(self).__name__} has {len(layers)} layers")
            for layer in layers[len(layers) - top :]:
                layer.requires_grad_(True)
            final_norm = self.final_norm()
            if final_norm is not None:
                final_norm.requires_grad_(True)
        if train_cnn:
            for module in cnn:
                module.requires_grad_(True)
        self.train(self.training)
        return self

    def transformer_layers(self) -> list[nn.Module]:
        """The transformer layers in depth order (for `top:K`)."""
        return []

    def final_norm(self) -> nn.Module | None:
        """A norm applied after the last layer (pre-LN models), trained together with the top layers."""
        return None

    def train(self, mode: bool = True) -> Upstream:
        # A frozen upstream stays in eval mode whatever the trainer asks, so dropout never touches features; so do
        # the frozen CNN and frozen layers below the top K of a partly trained one.
        super().train(mode and self.trainable != "frozen")
        self.training = mode
        if mode and self.trainable != "frozen":
            for module in [*self.layer_groups()[0], *self.transformer_layers()]:
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.downsample_rate

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, hidden_size={self.hidden_size}, "
            f"downsample_rate={self.downsample_rate}, trainable={self.trainable!r}"
        )


def conv_output_lengths(lengths: torch.Tensor, kernels_strides: list[tuple[int, int]]) -> torch.Tensor:
    """Frames after a stack of unpadded 1-D convolutions: floor((n - k) / s) + 1 per layer."""
    for kernel, stride in kernels_strides:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def receptive_field(kernels_strides: list[tuple[int, int]]) -> int:
    """Samples one output frame sees through a stack of convolutions (the shortest usable input)."""
    field, jump = 1, 1
    for kernel, stride in kernels_strides:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def normalize_waveforms(wavs: torch.Tensor, wav_lengths: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding stays zero.

    This is what a checkpoint's feature extractor does when `do_normalize` is set (wav2vec 2.0 large, HuBERT large,
    ...); statistics of one utterance never depend on the padding around it.
    """
    mask = lengths_to_mask(wav_lengths, wavs.size(1)).to(wavs.dtype)
    count = wav_lengths.to(wavs.dtype)[:, None]
    mean = (wavs * mask).sum(1, keepdim=True) / count
    var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + eps) * mask


def prepare_waveforms(wavs: torch.Tensor, wav_lengths: torch.Tensor, normalize: bool) -> torch.Tensor:
    """What an SSL encoder takes: normalised per utterance when its checkpoint expects it, padding zero either way."""
    if normalize:
        return normalize_waveforms(wavs, wav_lengths)
    return wavs * lengths_to_mask(wav_lengths, wavs.size(1))


def split_feature_extractor(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the CNN `feature_extractor`, every other child) of a wav2vec 2.0-style model, for `layer_groups`."""
    rest = [m for name, m in model.named_children() if name != "feature_extractor"]
    return [model.feature_extractor], rest
