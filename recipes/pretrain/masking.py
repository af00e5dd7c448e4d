"""Span masking of the CNN features, as wav2vec 2.0 and HuBERT do it: `mask_prob` of the valid frames (in
expectation) are chosen as span starts divided by `mask_length`, and each start masks `mask_length` frames;
spans may overlap, so slightly fewer than `mask_prob` of the frames end up masked."""

from __future__ import annotations

import torch


def span_mask(
    lengths: torch.Tensor, num_frames: int, mask_prob: float, mask_length: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`[B, T]` bool: True on masked frames, never on padding. Each utterance of `L` valid frames gets
    `round(mask_prob * L / mask_length + u)` spans (u uniform in [0, 1): probabilistic rounding, so the expected
    number of starts is exactly `mask_prob * L / mask_length`), started at distinct positions drawn uniformly from
    `0 .. L - mask_length`; at least one span when `L >= mask_length` and `mask_prob > 0`."""
    if not 0 <= mask_prob <= 1 or mask_length < 1:
        raise ValueError(f"mask_prob must be in [0, 1] and mask_length >= 1; got {mask_prob}, {mask_length}")
    mask = torch.zeros(len(lengths), num_frames, dtype=torch.bool)
    for row, length in enumerate(lengths.tolist()):
        starts_available = length - mask_length + 1
        if starts_available < 1 or mask_prob == 0:
            continue
        wanted = mask_prob * length / mask_length + float(torch.rand((), generator=generator))
        count = min(max(int(wanted), 1), starts_available)
        starts = torch.randperm(starts_available, generator=generator)[:count]
        spans = (starts[:, None] + torch.arange(mask_length)).flatten()
        mask[row, spans] = True
    return mask
