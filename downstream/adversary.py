"""Speaker-adversarial training (Gat et al., "Speaker Normalization for Self-supervised Speech Emotion Recognition",
ICASSP 2022): a speaker classifier on the pooled features behind a gradient-reversal layer (Ganin & Lempitsky,
"Unsupervised Domain Adaptation by Backpropagation", ICML 2015). The speaker head learns to name the speaker; the
reversed gradient pushes the pooled features to hide it, so the emotion classifier cannot lean on who is speaking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .classifier import UtteranceClassifier


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by `-weight` (no gradient for `weight`)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """`x` unchanged, with its gradient multiplied by `-weight` on the way back."""
    return GradientReversal.apply(x, weight)


class AdversaryTargets(NamedTuple):
    """A training batch's targets with the adversary on: emotion `labels [B]` and `speakers [B]` (class indices).

    A NamedTuple so that Lightning moves both to the device."""

    labels: torch.Tensor
    speakers: torch.Tensor


class AdversarialOutputs(NamedTuple):
    """What the head returns in train mode: emotion `logits [B, C]` and `speaker_logits [B, S]`."""

    logits: torch.Tensor
    speaker_logits: torch.Tensor


class SpeakerAdversarialClassifier(UtteranceClassifier):
    """`UtteranceClassifier` plus a speaker classifier on its pooled vector behind a gradient reversal of
    `adversary_weight` (lambda): `speaker_hidden_size` > 0 makes it Linear -> ReLU -> Linear, 0 a linear one.

    In train mode `forward` returns `AdversarialOutputs`; in eval mode plain emotion logits, as the plain head does
    (torchvision's Inception returns its auxiliary logits the same way), so evaluation, `strata predict` and exports
    read it unchanged. The emotion part's modules and parameter names are the plain head's, built first, and the
    speaker head's init leaves the global RNG as it found it: with the same seed both start from the same weights
    and draw the same dropout masks.

    The loss is emotion CE + speaker CE: the speaker head learns at full rate whatever lambda is, and lambda scales
    only the reversed gradient reaching the pooled features. With lambda = 0 the features get no gradient from the
    speaker head: emotion training is plain training, and the speaker accuracy measures how much speaker
    information the emotion features carry.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        num_speakers: int,
        adversary_weight: float = 1.0,
        speaker_hidden_size: int = 256,
        projection_size: int = 256,
        pooling: str = "mean",
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        pooling_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(input_size, num_classes, projection_size, pooling, hidden_sizes, dropout, pooling_options)
        if num_speakers < 2:
            raise ValueError(f"the speaker adversary needs at least two speakers; got {num_speakers}")
        if adversary_weight < 0:
            raise ValueError(f"adversary_weight must be >= 0; got {adversary_weight}")
        if speaker_hidden_size < 0:
            raise ValueError(
                f"speaker_hidden_size must be 0 (a linear classifier) or positive; got {speaker_hidden_size}"
            )
        self.num_speakers = num_speakers
        self.adversary_weight = adversary_weight
        size = self.pooling.output_size
        layers: list[nn.Module] = []
        # Initialised on a fork of the RNG: the global stream then goes on as after the plain head's init, so
        # dropout masks (and anything seeded later) match a plain run's, and lambda = 0 reproduces it exactly.
        with torch.random.fork_rng(devices=[]):
            if speaker_hidden_size:
                layers += [nn.Linear(size, speaker_hidden_size), nn.ReLU()]
                size = speaker_hidden_size
            layers.append(nn.Linear(size, num_speakers))
        self.speaker_classifier = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor | AdversarialOutputs:
        """`features [B, T, D]`, `lengths [B]` -> `AdversarialOutputs` in train mode, `logits [B, C]` in eval."""
        pooled = self.embed(features, lengths)
        logits = self.classifier(pooled)
        if not self.training:
            return logits
        return AdversarialOutputs(logits, self.speaker_classifier(reverse_gradient(pooled, self.adversary_weight)))

    def loss(
        self, outputs: torch.Tensor | AdversarialOutputs, targets: torch.Tensor | AdversaryTargets
    ) -> torch.Tensor:
        """Emotion CE, plus speaker CE for train-mode outputs (validation has emotion targets only)."""
        labels = targets.labels if isinstance(targets, AdversaryTargets) else targets
        if not isinstance(outputs, AdversarialOutputs):
            return nn.functional.cross_entropy(outputs, labels)
        if not isinstance(targets, AdversaryTargets):
            raise ValueError("the speaker adversary trains on AdversaryTargets (emotion and speaker indices)")
        emotion = nn.functional.cross_entropy(outputs.logits, labels)
        return emotion + nn.functional.cross_entropy(outputs.speaker_logits, targets.speakers)

    def training_metrics(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """`speaker_acc`: how often the speaker head names the speaker (chance is 1 / num_speakers)."""
        if not isinstance(outputs, AdversarialOutputs) or not isinstance(targets, AdversaryTargets):
            return {}
        correct = outputs.speaker_logits.detach().argmax(-1) == targets.speakers
        return {"speaker_acc": correct.float().mean()}

    def extra_repr(self) -> str:
        return f"num_speakers={self.num_speakers}, adversary_weight={self.adversary_weight}"
