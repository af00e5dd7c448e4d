"""Utterance-level pooling: `features [B, T, D]` and `lengths [B]` -> one vector per utterance.

Padded frames may hold anything (zeros, garbage, even NaN); they are replaced by zeros and given zero weight before
any arithmetic, so they change neither the result nor the gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from upstream.base import lengths_to_mask
from upstream.names import Registry, as_config

if TYPE_CHECKING:
    from .speaker import EcapaConfig

POOLINGS: Registry[Pooling] = Registry("pooling")
register = POOLINGS.register


def build_pooling(name: str, input_size: int, **kw) -> Pooling:
    """`input_size` is the frame width D; options such as `attention_size` or `eps` go to the pooling."""
    return POOLINGS.build(name, input_size, **kw)


def valid_frames(features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check `lengths [B]` against `features [B, T, D]`; return (features with padded frames zeroed, mask [B, T]).

    An utterance without frames has no mean; it is an error here rather than a NaN in the loss many steps later.
    """
    if features.dim() != 3:
        raise ValueError(f"pooling expects features [B, T, D]; got shape {tuple(features.shape)}")
    batch, frames, _ = features.shape
    lengths = lengths.to(device=features.device, dtype=torch.long)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}; expected ({batch},)")
    empty = (lengths < 1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"utterance(s) at batch index {empty} have no frames; drop them before pooling")
    if int(lengths.max()) > frames:
        raise ValueError(f"a length ({int(lengths.max())}) exceeds the padded number of frames {frames}")
    mask = lengths_to_mask(lengths, frames)
    # masked_fill, not a multiplication: 0 * inf and 0 * NaN are NaN.
    return features.masked_fill(~mask[..., None], 0.0), mask


def weighted_mean_std(features: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """`features [B, T, D]` (padding zeroed), `weights [B, T]` summing to one, zero on padding -> `[B, 2D]`.

    The variance is taken around the mean rather than as E[x^2] - mean^2, which cancels catastrophically for
    features with a large offset; clamping it at `eps` keeps the gradient of the square root finite.
    """
    weights = weights[..., None]
    mean = (weights * features).sum(1)
    variance = (weights * (features - mean[:, None]) ** 2).sum(1)
    return torch.cat([mean, variance.clamp(min=eps).sqrt()], dim=-1)


class Pooling(nn.Module):
    """`forward(features [B, T, D], lengths [B]) -> [B, output_size]`; subclasses implement `pool`."""

    name: str

    def __init__(self, input_size: int) -> None:
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be positive; got {input_size}")
        self.input_size = input_size
        self.output_size = input_size

    def pool(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`features [B, T, D]` with padded frames zeroed, `mask [B, T]` True on valid frames."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if features.size(-1) != self.input_size:
            raise ValueError(f"{self.name} pooling was built for {self.input_size}-d features, got {features.size(-1)}")
        return self.pool(*valid_frames(features, lengths))

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, output_size={self.output_size}"


def uniform_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`mask [B, T]` -> weights 1 / length on valid frames, 0 on padding."""
    mask = mask.to(dtype)
    return mask / mask.sum(1, keepdim=True)


@register("mean")
class MeanPooling(Pooling):
    """The mean of the valid frames, as the SUPERB emotion and speaker-identification heads pool."""

    def pool(self, features, mask):
        return (uniform_weights(mask, features.dtype)[..., None] * features).sum(1)


@register("mean_std")
class MeanStdPooling(Pooling):
    """Statistics pooling (x-vectors): mean and population standard deviation of the valid frames, `[B, 2D]`.

    A one-frame utterance has zero variance; its standard deviation is sqrt(eps), not NaN.
    """

    def __init__(self, input_size: int, eps: float = 1e-5) -> None:
        super().__init__(input_size)
        self.eps = eps
        self.output_size = 2 * input_size

    def pool(self, features, mask):
        return weighted_mean_std(features, uniform_weights(mask, features.dtype), self.eps)


@register("attentive_stats")
class AttentiveStatsPooling(Pooling):
    """Attentive statistics pooling (Okabe et al., "Attentive Statistics Pooling for Deep Speaker Embedding",
    Interspeech 2018): a scalar score per frame, e_t = v^T tanh(W h_t + b) + k, softmax over the valid frames,
    then the attention-weighted mean and standard deviation, `[B, 2D]`."""

    def __init__(self, input_size: int, attention_size: int = 128, eps: float = 1e-5) -> None:
        super().__init__(input_size)
        self.eps = eps
        self.output_size = 2 * input_size
        self.attention = nn.Sequential(nn.Linear(input_size, attention_size), nn.Tanh(), nn.Linear(attention_size, 1))

    def weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`[B, T]` attention weights: they sum to one over each utterance's valid frames and are 0 on padding."""
        scores = self.attention(features).squeeze(-1)
        # -inf is safe: every utterance has at least one valid frame (checked in `valid_frames`).
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)

    def attention_weights(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`features [B, T, D]`, `lengths [B]` -> the `[B, T]` weights `forward` uses, for inspection and plots."""
        return self.weights(*valid_frames(features, lengths))

    def pool(self, features, mask):
        return weighted_mean_std(features, self.weights(features, mask), self.eps)


@register("ecapa")
class EcapaPooling(Pooling):
    """ECAPA-TDNN as the aggregator of an utterance classifier (Morais et al., "Speech Emotion Recognition using
    Self-Supervised Features", ICASSP 2022): `downstream.speaker`'s `ecapa` extractor (SE-Res2Blocks, channel
    attentive statistics, the embedding layer) over the frames, `[B, config.embedding_size]`.

    Mask-aware as the extractor is: padding never changes the result in eval mode. In train mode its BatchNorms'
    batch statistics include the padded frames (see `downstream.speaker`). A training batch of one utterance (a
    length-bucketed epoch's last batch often is) cannot give utterance-level batch statistics: for it the two
    utterance-level BatchNorms use their running statistics and leave them unchanged.
    """

    def __init__(self, input_size: int, config: EcapaConfig | dict | None = None) -> None:
        super().__init__(input_size)
        from .speaker import EcapaConfig, EcapaTdnn  # here: speaker.py imports this module

        config = as_config(EcapaConfig, config, "pooling", "ecapa")
        self.extractor = EcapaTdnn(input_size, config)
        self.output_size = config.embedding_size

    def pool(self, features, mask):
        if not (self.training and features.size(0) == 1):
            return self.extractor.extract(features.transpose(1, 2), mask[:, None, :])
        norms = [self.extractor.pooling_norm, self.extractor.embedding_norm]
        for norm in norms:
            norm.eval()
        try:
            return self.extractor.extract(features.transpose(1, 2), mask[:, None, :])
        finally:
            for norm in norms:
                norm.train()
