"""Tasks: what differs between downstream problems (labels, head, loss, metrics, test outputs), so that one
LightningModule serves them all. `TASKS` maps names to classes; LightningCLI configs name the class path."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from downstream.emotion import EmotionClassifier
from downstream.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy

from .data import Manifest, ManifestError

# Sums a tensor over processes under distributed evaluation; the identity on one process.
Reduce = Callable[[torch.Tensor], torch.Tensor]

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    return cls


def build_task(name: str, **options: Any) -> Task:
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(sorted(TASKS))}") from None
    return cls(**options)


class Evaluator:
    """Accumulates what a metric needs over an evaluation epoch and turns it into numbers at the end."""

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def compute(self, reduce: Reduce) -> dict[str, float]:
        """Metric name -> value over everything seen, summed over processes by `reduce`."""
        raise NotImplementedError

    @property
    def num_utterances(self) -> int:
        raise NotImplementedError

    def write(self, run_dir: Path, title: str) -> list[Path]:
        """Test-time files beyond results.json (plots, per-utterance outputs); returns what was written."""
        return []


class Task:
    """One downstream problem. Subclasses keep their `__init__` arguments as attributes of the same name, so a
    task can be written back into a config (`config()`)."""

    name: ClassVar[str]
    fields: ClassVar[dict[str, type | tuple[type, ...]]] = {}  # manifest fields the task reads, and their types
    monitor: ClassVar[str]  # the validation metric that picks the best checkpoint
    monitor_mode: ClassVar[str] = "max"

    def targets(self, manifest: Manifest) -> list[Any]:
        """Encode each utterance's label; unknown labels raise `ManifestError` naming the line."""
        raise NotImplementedError

    def collate_targets(self, targets: list[Any]) -> Any:
        return torch.tensor(targets)

    def build_head(self, input_size: int) -> nn.Module:
        """The head on `[B, T, input_size]` interface features: `head(features, lengths) -> outputs`."""
        raise NotImplementedError

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The task as LightningCLI writes it: class path and init arguments."""
        parameters = inspect.signature(type(self).__init__).parameters
        init_args = {name: getattr(self, name) for name in parameters if name != "self"}
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}


class ClassificationEvaluator(Evaluator):
    """Confusion matrix over an epoch -> UA (mean per-class recall) and WA (accuracy); plots it at test time."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)

    def update(self, outputs: torch.Tensor, batch: dict[str, Any]) -> None:
        predictions = outputs.argmax(dim=-1).cpu()
        self.confusion += confusion_matrix(predictions, batch["targets"].cpu(), len(self.classes))

    def compute(self, reduce: Reduce) -> dict[str, float]:
        self.confusion = reduce(self.confusion)
        return {"UA": unweighted_accuracy(self.confusion), "WA": weighted_accuracy(self.confusion)}

    @property
    def num_utterances(self) -> int:
        return int(self.confusion.sum())

    def write(self, run_dir: Path, title: str) -> list[Path]:
        from .plots import plot_confusion

        return [plot_confusion(self.confusion, self.classes, run_dir / "confusion.png", title=title)]


@register_task
class EmotionTask(Task):
    """Utterance-level emotion classification (SUPERB ER): a pooled classifier over the `emotion` field.

    `classes` are the labels kept, in the order of the confusion matrix; a manifest label outside them is an
    error (map or drop such utterances when preparing the manifest).
    """

    name = "emotion"
    fields = {"emotion": str}
    monitor = "UA"

    def __init__(
        self,
        classes: list[str] | None = None,
        projection_size: int = 256,
        pooling: str = "mean",
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        self.classes = list(classes) if classes is not None else ["neu", "hap", "ang", "sad"]
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"emotion classes must be at least two distinct labels, got {self.classes}")
        self.projection_size = projection_size
        self.pooling = pooling
        self.hidden_sizes = list(hidden_sizes or [])
        self.dropout = dropout

    def targets(self, manifest: Manifest) -> list[int]:
        index = {label: i for i, label in enumerate(self.classes)}
        targets = []
        for i, entry in enumerate(manifest.entries):
            label = entry["emotion"]
            if label not in index:
                raise ManifestError(
                    f"emotion label {label!r} in {manifest.where(i)} is not one of {', '.join(self.classes)} "
                    "(set --model.task.classes to keep it, or drop it from the manifest)"
                )
            targets.append(index[label])
        return targets

    def build_head(self, input_size: int) -> nn.Module:
        return EmotionClassifier(
            input_size,
            len(self.classes),
            projection_size=self.projection_size,
            pooling=self.pooling,
            hidden_sizes=self.hidden_sizes,
            dropout=self.dropout,
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets)

    def evaluator(self) -> Evaluator:
        return ClassificationEvaluator(self.classes)
