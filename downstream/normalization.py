"""Feature standardisation with statistics of the training data, accumulated on the fly and mask-aware."""

from __future__ import annotations

import torch
from torch import nn

from upstream.base import lengths_to_mask


class FeatureNorm(nn.Module):
    """Per-dimension `(x - mean) / std` with the mean and variance of every valid training frame seen so far.

    The global mean-variance normalisation Kaldi and ESPnet apply to filterbanks before a network: raw log
    energies sit around +5..+15 with strongly correlated dimensions, on which a fresh head trains poorly. Unlike
    per-utterance CMVN it keeps the utterance-level differences a pooled head classifies on, and unlike batch
    norm it never normalises with a batch's own statistics: length-bucketed batches group similar utterances
    (slow, sad speech is long), so batch statistics would carry the label and differ from eval. In training each
    batch updates exact running totals (Chan et al.'s pairwise update) before being normalised with them; in eval
    they are fixed (before any training it passes features through). Padded frames neither count nor change
    (they stay zero).
    """

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("sum_squares", torch.zeros(size, dtype=torch.float64))  # of deviations from the mean

    @torch.no_grad()
    def update(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        frames = features[mask.squeeze(-1)].double()
        n = frames.size(0)
        if n == 0:
            return
        batch_mean = frames.mean(0)
        batch_sum_squares = frames.sub_(batch_mean).pow_(2).sum(0)  # in place: `frames` is this batch's own copy
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.sum_squares += batch_sum_squares + delta.pow(2) * self.count * n / total
        self.count.fill_(total)

    @property
    def var(self) -> torch.Tensor:
        return self.sum_squares / self.count.clamp_min(1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`features [B, T, D]`, `lengths [B]` -> the same shape, standardised."""
        mask = lengths_to_mask(lengths, features.size(1)).unsqueeze(-1)
        if self.training:
            self.update(features, mask)
        if self.count == 0:
            return features  # nothing seen yet (e.g. Lightning's sanity validation before training)
        mean, std = self.mean.to(features.dtype), (self.var + self.eps).sqrt().to(features.dtype)
        # One new tensor, filled in place (sub's and div's gradients need neither their inputs nor their outputs).
        return features.sub(mean).div_(std).masked_fill_(~mask, 0.0)
