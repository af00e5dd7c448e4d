"""Utterance-level classification head: emotion recognition, speaker identification, any label per utterance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .pooling import build_pooling


class UtteranceClassifier(nn.Module):
    """The SUPERB emotion-recognition and speaker-identification head, generalised:
        `features [B, T, D]`, `lengths [B]` -> `logits [B, C]`.

        A frame-wise linear projection to `projection_size` (SUPERB's 256; 0 keeps the D input features), mask-aware
        pooling from `POOLINGS` ("mean" as in SUPERB, "mean_std", "attentive_stats", "ecapa"; `pooling_options` are
    its options), then an MLP: each of
        `hidden_sizes` is Linear -> ReLU -> Dropout, and a last Linear gives the logits. With no hidden sizes this is
        SUPERB's linear classifier on the pooled vector.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        projection_size: int = 256,
        pooling: str = "mean",
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        pooling_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if input_size < 1 or num_classes < 1:
            raise ValueError(f"input_size and num_classes must be positive; got {input_size}, {num_classes}")
        if projection_size < 0:
            raise ValueError(f"projection_size must be 0 (no projection) or positive; got {projection_size}")
        if any(size < 1 for size in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive; got {list(hidden_sizes)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.projection = nn.Linear(input_size, projection_size) if projection_size else nn.Identity()
        self.pooling = build_pooling(pooling, projection_size or input_size, **(pooling_options or {}))
        layers: list[nn.Module] = []
        size = self.pooling.output_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(size, hidden), nn.ReLU(), nn.Dropout(dropout)]
            size = hidden
        layers.append(nn.Linear(size, num_classes))
        self.classifier = nn.Sequential(*layers)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`features [B, T, D]`, `lengths [B]` -> the pooled vector the classifier reads, `[B, pooling.output_size]`."""
        # The projection is frame-wise, so padded frames stay padded frames and the pooling masks them.
        return self.pooling(self.projection(features), lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`features [B, T, D]`, `lengths [B]` valid frames -> `logits [B, num_classes]`."""
        return self.classifier(self.embed(features, lengths))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of `logits [B, C]` against class indices `targets [B]`."""
        return nn.functional.cross_entropy(logits, targets)
