"""TERA's input alterations and its reconstruction loss (Liu, Li and Lee, "TERA: Self-Supervised Learning of
Transformer Encoder Representation for Speech", IEEE/ACM TASLP 2021): the model sees an altered copy of its input
features and reconstructs the original, with L1 on the altered positions only.

- time: blocks of `time_block` (7) consecutive frames covering `time_prob` (15 %) of the valid frames; of the
  blocks, `zero_prob` (80 %) are zeroed, `random_prob` (10 %) replaced by a block of other frames of the same
  utterance, the rest (10 %) kept as they are (still reconstructed, so the model cannot tell altered from kept);
- frequency: one contiguous band of bins, its width uniform in [0, `frequency_fraction` (20 %) of the bins], zeroed
  on every valid frame;
- magnitude: with probability `noise_prob` (15 %) an utterance gets Gaussian noise of std `noise_std` (0.2) on every
  valid value. The noise adds no loss positions: it alters what the other alterations' targets are read from.
Mockingjay is the time alteration alone (`frequency_fraction=0`, `noise_prob=0`). Padded frames are never altered
and never in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from upstream.base import lengths_to_mask

ZEROED, REPLACED, KEPT = 0, 1, 2  # what happened to a time block


@dataclass(frozen=True)
class AlterationConfig:
    time_prob: float = 0.15
    time_block: int = 7
    zero_prob: float = 0.8
    random_prob: float = 0.1
    frequency_fraction: float = 0.2
    noise_prob: float = 0.15
    noise_std: float = 0.2

    def __post_init__(self) -> None:
        for name in ("time_prob", "zero_prob", "random_prob", "frequency_fraction", "noise_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.zero_prob + self.random_prob > 1:
            raise ValueError(f"zero_prob + random_prob must be at most 1, got {self.zero_prob + self.random_prob}")
        if self.time_block < 1 or self.noise_std < 0:
            raise ValueError(f"time_block must be >= 1 and noise_std >= 0, got {self.time_block}, {self.noise_std}")

    @classmethod
    def mockingjay(cls) -> AlterationConfig:
        """Time alteration only, as Mockingjay (the TERA paper's baseline) trains."""
        return cls(frequency_fraction=0.0, noise_prob=0.0)


@dataclass
class Alteration:
    """`altered [B, T, F]`: the model's input; `loss_mask [B, T, F]`: the positions the loss reads;
    `blocks`: per utterance, (start, kind) of each time block (kind ZEROED, REPLACED or KEPT); `bands`: per
    utterance, the zeroed bins as (first, width); `noisy [B]`: which utterances got noise."""

    altered: torch.Tensor
    loss_mask: torch.Tensor
    blocks: list[list[tuple[int, int]]]
    bands: list[tuple[int, int]]
    noisy: torch.Tensor


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def time_blocks(
    length: int, config: AlterationConfig, generator: torch.Generator | None = None
) -> list[tuple[int, int]]:
    """(start, kind) of the time blocks of an utterance of `length` frames: `round(time_prob * length / time_block
    + u)` distinct starts (u uniform: probabilistic rounding keeps the expected coverage), at least one when the
    utterance holds a block and `time_prob > 0`; blocks may overlap, so slightly less than `time_prob` is covered."""
    available = length - config.time_block + 1
    if available < 1 or config.time_prob == 0:
        return []
    count = min(max(int(config.time_prob * length / config.time_block + _uniform(generator)), 1), available)
    starts = torch.randperm(available, generator=generator)[:count].tolist()
    blocks = []
    for start in sorted(starts):
        dice = _uniform(generator)
        kind = ZEROED if dice < config.zero_prob else REPLACED if dice < config.zero_prob + config.random_prob else KEPT
        blocks.append((start, kind))
    return blocks


def alter(
    features: torch.Tensor,
    lengths: torch.Tensor,
    config: AlterationConfig = AlterationConfig(),  # noqa: B008 -- frozen
    generator: torch.Generator | None = None,
) -> Alteration:
    """TERA's alterations of `features [B, T, F]` (valid frames `lengths [B]`); the original is left untouched."""
    batch, frames, bins = features.shape
    altered = features.clone()
    loss_mask = torch.zeros_like(features, dtype=torch.bool)
    valid = lengths_to_mask(lengths.to(features.device), frames)
    all_blocks, bands = [], []
    noisy = torch.zeros(batch, dtype=torch.bool)
    width_limit = int(config.frequency_fraction * bins)
    for row, length in enumerate(lengths.tolist()):
        blocks = time_blocks(length, config, generator)
        for start, kind in blocks:
            stop = start + config.time_block
            loss_mask[row, start:stop] = True
            if kind == ZEROED:
                altered[row, start:stop] = 0
            elif kind == REPLACED:
                source = int(torch.randint(length - config.time_block + 1, (), generator=generator))
                altered[row, start:stop] = features[row, source : source + config.time_block]
        all_blocks.append(blocks)
        width = int(torch.randint(width_limit + 1, (), generator=generator)) if width_limit else 0
        first = int(torch.randint(bins - width + 1, (), generator=generator)) if width else 0
        if width:
            altered[row, :length, first : first + width] = 0
            loss_mask[row, :length, first : first + width] = True
        bands.append((first, width))
        if config.noise_prob and _uniform(generator) < config.noise_prob:
            noise = torch.randn(length, bins, generator=generator).to(features) * config.noise_std
            altered[row, :length] += noise
            noisy[row] = True
    loss_mask &= valid[..., None]
    return Alteration(altered, loss_mask, all_blocks, bands, noisy)


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the altered positions only (0 when nothing was altered, never NaN)."""
    if prediction.shape != target.shape or loss_mask.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and mask "
            f"{tuple(loss_mask.shape)} must have one shape"
        )
    errors = (prediction - target).abs().masked_fill(~loss_mask, 0.0)
    return errors.sum() / loss_mask.sum().clamp(min=1)
