"""Tasks: what differs between downstream problems (labels, head, loss, metrics, test outputs), so that one
LightningModule serves them all. `TASKS` maps names to classes; LightningCLI configs name the class path."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from downstream.classifier import UtteranceClassifier
from downstream.losses import build_loss
from downstream.metrics import confusion_matrix, eer, min_dcf, unweighted_accuracy, weighted_accuracy
from downstream.speaker import SpeakerEmbeddingHead, SpeakerOutput, build_extractor, cosine_scores

from .data import Manifest, ManifestError, read_manifest
from .trials import Trials

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


@dataclass
class SplitData:
    """What an evaluator may need to know about the split it scores: its manifest, and for verification the
    trials (pairs of manifest indices)."""

    name: str
    manifest: Manifest
    trials: Trials | None = None


def task_class(class_path: str) -> type[Task]:
    """The task class a config names (`recipes.tasks.EmotionTask`)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"unknown task class {class_path!r} (see recipes.tasks.TASKS)") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"{class_path!r} is not a recipes.tasks.Task")
    return cls


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

    def details(self) -> dict[str, Any]:
        """Counts and settings for results.json beside the metrics (e.g. the number of trials); not logged."""
        return {}

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
    uses_trials: ClassVar[bool] = False  # test scores pairs of utterances (`--data.trials`)

    @classmethod
    def complete_config(
        cls,
        init_args: dict[str, Any],
        train: str | None,
        checkpoint_args: dict[str, Any] | None,
        run_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Fill arguments that come from the data (e.g. the training speakers) before the task is built: from
        the checkpoint being loaded (`checkpoint_args`, its task's init arguments) or from the `train` manifest;
        files made from the data (a tokenizer) go into `run_dir`. Most tasks have none."""
        return init_args

    def drop(self, manifest: Manifest, split: str, frame_rate: float) -> dict[int, str]:
        """Utterances of a split the task cannot use (manifest index -> why), dropped with a report rather than
        failing or poisoning the loss; `frame_rate` is the upstream's frames per second. Most tasks drop none."""
        return {}

    def fields_for(self, split: str) -> dict[str, type | tuple[type, ...]]:
        """The manifest fields a split needs (`train`, `valid` or `test`)."""
        return self.fields

    def targets(self, manifest: Manifest, split: str) -> list[Any] | None:
        """Encode each utterance's label (None when the split is scored without them, as verification trials
        are); unknown labels raise `ManifestError` naming the line."""
        raise NotImplementedError

    def collate_targets(self, targets: list[Any]) -> Any:
        return torch.tensor(targets)

    @property
    def train_crop_seconds(self) -> float | None:
        """Train on random crops of this many seconds (shorter clips repeated to fill them), or whole clips."""
        return None

    @property
    def test_reference_split(self) -> str | None:
        """A split the test also embeds as a reference (verification's training-set mean), or None."""
        return None

    def build_head(self, input_size: int) -> nn.Module:
        """The head on `[B, T, input_size]` interface features: `head(features, lengths) -> outputs`, and
        `head.embed(features, lengths) -> [B, E]` for `strata embed`."""
        raise NotImplementedError

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluator(self, split: SplitData) -> Evaluator:
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


def encode_labels(manifest: Manifest, field: str, classes: list[str], unknown: str) -> list[int]:
    """`manifest`'s `field` as indices into `classes`; a label outside them raises `ManifestError` with `unknown`
    (what to do about it) after the line it is on."""
    index = {label: i for i, label in enumerate(classes)}
    targets = []
    for i, entry in enumerate(manifest.entries):
        label = entry[field]
        if label not in index:
            raise ManifestError(f"{field} label {label!r} in {manifest.where(i)} {unknown}")
        targets.append(index[label])
    return targets


def speakers_from_data(
    init_args: dict[str, Any], train: str | None, checkpoint_args: dict[str, Any] | None, task: str
) -> dict[str, Any]:
    """`init_args` with `speakers` filled: from the checkpoint when one is loaded (the classes its weights were
    trained for), else the sorted speakers of the training manifest."""
    if init_args.get("speakers"):
        return init_args
    if checkpoint_args and checkpoint_args.get("speakers"):
        return {**init_args, "speakers": list(checkpoint_args["speakers"])}
    if train is None:
        raise ValueError(
            f"{task} needs the training speakers: pass --data.train (the manifest it trains on), "
            "a checkpoint trained with them (--ckpt_path), or --model.task.speakers"
        )
    manifest = read_manifest(train, fields={"speaker": str}, check_audio=False)
    return {**init_args, "speakers": sorted({entry["speaker"] for entry in manifest.entries})}


class UtteranceClassificationTask(Task):
    """One label per utterance from the manifest's `label_field`, a pooled classifier (`UtteranceClassifier`
    with the subclass's `projection_size`, `pooling`, `hidden_sizes` and `dropout`), cross-entropy."""

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

    def build_head(self, input_size: int) -> nn.Module:
        return UtteranceClassifier(
            input_size,
            len(self.labels),
            projection_size=self.projection_size,
            pooling=self.pooling,
            hidden_sizes=self.hidden_sizes,
            dropout=self.dropout,
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets)


@register_task
class EmotionTask(UtteranceClassificationTask):
    """Utterance-level emotion classification (SUPERB ER): a pooled classifier over the `emotion` field.

    `classes` are the labels kept, in the order of the confusion matrix; a manifest label outside them is an
    error (map or drop such utterances when preparing the manifest).
    """

    name = "emotion"
    label_field = "emotion"
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

    @property
    def labels(self) -> list[str]:
        return self.classes

    def unknown_label(self) -> str:
        return (
            f"is not one of {', '.join(self.classes)} "
            "(set --model.task.classes to keep it, or drop it from the manifest)"
        )

    def evaluator(self, split: SplitData) -> Evaluator:
        return ClassificationEvaluator(self.classes)


class AccuracyEvaluator(ClassificationEvaluator):
    """Closed-set identification among many classes: accuracy, and a confusion plot only when it is readable."""

    max_plotted_classes: ClassVar[int] = 30

    def compute(self, reduce: Reduce) -> dict[str, float]:
        self.confusion = reduce(self.confusion)
        return {"accuracy": weighted_accuracy(self.confusion)}

    def write(self, run_dir: Path, title: str) -> list[Path]:
        return super().write(run_dir, title) if len(self.classes) <= self.max_plotted_classes else []


@register_task
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

    def __init__(
        self,
        speakers: list[str] | None = None,
        projection_size: int = 256,
        pooling: str = "mean",
        hidden_sizes: list[int] | None = None,
        dropout: float = 0.0,
        crop_seconds: float | None = None,
    ) -> None:
        self.speakers = list(speakers or [])
        if len(set(self.speakers)) != len(self.speakers):
            raise ValueError("speaker_id speakers must be distinct")
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive or unset, got {crop_seconds}")
        self.projection_size = projection_size
        self.pooling = pooling
        self.hidden_sizes = list(hidden_sizes or [])
        self.dropout = dropout
        self.crop_seconds = crop_seconds

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
        return AccuracyEvaluator(self.speakers)


class VerificationEvaluator(Evaluator):
    """Embeds every utterance of the split once, then scores its trials by cosine similarity: EER, minDCF.

    Embeddings land in an `[N, E]` table at their manifest rows, so summing the tables of all processes gathers
    them under distributed evaluation.
    """

    def __init__(self, split: SplitData, p_targets: tuple[float, ...] = (0.05, 0.01)) -> None:
        if split.trials is None:
            raise ValueError(f"speaker verification needs trials for the {split.name} split")
        self.split = split
        self.p_targets = p_targets
        self.embeddings: torch.Tensor | None = None
        self.seen = torch.zeros(len(split.manifest), dtype=torch.long)
        self.scores: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # subtracted from every embedding before scoring, when set

    def update(self, outputs: SpeakerOutput, batch: dict[str, Any]) -> None:
        embeddings = outputs.embeddings.detach().float().cpu()
        if self.embeddings is None:
            self.embeddings = torch.zeros(len(self.split.manifest), embeddings.size(1))
        self.embeddings[batch["indices"]] = embeddings
        self.seen[batch["indices"]] += 1

    def compute(self, reduce: Reduce) -> dict[str, float]:
        if self.embeddings is None:
            raise ValueError(f"no {self.split.name} utterances were embedded")
        self.embeddings, self.seen = reduce(self.embeddings), reduce(self.seen)
        trials = self.split.trials
        needed = torch.unique(torch.cat([trials.enroll, trials.test]))
        missing = needed[self.seen[needed] == 0]
        if missing.numel():
            raise ValueError(
                f"{missing.numel()} utterances named in {trials.path} were not embedded "
                "(evaluation must cover the whole manifest: no limit_val_batches / limit_test_batches)"
            )
        self.scores = cosine_scores(self.embeddings[trials.enroll], self.embeddings[trials.test], mean=self.mean)
        metrics = {"EER": eer(self.scores, trials.labels)[0]}
        for p_target in self.p_targets:
            metrics[f"minDCF@{p_target:g}"] = min_dcf(self.scores, trials.labels, p_target=p_target)[0]
        return metrics

    @property
    def num_utterances(self) -> int:
        return int((self.seen > 0).sum())

    def details(self) -> dict[str, Any]:
        return {"num_trials": len(self.split.trials), "mean_subtraction": self.mean is not None}

    def write(self, run_dir: Path, title: str) -> list[Path]:
        from .plots import plot_det

        trials, ids = self.split.trials, self.split.manifest.ids
        path = run_dir / "scores.txt"
        rows = zip(
            trials.labels.tolist(), trials.enroll.tolist(), trials.test.tolist(), self.scores.tolist(), strict=True
        )
        path.write_text("".join(f"{label} {ids[e]} {ids[t]} {score:.6f}\n" for label, e, t, score in rows))
        return [path, plot_det(self.scores, trials.labels, run_dir / "det.png", title=title)]


@register_task
class SpeakerVerificationTask(Task):
    """Speaker verification as the speaker-recognition community runs it: an embedding extractor (ECAPA-TDNN or
    x-vector) trained on random `crop_seconds` crops to classify the training speakers with an additive angular
    margin (AAM) softmax; valid and test embed whole utterances and score trials by cosine similarity.

    Validation scores `--data.valid_trials`, or balanced trials drawn from the valid manifest's speakers; test
    scores `--data.trials`. `speakers` (the training classes) come from the training manifest when unset.
    `subtract_mean` makes the test subtract the mean embedding of the training set (its crops, embedded once
    more with the trained model; `--data.train` must be given) before cosine scoring.
    """

    name = "speaker_verification"
    fields = {"speaker": str}
    monitor = "EER"
    monitor_mode = "min"
    uses_trials = True

    def __init__(
        self,
        speakers: list[str] | None = None,
        extractor: str = "ecapa",
        extractor_options: dict[str, Any] | None = None,
        loss_type: str = "aam",
        margin: float = 0.2,
        scale: float = 30.0,
        crop_seconds: float = 3.0,
        subtract_mean: bool = False,
    ) -> None:
        self.speakers = list(speakers or [])
        if len(set(self.speakers)) != len(self.speakers):
            raise ValueError("speaker_verification speakers must be distinct")
        self.subtract_mean = subtract_mean
        if crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
        self.extractor = extractor
        self.extractor_options = dict(extractor_options or {})
        self.loss_type = loss_type
        self.margin, self.scale = margin, scale
        self.crop_seconds = crop_seconds
        self._criterion: nn.Module | None = None

    @property
    def loss_options(self) -> dict[str, float]:
        return {"margin": self.margin, "scale": self.scale} if self.loss_type == "aam" else {}

    @classmethod
    def complete_config(cls, init_args, train, checkpoint_args, run_dir=None):
        return speakers_from_data(init_args, train, checkpoint_args, cls.name)

    def fields_for(self, split: str) -> dict[str, type | tuple[type, ...]]:
        # Held-out speakers are scored through trials; valid needs speaker labels only to draw trials from.
        return self.fields if split == "train" else {}

    def targets(self, manifest: Manifest, split: str) -> list[int] | None:
        if split != "train":
            return None
        if len(self.speakers) < 2:
            raise ValueError(f"{self.name} needs at least two training speakers, got {self.speakers}")
        return encode_labels(manifest, "speaker", self.speakers, "is not one of the task's training speakers")

    @property
    def train_crop_seconds(self) -> float:
        return self.crop_seconds

    @property
    def test_reference_split(self) -> str | None:
        return "train" if self.subtract_mean else None

    def build_head(self, input_size: int) -> nn.Module:
        extractor = build_extractor(self.extractor, input_size, **self.extractor_options)
        classifier, self._criterion = build_loss(
            self.loss_type, extractor.embedding_size, len(self.speakers), **self.loss_options
        )
        return SpeakerEmbeddingHead(extractor, classifier)

    def loss(self, outputs: SpeakerOutput, targets: torch.Tensor) -> torch.Tensor:
        return self._criterion(outputs.logits, targets)

    def evaluator(self, split: SplitData) -> Evaluator:
        return VerificationEvaluator(split)
