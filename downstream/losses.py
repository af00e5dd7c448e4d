"""Speaker-classification losses: a classifier on the embeddings `[B, E]` and a criterion on its outputs.

`build_loss(name, embedding_size, num_classes)` returns the pair (classifier, criterion) because the two go
together: the additive-angular-margin loss needs cosine similarities, not the logits of a plain linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from upstream.names import Registry

LOSSES: Registry[tuple[nn.Module, nn.Module]] = Registry("loss")
register = LOSSES.register

# Floor of 1 - cos^2 under the square root: sqrt has an infinite slope at 0, and torch.where back-propagates
# 0 * inf = NaN through the branch it did not select. sqrt(1e-12) = 1e-6 changes a logit by < scale * 1e-6.
_SIN_SQUARED_FLOOR = 1e-12


def build_loss(name: str, embedding_size: int, num_classes: int, **options) -> tuple[nn.Module, nn.Module]:
    """-> (classifier: embeddings `[B, E]` -> `[B, C]`, criterion: (classifier output, targets `[B]`) -> loss).

    `options` go to the loss, e.g. `margin` and `scale` for "aam".
    """
    LOSSES[name]  # an unknown name first, as for every registry
    if embedding_size < 1 or num_classes < 1:
        raise ValueError(f"embedding_size and num_classes must be positive; got {embedding_size}, {num_classes}")
    return LOSSES.build(name, embedding_size, num_classes, **options)


class CosineClassifier(nn.Module):
    """`embeddings [B, E]` -> cosine similarities `[B, C]` with one weight vector per class.

    Both sides are length-normalised, so only the angle between an embedding and a class centre counts; the margin
    losses rely on that to put the margin on the angle.
    """

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"embedding_size and num_classes must be positive; got {embedding_size}, {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).t()

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"


def _check_margin_scale(margin: float, scale: float) -> None:
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 (radians); got {margin}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale}")


def aam_logits(cosines: torch.Tensor, targets: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """Additive angular margin (ArcFace, Deng et al., CVPR 2019; the ECAPA-TDNN speaker loss): `cosines [B, C]`,
    `targets [B]` -> `logits [B, C]`, scale * cos(theta + margin) in the target column, scale * cos(theta) elsewhere.
    Soft targets `[B, C]` (class probabilities, as FeatEx trains with) put the margin on every column they give
    weight to.

    cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m). Past theta = pi - m it would rise again with theta and
    reward moving away from the class, so there the logit is cos(theta) - m sin(m) instead, which keeps decreasing
    in theta. Computed in at least float32: the square root near |cos| = 1 is too coarse in half precision.
    """
    _check_margin_scale(margin, scale)
    if cosines.dim() != 2 or targets.shape not in (cosines.shape[:1], cosines.shape):
        raise ValueError(
            f"expected cosines [B, C] and targets [B] or [B, C]; got {tuple(cosines.shape)}, {tuple(targets.shape)}"
        )
    cosines = cosines.to(torch.promote_types(cosines.dtype, torch.float32)).clamp(-1.0, 1.0)
    if targets.dim() == 1:
        index = targets.long()[:, None]
        target = cosines.gather(1, index)
        return scale * cosines.scatter(1, index, _add_angular_margin(target, margin))
    return scale * torch.where(targets > 0, _add_angular_margin(cosines, margin), cosines)


def _add_angular_margin(cosines: torch.Tensor, margin: float) -> torch.Tensor:
    sine = (1.0 - cosines**2).clamp(min=_SIN_SQUARED_FLOOR).sqrt()
    shifted = cosines * math.cos(margin) - sine * math.sin(margin)
    return torch.where(cosines < math.cos(math.pi - margin), cosines - margin * math.sin(margin), shifted)


class AAMSoftmaxLoss(nn.Module):
    """Cross-entropy of `aam_logits`: (cosines `[B, C]` from a `CosineClassifier`, targets `[B]` class indices or
    `[B, C]` class probabilities) -> scalar.

    Defaults are ECAPA-TDNN's (margin 0.2, scale 30).
    """

    def __init__(self, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        _check_margin_scale(margin, scale)
        self.margin = margin
        self.scale = scale

    def forward(self, cosines: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(aam_logits(cosines, targets, self.margin, self.scale), targets)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, scale={self.scale}"


class SoftmaxLoss(nn.Module):
    """Plain cross-entropy: (logits `[B, C]`, targets `[B]` class indices or `[B, C]` probabilities) -> scalar."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


@register("softmax")
def softmax_loss(embedding_size: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """A linear classifier and cross-entropy, as the x-vector recipe trains."""
    return nn.Linear(embedding_size, num_classes), SoftmaxLoss()


@register("aam")
def aam_softmax_loss(
    embedding_size: int, num_classes: int, margin: float = 0.2, scale: float = 30.0
) -> tuple[nn.Module, nn.Module]:
    """Cosine classifier and additive-angular-margin softmax, as ECAPA-TDNN trains."""
    return CosineClassifier(embedding_size, num_classes), AAMSoftmaxLoss(margin, scale)
