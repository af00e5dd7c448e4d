"""Your own model as an upstream: `LayerwiseAdapter` turns a module that returns per-layer states into an `Upstream`.

A factory named as `package.module:factory` (see `upstream.registry.build_upstream`) returns either an `Upstream`
subclass of its own or a plain `nn.Module` wrapped here:

    def build(**options) -> Upstream:
        return LayerwiseAdapter(MyEncoder(), downsample_rate=320, min_samples=400, hidden_size=256, num_layers=4)

The wrapped module's `forward(wavs [B, S], wav_lengths [B])` returns the hidden states as a list or tuple of
`num_layers` tensors `[B, T, D]` (index 0 what enters the first layer, index i what leaves layer i), or a pair
`(states, lengths [B])` whose lengths must agree with the adapter's `frame_lengths`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .base import Upstream, parse_trainable


class LayerwiseAdapter(Upstream):
    """An `Upstream` around a module whose forward returns every layer's `[B, T, D]` states.

    `downsample_rate`: input samples per frame; `min_samples`: the shortest input that gives one frame (the
    receptive field); `frame_lengths`: valid frames for `wav_lengths [B]` samples, by default
    `(wav_lengths - min_samples) // downsample_rate + 1`, the rule of unpadded convolutions (wav2vec 2.0's CNN:
    400 and 320). `layers`: the module's transformer layers in depth order, for `trainable='top:K'`;
    `cnn`: submodules frozen unless `train_cnn=True`; `final_norm`: a norm after the last layer, trained with the
    top K. `frozen` and `all` need neither.
    """

    def __init__(
        self,
        module: nn.Module,
        sample_rate: int = 16000,
        downsample_rate: int = 320,
        min_samples: int = 400,
        hidden_size: int = 768,
        num_layers: int = 13,
        frame_lengths: Callable[[torch.Tensor], torch.Tensor] | None = None,
        layers: Sequence[nn.Module] = (),
        cnn: Sequence[nn.Module] = (),
        final_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.sample_rate = sample_rate
        self.downsample_rate = downsample_rate
        self.min_samples = min_samples
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self._frame_lengths = frame_lengths
        # Plain tuples: these are submodules of `module` already, registering them again would repeat their weights
        # in the state dict.
        self._layers, self._cnn, self._final_norm = tuple(layers), tuple(cnn), final_norm
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        if self._frame_lengths is not None:
            return self._frame_lengths(wav_lengths).long()
        return torch.div(wav_lengths - self.min_samples, self.downsample_rate, rounding_mode="floor") + 1

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        output = self.module(wavs, wav_lengths)
        name = type(self.module).__name__
        lengths = None
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], (list, tuple)):
            output, lengths = output
        if not isinstance(output, (list, tuple)) or not all(isinstance(s, torch.Tensor) for s in output):
            raise ValueError(
                f"{name}.forward returned {type(output).__name__}; LayerwiseAdapter expects a list of [B, T, D] "
                "tensors, one per hidden state, or (that list, lengths [B])"
            )
        if len(output) != self.num_layers:
            raise ValueError(
                f"{name} returned {len(output)} hidden states; the adapter was told num_layers={self.num_layers}"
            )
        for i, state in enumerate(output):
            if state.dim() != 3 or state.size(0) != wavs.size(0) or state.size(-1) != self.hidden_size:
                raise ValueError(
                    f"{name} hidden state {i} has shape {tuple(state.shape)}; expected [B={wavs.size(0)}, T, "
                    f"D={self.hidden_size}]"
                )
        if lengths is not None:
            expected = self.frame_lengths(wav_lengths)
            if not torch.equal(lengths.to(expected), expected):
                raise ValueError(
                    f"{name} returned frame lengths {lengths.tolist()} but the adapter's frame_lengths gives "
                    f"{expected.tolist()}; pass frame_lengths= (the rule the data module plans crops with)"
                )
        return list(output)

    def layer_groups(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return list(self._cnn), [self.module]

    def transformer_layers(self) -> list[nn.Module]:
        return list(self._layers)

    def final_norm(self) -> nn.Module | None:
        return self._final_norm

    def set_trainable(self, trainable: str = "frozen", train_cnn: bool = False) -> LayerwiseAdapter:
        top = parse_trainable(trainable)
        if top and not self._layers:
            raise ValueError(
                f"trainable={trainable!r} needs the layers of {type(self.module).__name__}: pass "
                "layers=[...] (in depth order) to LayerwiseAdapter, or use 'all'"
            )
        super().set_trainable(trainable, train_cnn=train_cnn)
        # 'all' unfroze the whole module, the CNN inside it too; refreeze it unless asked.
        if not train_cnn:
            for module in self._cnn:
                module.requires_grad_(False)
            self.train(self.training)
        return self
