"""An embedding head: an extractor that maps frames to one vector per clip, and a classifier that only trains it.

Speaker verification scores the embeddings of an ECAPA-TDNN or x-vector trained to classify speakers; anomalous
sound detection scores those of a pooled embedding trained to classify machines and attributes. Both are this head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EmbeddingOutput:
    """`embeddings [B, E]` to score (trials, anomaly prototypes), `logits [B, C]` (or cosines) for the training
    loss."""

    embeddings: torch.Tensor
    logits: torch.Tensor


class EmbeddingHead(nn.Module):
    """An extractor (`embedding_size`, `(features, lengths) -> [B, E]`) and the (classifier, criterion) pair of
    `downstream.losses.build_loss`: they serve training only (`loss`); evaluation scores the embeddings."""

    def __init__(self, extractor: nn.Module, classifier: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.classifier = classifier
        self.criterion = criterion
        self.embedding_size = extractor.embedding_size

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`features [B, T, D]`, `lengths [B]` -> `embeddings [B, E]`."""
        return self.extractor(features, lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> EmbeddingOutput:
        embeddings = self.extractor(features, lengths)
        return EmbeddingOutput(embeddings=embeddings, logits=self.classifier(embeddings))

    def loss(self, outputs: EmbeddingOutput, targets: torch.Tensor) -> torch.Tensor:
        """The criterion on the classifier's outputs, `targets [B]` class indices."""
        return self.criterion(outputs.logits, targets)
