"""Utterance classification: emotion recognition (UA / WA) and speaker identification (accuracy)."""

# No `from __future__ import annotations`: see recipes/tasks/base.py.
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from downstream.adversary import AdversaryTargets, SpeakerAdversarialClassifier
from downstream.classifier import UtteranceClassifier
from downstream.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy
from downstream.speaker import EcapaConfig
from upstream.names import as_config

from ..data import Manifest, write_jsonl
from .base import (
    Calibration,
    Evaluator,
    Predictor,
    Reduce,
    SplitData,
    Task,
    encode_labels,
    gather_objects,
    register_task,
    speakers_from_data,
)


class ClassPredictor(Predictor):
    """Logits -> the most probable class (`label`) and the softmax probability of each class (`scores`, most
    probable first; only the `max_scores` most probable when there are more classes, as for speaker ID over
    VoxCeleb's 1,251 speakers)."""

    max_scores: ClassVar[int] = 20

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def __call__(self, outputs: torch.Tensor, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        probabilities = outputs.detach().float().softmax(dim=-1).cpu()
        top = probabilities.topk(min(self.max_scores, probabilities.size(-1)), dim=-1)
        return [
            {
                "label": self.classes[int(indices[0])],
                "scores": {self.classes[int(i)]: float(p) for p, i in zip(values, indices, strict=True)},
            }
            for values, indices in zip(top.values, top.indices, strict=True)
        ]


class ClassificationEvaluator(Evaluator):
    """Confusion matrix over an epoch -> UA (mean per-class recall) and WA (accuracy); at test, the confusion plot
    and `predictions.jsonl` (each utterance's predicted label, reference and class probabilities)."""

    max_plotted_classes: ClassVar[int | None] = None  # no confusion plot beyond this many classes

    def __init__(self, classes: list[str], split: SplitData | None = None, label_field: str | None = None) -> None:
        self.classes = classes
        self.split, self.label_field = split, label_field
        self.confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
        self.predictor = ClassPredictor(classes)
        self.answers: dict[int, dict[str, Any]] = {}  # manifest index -> predicted label and scores

    def update(self, outputs: torch.Tensor, batch: dict[str, Any]) -> None:
        predictions = outputs.argmax(dim=-1).cpu()
        self.confusion += confusion_matrix(predictions, batch["targets"].cpu(), len(self.classes))
        if self.split is not None and self.split.name == "test":
            self.answers.update(zip(batch["indices"].tolist(), self.predictor(outputs, []), strict=True))

    def compute(self, reduce: Reduce) -> dict[str, float]:
        self.confusion = reduce(self.confusion)
        merged: dict[int, dict[str, Any]] = {}
        for part in gather_objects(self.answers):
            merged.update(part)
        self.answers = merged
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        return {"UA": unweighted_accuracy(self.confusion), "WA": weighted_accuracy(self.confusion)}

    @property
    def num_utterances(self) -> int:
        return int(self.confusion.sum())

    def write(self, run_dir: Path, title: str) -> list[Path]:
        from ..plots import plot_confusion

        written = []
        if self.max_plotted_classes is None or len(self.classes) <= self.max_plotted_classes:
            written.append(plot_confusion(self.confusion, self.classes, run_dir / "confusion.png", title=title))
        if self.answers:
            entries = self.split.manifest.entries
            rows = [
                {"id": entries[i]["id"], "audio": entries[i]["audio"], "reference": entries[i].get(self.label_field),
                 **self.answers[i]}
                for i in sorted(self.answers)
            ]  # fmt: skip
            written.append(write_jsonl(run_dir / "predictions.jsonl", rows))
        return written


class UtteranceClassificationTask(Task):
    """One label per utterance from the manifest's `label_field`, a pooled classifier (`UtteranceClassifier`
    with the subclass's `projection_size`, `pooling`, `hidden_sizes` and `dropout`; its loss is cross-entropy).
    `pooling: ecapa` takes its sizes from the subclass's `ecapa` field."""

    label_field: ClassVar[str]

    @property
    def labels(self) -> list[str]:
        """The classes, in the order of the logits."""
        raise NotImplementedError

    def unknown_label(self) -> str:
        """What a label outside `labels` means and what to do about it, for the error naming its line."""
        raise NotImplementedError

    def targets(self, manifest: Manifest, split: str) -> list[int]:
        return encode_labels(manifest, self.label_field, self.labels, self.unknown_label())

    def predictor(self, calibration: Calibration) -> Predictor:
        return ClassPredictor(self.labels)

    def head_options(self) -> dict[str, Any]:
        """The `UtteranceClassifier` options the task's fields set."""
        return {
            "projection_size": self.projection_size,
            "pooling": self.pooling,
            "hidden_sizes": self.hidden_sizes,
            "dropout": self.dropout,
            "pooling_options": {"config": self.ecapa} if self.pooling == "ecapa" else None,
        }

    def build_head(self, input_size: int) -> nn.Module:
        return UtteranceClassifier(input_size, len(self.labels), **self.head_options())


@dataclass
class SpeakerAdversaryConfig:
    """The speaker adversary of `EmotionTask` (Gat et al., ICASSP 2022; `downstream.adversary`): a speaker
    classifier (`hidden_size` 0: linear) on the pooled features behind a gradient reversal of `weight` (lambda).

    `speakers` are its classes; left unset, `strata fit` takes the training manifest's speakers (sorted), and a
    test the checkpoint's. `weight` 0 keeps the speaker head (its `train/speaker_acc` shows how much speaker
    information the features carry) without letting it change them."""

    weight: float = 1.0
    hidden_size: int = 256
    speakers: list[str] | None = None

    def __post_init__(self) -> None:
        self.speakers = list(self.speakers or [])
        if self.weight < 0:
            raise ValueError(f"speaker_adversary.weight must be >= 0, got {self.weight}")
        if self.hidden_size < 0:
            raise ValueError(f"speaker_adversary.hidden_size must be >= 0 (0: linear), got {self.hidden_size}")
        if len(set(self.speakers)) != len(self.speakers):
            raise ValueError("speaker_adversary.speakers must be distinct")


DEFAULT_EMOTIONS = ("neu", "hap", "ang", "sad")


@register_task
@dataclass(eq=False)
class EmotionTask(UtteranceClassificationTask):
    """Utterance-level emotion classification (SUPERB ER): a pooled classifier over the `emotion` field.

    `classes` are the labels kept, in the order of the confusion matrix; a manifest label outside them is an
    error (map or drop such utterances when preparing the manifest). `speaker_adversary` (unset: off) adds a
    speaker classifier behind gradient reversal, trained on the training manifest's `speaker` field (see
    `SpeakerAdversaryConfig`); evaluation and prediction are unchanged.
    """

    name = "emotion"
    label_field = "emotion"
    fields = {"emotion": str}
    monitor = "UA"

    classes: list[str] | None = field(default_factory=lambda: list(DEFAULT_EMOTIONS))
    projection_size: int = 256
    pooling: str = "mean"
    hidden_sizes: list[int] | None = field(default_factory=list)
    dropout: float = 0.0
    ecapa: EcapaConfig = field(default_factory=EcapaConfig)
    speaker_adversary: SpeakerAdversaryConfig | None = None

    def __post_init__(self) -> None:
        self.classes = list(self.classes) if self.classes is not None else list(DEFAULT_EMOTIONS)
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"emotion classes must be at least two distinct labels, got {self.classes}")
        self.hidden_sizes = list(self.hidden_sizes or [])
        self.ecapa = as_config(EcapaConfig, self.ecapa, "pooling", "ecapa")
        if self.speaker_adversary is not None:
            self.speaker_adversary = as_config(
                SpeakerAdversaryConfig, self.speaker_adversary, "task option", "speaker_adversary"
            )

    @classmethod
    def complete_config(cls, init_args, train, checkpoint_args, run_dir=None):
        """With the adversary on, its `speakers` from the checkpoint or the training manifest."""
        adversary = init_args.get("speaker_adversary")
        if adversary is None:
            return init_args
        adversary = copy.deepcopy(adversary)  # a dict, or jsonargparse's Namespace: both take item access
        saved = (checkpoint_args or {}).get("speaker_adversary") or {}
        filled = speakers_from_data(
            {"speakers": adversary.get("speakers")}, train, saved, f"{cls.name} speaker_adversary"
        )
        adversary["speakers"] = filled["speakers"]
        return {**init_args, "speaker_adversary": adversary}

    def _adversary_trains(self, split: str) -> bool:
        # Only training reads speakers: held-out speakers (IEMOCAP's test session) are not the adversary's classes.
        return self.speaker_adversary is not None and split == "train"

    def fields_for(self, split: str) -> dict[str, type | tuple[type, ...]]:
        return {**self.fields, "speaker": str} if self._adversary_trains(split) else self.fields

    def targets(self, manifest: Manifest, split: str) -> list[Any]:
        """Emotion indices; with the adversary on, (emotion, speaker) index pairs for the training split."""
        labels = super().targets(manifest, split)
        if not self._adversary_trains(split):
            return labels
        unknown = "is not one of the speaker adversary's speakers (set --model.task.speaker_adversary.speakers)"
        speakers = encode_labels(manifest, "speaker", self._adversary_speakers(), unknown)
        return list(zip(labels, speakers, strict=True))

    def collate_targets(self, targets: list[Any]) -> torch.Tensor | AdversaryTargets:
        if targets and isinstance(targets[0], tuple):
            labels, speakers = zip(*targets, strict=True)
            return AdversaryTargets(torch.tensor(labels), torch.tensor(speakers))
        return torch.tensor(targets)

    def _adversary_speakers(self) -> list[str]:
        speakers = self.speaker_adversary.speakers
        if len(speakers) < 2:
            raise ValueError(
                f"the speaker adversary needs at least two speakers, got {speakers}: set "
                "--model.task.speaker_adversary.speakers, or run through `strata fit`, which takes them from "
                "--data.train"
            )
        return speakers

    def build_head(self, input_size: int) -> nn.Module:
        if self.speaker_adversary is None:
            return super().build_head(input_size)
        return SpeakerAdversarialClassifier(
            input_size,
            len(self.labels),
            num_speakers=len(self._adversary_speakers()),
            adversary_weight=self.speaker_adversary.weight,
            speaker_hidden_size=self.speaker_adversary.hidden_size,
            **self.head_options(),
        )

    @property
    def labels(self) -> list[str]:
        return self.classes

    def unknown_label(self) -> str:
        return (
            f"is not one of {', '.join(self.classes)} "
            "(set --model.task.classes to keep it, or drop it from the manifest)"
        )

    def evaluator(self, split: SplitData) -> Evaluator:
        return ClassificationEvaluator(self.classes, split, self.label_field)


class AccuracyEvaluator(ClassificationEvaluator):
    """Closed-set identification among many classes: accuracy, and a confusion plot only when it is readable."""

    max_plotted_classes = 30

    def metrics(self) -> dict[str, float]:
        return {"accuracy": weighted_accuracy(self.confusion)}


@register_task
@dataclass(eq=False)
class SpeakerIdTask(UtteranceClassificationTask):
    """Closed-set speaker identification (SUPERB SID): pooled classifier over the `speaker` field, accuracy.

    `speakers` are the classes; left unset, `strata fit` takes the training manifest's speakers (sorted) and a
    test takes them from the checkpoint. A test speaker outside them is an error: identification is closed-set.
    `crop_seconds` trains on random crops (SUPERB's 8 s) so long utterances do not dominate the batches.
    """

    name = "speaker_id"
    label_field = "speaker"
    fields = {"speaker": str}
    monitor = "accuracy"

    speakers: list[str] | None = None
    projection_size: int = 256
    pooling: str = "mean"
    hidden_sizes: list[int] | None = field(default_factory=list)
    dropout: float = 0.0
    crop_seconds: float | None = None
    ecapa: EcapaConfig = field(default_factory=EcapaConfig)

    def __post_init__(self) -> None:
        self.ecapa = as_config(EcapaConfig, self.ecapa, "pooling", "ecapa")
        self.speakers = list(self.speakers or [])
        if len(set(self.speakers)) != len(self.speakers):
            raise ValueError("speaker_id speakers must be distinct")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive or unset, got {self.crop_seconds}")
        self.hidden_sizes = list(self.hidden_sizes or [])

    @property
    def train_crop_seconds(self) -> float | None:
        return self.crop_seconds

    @classmethod
    def complete_config(cls, init_args, train, checkpoint_args, run_dir=None):
        return speakers_from_data(init_args, train, checkpoint_args, cls.name)

    def _require_speakers(self) -> list[str]:
        if len(self.speakers) < 2:
            raise ValueError(
                f"{self.name} needs at least two speakers, got {self.speakers}: set --model.task.speakers, "
                "or run through `strata fit`, which takes them from --data.train"
            )
        return self.speakers

    @property
    def labels(self) -> list[str]:
        return self._require_speakers()

    def unknown_label(self) -> str:
        return (
            f"is not one of the {len(self.speakers)} training speakers (speaker_id is closed-set: every "
            "valid and test speaker must have training utterances)"
        )

    def evaluator(self, split: SplitData) -> Evaluator:
        return AccuracyEvaluator(self.speakers, split, self.label_field)
