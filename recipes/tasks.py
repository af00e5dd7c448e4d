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

from downstream.asd import PooledEmbedding, build_scorer, gamma_threshold
from downstream.asr import AsrHead, BeamSearchDecoder, CTCHead, CTCHeadConfig, CTCOutput, SpecAugment, greedy_decode
from downstream.classifier import UtteranceClassifier
from downstream.losses import build_loss
from downstream.metrics import (
    cer,
    confusion_matrix,
    dcase_scores,
    eer,
    min_dcf,
    unweighted_accuracy,
    weighted_accuracy,
    wer,
    word_errors,
)
from downstream.speaker import SpeakerEmbeddingHead, SpeakerOutput, build_extractor, cosine_scores

from .data import Manifest, ManifestError, read_manifest
from .tokenizer import Tokenizer, normalize_text, train_from_manifest
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

    def set_reference(self, embeddings: torch.Tensor, manifest: Manifest) -> None:
        """Embeddings `[N, E]` of the task's `test_reference_split` (rows = `manifest` entries), given before the
        test is scored."""
        raise NotImplementedError


class Task:
    """One downstream problem. Subclasses keep their `__init__` arguments as attributes of the same name, so a
    task can be written back into a config (`config()`)."""

    name: ClassVar[str]
    fields: ClassVar[dict[str, type | tuple[type, ...]]] = {}  # manifest fields the task reads, and their types
    monitor: ClassVar[str]  # the validation metric that picks the best checkpoint
    monitor_mode: ClassVar[str] = "max"
    uses_trials: ClassVar[bool] = False  # test scores pairs of utterances (`--data.trials`)
    # init argument -> attribute holding it, where they differ
    config_attributes: ClassVar[dict[str, str]] = {}

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

    @classmethod
    def trains(cls, init_args: dict[str, Any]) -> bool:
        """Whether the task has a head to train; one that does not is tested without a checkpoint."""
        return True

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
        init_args = {
            name: getattr(self, self.config_attributes.get(name, name)) for name in parameters if name != "self"
        }
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


class EmbeddingTable:
    """One vector per utterance at its manifest row, `vectors [N, E]`, and how often each row was filled (`seen`):
    summing the tables of all processes gathers them under distributed evaluation."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.vectors: torch.Tensor | None = None
        self.seen = torch.zeros(size, dtype=torch.long)

    def add(self, indices: torch.Tensor, vectors: torch.Tensor) -> None:
        vectors = vectors.detach().float().cpu()
        if self.vectors is None:
            self.vectors = torch.zeros(self.size, vectors.size(1))
        self.vectors[indices] = vectors
        self.seen[indices] += 1

    def gather(self, reduce: Reduce, what: str) -> None:
        """Sum the tables of every process; `what` names the utterances for the error when none were embedded."""
        if self.vectors is None:
            raise ValueError(f"no {what} were embedded")
        self.vectors, self.seen = reduce(self.vectors), reduce(self.seen)

    @property
    def num_filled(self) -> int:
        return int((self.seen > 0).sum())


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
        self.table = EmbeddingTable(len(split.manifest))
        self.scores: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # subtracted from every embedding before scoring, when set

    def update(self, outputs: SpeakerOutput, batch: dict[str, Any]) -> None:
        self.table.add(batch["indices"], outputs.embeddings)

    def compute(self, reduce: Reduce) -> dict[str, float]:
        self.table.gather(reduce, f"{self.split.name} utterances")
        trials = self.split.trials
        needed = torch.unique(torch.cat([trials.enroll, trials.test]))
        missing = needed[self.table.seen[needed] == 0]
        if missing.numel():
            raise ValueError(
                f"{missing.numel()} utterances named in {trials.path} were not embedded "
                "(evaluation must cover the whole manifest: no limit_val_batches / limit_test_batches)"
            )
        embeddings = self.table.vectors
        self.scores = cosine_scores(embeddings[trials.enroll], embeddings[trials.test], mean=self.mean)
        metrics = {"EER": eer(self.scores, trials.labels)[0]}
        for p_target in self.p_targets:
            metrics[f"minDCF@{p_target:g}"] = min_dcf(self.scores, trials.labels, p_target=p_target)[0]
        return metrics

    @property
    def num_utterances(self) -> int:
        return self.table.num_filled

    def details(self) -> dict[str, Any]:
        return {"num_trials": len(self.split.trials), "mean_subtraction": self.mean is not None}

    def set_reference(self, embeddings: torch.Tensor, manifest: Manifest) -> None:
        self.mean = embeddings.mean(0)

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


def gather_objects(value: Any) -> list[Any]:
    """`value` from every process (in rank order) under distributed evaluation; `[value]` on one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


class TranscriptionEvaluator(Evaluator):
    """Decodes every utterance (greedy, or the task's beam search at test) and scores the hypotheses against the
    normalised references with jiwer: WER, CER and the word error counts; writes `hyp.txt` / `ref.txt`."""

    def __init__(self, task: AsrTask, split: SplitData, beam: bool) -> None:
        self.task = task
        self.split = split
        self.beam = beam
        self.hypotheses: dict[int, str] = {}  # manifest index -> text
        self.greedy: dict[int, str] = {}
        self.counts: dict[str, int] = {}

    def update(self, outputs: CTCOutput, batch: dict[str, Any]) -> None:
        log_probs, lengths = outputs.log_probs.detach().float().cpu(), outputs.lengths.cpu()
        indices = batch["indices"].tolist()
        greedy = [self.task.tokenizer.decode(ids) for ids in greedy_decode(log_probs, lengths)]
        self.greedy.update(zip(indices, greedy, strict=True))
        if self.beam:
            best = self.task.beam_decoder.decode(log_probs, lengths)
            self.hypotheses.update(zip(indices, (self.task.tokenizer.decode(ids) for ids in best), strict=True))
        else:
            self.hypotheses.update(zip(indices, greedy, strict=True))

    def _score(self, hypotheses: dict[int, str]) -> tuple[list[str], list[str], list[int]]:
        order = sorted(hypotheses)
        references = [self.task.normalize(self.split.manifest.entries[i]["text"]) for i in order]
        return references, [hypotheses[i] for i in order], order

    def compute(self, reduce: Reduce) -> dict[str, float]:
        # Transcripts are strings: gathered as objects, not summed.
        for name in ("hypotheses", "greedy"):
            merged: dict[int, str] = {}
            for part in gather_objects(getattr(self, name)):
                merged.update(part)
            setattr(self, name, merged)
        if not self.hypotheses:
            raise ValueError(f"no {self.split.name} utterances were decoded")
        references, hypotheses, _ = self._score(self.hypotheses)
        words = word_errors(references, hypotheses)
        self.counts = {k: words[k] for k in ("substitutions", "deletions", "insertions")}
        metrics = {"WER": wer(references, hypotheses), "CER": cer(references, hypotheses)}
        if self.beam:
            references, greedy, _ = self._score(self.greedy)
            metrics.update(greedy_WER=wer(references, greedy), greedy_CER=cer(references, greedy))
        return metrics

    @property
    def num_utterances(self) -> int:
        return len(self.hypotheses)

    def details(self) -> dict[str, Any]:
        return {**self.counts, "decoder": "beam" if self.beam else "greedy"}

    def write(self, run_dir: Path, title: str) -> list[Path]:
        references, hypotheses, order = self._score(self.hypotheses)
        ids = [self.split.manifest.entries[i]["id"] for i in order]
        written = []
        for name, texts in (("hyp.txt", hypotheses), ("ref.txt", references)):
            path = run_dir / name
            path.write_text("".join(f"{i} {text}\n" for i, text in zip(ids, texts, strict=True)))
            written.append(path)
        return written


@register_task
class AsrTask(Task):
    """Speech recognition as SUPERB defines it: a BiLSTM CTC head on the interface features, sentencepiece tokens
    (blank = id 0), SpecAugment-style masking while training; greedy WER for validation, greedy or beam search
    (torchaudio's CTC decoder, optional n-gram LM; needs flashlight-text) at test.

    `tokenizer` is a sentencepiece model file; when it is unset or missing, `strata fit` trains one of
    `token_type` (char, bpe, unigram; `vocab_size` for the latter two) on the training manifest's normalised text
    and records its path. Training drops, with a list in the run directory, utterances with an empty transcript,
    with characters the tokenizer lacks, and those with fewer frames than CTC needs for their labels.
    """

    name = "asr"
    fields = {"text": str}
    monitor = "WER"
    monitor_mode = "min"
    config_attributes = {"tokenizer": "tokenizer_path"}

    def __init__(
        self,
        tokenizer: str | None = None,
        token_type: str = "char",
        vocab_size: int | None = None,
        normalizer: str = "letters_apostrophes",
        projection_size: int = 0,
        hidden_size: int = 1024,
        num_layers: int = 2,
        dropout: float = 0.2,
        time_masks: int = 2,
        time_width: float = 0.05,
        feature_masks: int = 2,
        feature_width: float = 0.1,
        decoder: str = "greedy",
        beam_size: int = 50,
        lm: str | None = None,
        lexicon: str | None = None,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
    ) -> None:
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be greedy or beam, got {decoder!r}")
        self.tokenizer_path = tokenizer
        self.token_type, self.vocab_size, self.normalizer = token_type, vocab_size, normalizer
        self.projection_size, self.hidden_size, self.num_layers, self.dropout = (
            projection_size, hidden_size, num_layers, dropout
        )  # fmt: skip
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width
        self.decoder, self.beam_size = decoder, beam_size
        self.lm, self.lexicon, self.lm_weight, self.word_score = lm, lexicon, lm_weight, word_score
        self._tokenizer: Tokenizer | None = None
        self._beam_decoder: BeamSearchDecoder | None = None
        if decoder == "beam" and tokenizer is not None:
            self.beam_decoder  # noqa: B018 -- a missing flashlight-text is an error now, not after training

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if self.tokenizer_path is None:
                raise ValueError(
                    "the asr task has no tokenizer: pass --model.task.init_args.tokenizer PATH "
                    "(`strata tokenizer` makes one), or run `strata fit`, which trains one from --data.train"
                )
            self._tokenizer = Tokenizer(self.tokenizer_path)
        return self._tokenizer

    @property
    def beam_decoder(self) -> BeamSearchDecoder:
        if self._beam_decoder is None:
            self._beam_decoder = BeamSearchDecoder(
                self.tokenizer.tokens,
                beam_size=self.beam_size,
                lm=self.lm,
                lexicon=self.lexicon,
                lm_weight=self.lm_weight,
                word_score=self.word_score,
            )
        return self._beam_decoder

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.normalizer)

    @classmethod
    def complete_config(cls, init_args, train, checkpoint_args, run_dir=None):
        path = init_args.get("tokenizer")
        if path is None and checkpoint_args:
            path = checkpoint_args.get("tokenizer")
        if path is None and run_dir is not None:
            path = str(Path(run_dir) / "tokenizer.model")
        if path is None or Path(path).is_file():
            return {**init_args, "tokenizer": path}
        if train is None:
            raise ValueError(f"tokenizer {path} does not exist and there is no --data.train to train it from")
        tokenizer = train_from_manifest(
            train,
            path,
            model_type=init_args.get("token_type", "char"),
            vocab_size=init_args.get("vocab_size"),
            normalizer=init_args.get("normalizer", "letters_apostrophes"),
        )
        print(f"trained a {tokenizer.vocab_size}-token tokenizer on {train} -> {path}")
        return {**init_args, "tokenizer": str(path)}

    def _labels(self, entry: dict[str, Any]) -> tuple[str, list[int]]:
        text = self.normalize(entry["text"])
        return text, self.tokenizer.encode(text)

    def drop(self, manifest: Manifest, split: str, frame_rate: float) -> dict[int, str]:
        dropped = {}
        for i, entry in enumerate(manifest.entries):
            text, ids = self._labels(entry)
            if not text:
                dropped[i] = "empty transcript"
            elif split != "train":
                continue  # scored as they are: what the model cannot spell counts as errors
            elif self.tokenizer.unknown_characters(text):
                dropped[i] = "characters outside the tokenizer"
            elif int(entry["duration"] * frame_rate) < ctc_frames_needed(ids):
                dropped[i] = "fewer frames than CTC needs for the transcript"
        return dropped

    def targets(self, manifest: Manifest, split: str) -> list[list[int]]:
        return [self._labels(entry)[1] for entry in manifest.entries]

    def collate_targets(self, targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        padded = torch.zeros(len(targets), max(int(lengths.max()), 1), dtype=torch.long)
        for row, ids in enumerate(targets):
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return padded, lengths

    def build_head(self, input_size: int) -> nn.Module:
        augment = SpecAugment(self.time_masks, self.time_width, self.feature_masks, self.feature_width)
        config = CTCHeadConfig(self.projection_size, self.hidden_size, self.num_layers, self.dropout)
        return AsrHead(augment, CTCHead(input_size, self.tokenizer.vocab_size, config))

    def loss(self, outputs: CTCOutput, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        labels, label_lengths = targets
        # zero_infinity: an utterance CTC cannot align (kept in valid/test) adds nothing instead of inf.
        return nn.functional.ctc_loss(
            outputs.log_probs.transpose(0, 1).float(),
            labels,
            outputs.lengths,
            label_lengths,
            blank=self.tokenizer.blank_id,
            reduction="mean",
            zero_infinity=True,
        )

    def evaluator(self, split: SplitData) -> Evaluator:
        return TranscriptionEvaluator(self, split, beam=self.decoder == "beam" and split.name == "test")


def ctc_frames_needed(ids: list[int]) -> int:
    """The fewest frames CTC can align `ids` to: one per label, plus a blank between repeated labels."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)


def asd_class(entry: dict[str, Any]) -> str:
    """The auxiliary class of a clip: machine, section and its attributes (`fan/00/vel_8`)."""
    attributes = "_".join(f"{key}_{value}" for key, value in sorted(entry.get("attributes", {}).items()))
    return f"{entry['machine']}/{entry['section']}/{attributes}"


class AnomalyEvaluator(Evaluator):
    """Scores test clips against the normal training clips of their machine and section (`scorer`, source and
    target separately), then evaluates as the DCASE 2023 evaluator does; decisions threshold each section at the
    90th percentile of a gamma distribution fitted to training scores (each half scored against the other)."""

    def __init__(self, task: AsdTask, split: SplitData) -> None:
        self.task, self.split = task, split
        self.table = EmbeddingTable(len(split.manifest))
        self.reference: torch.Tensor | None = None
        self.reference_manifest: Manifest | None = None
        self.scores = torch.zeros(len(split.manifest))
        self.thresholds: dict[tuple[str, str], float] = {}

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        self.table.add(batch["indices"], outputs.embeddings if isinstance(outputs, SpeakerOutput) else outputs)

    def set_reference(self, embeddings: torch.Tensor, manifest: Manifest) -> None:
        self.reference, self.reference_manifest = embeddings, manifest

    def _sections(self, entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, entry in enumerate(entries):
            groups.setdefault((entry["machine"], entry["section"]), []).append(i)
        return groups

    def _fit(self, rows: list[int], entries: list[dict[str, Any]]) -> Any:
        source = [i for i in rows if entries[i].get("domain") != "target"]
        target = [i for i in rows if entries[i].get("domain") == "target"]
        scorer = build_scorer(self.task.scorer, **self.task.scorer_options)
        return scorer.fit(self.reference[source], self.reference[target] if target else None)

    def compute(self, reduce: Reduce) -> dict[str, float]:
        if self.reference is None:
            raise ValueError("anomaly scoring needs the training clips' embeddings")
        self.table.gather(reduce, "test clips")
        if self.split.name != "test":
            raise ValueError("anomaly scores are computed at test only")
        train = self.reference_manifest
        train_groups = self._sections(train.entries)
        entries = self.split.manifest.entries
        for key, rows in self._sections(entries).items():
            if key not in train_groups:
                raise ValueError(f"no training clips of machine {key[0]} section {key[1]} in {train.path}")
            reference_rows = train_groups[key]
            self.scores[rows] = self._fit(reference_rows, train.entries).score(self.table.vectors[rows]).float()
            halves = [reference_rows[::2], reference_rows[1::2]]
            cross = [self._fit(halves[1 - h], train.entries).score(self.reference[halves[h]]) for h in (0, 1)]
            self.thresholds[key] = gamma_threshold(torch.cat(cross).clamp(min=1e-6), self.task.decision_percentile)
        labels = [1 if e["label"] == "anomaly" else 0 for e in entries]
        return dcase_scores(
            self.scores, labels, [e["domain"] for e in entries], [e["machine"] for e in entries],
            [e["section"] for e in entries],
        )  # fmt: skip

    @property
    def num_utterances(self) -> int:
        return self.table.num_filled

    def write(self, run_dir: Path, title: str) -> list[Path]:
        from .plots import plot_roc

        entries, written = self.split.manifest.entries, []
        for (machine, section), rows in self._sections(entries).items():
            names = [Path(entries[i]["audio"]).name for i in rows]
            scores = self.scores[rows].tolist()
            threshold = self.thresholds[(machine, section)]
            for kind, values in (("anomaly_score", [f"{s:.6f}" for s in scores]),
                                 ("decision_result", [str(int(s > threshold)) for s in scores])):  # fmt: skip
                path = run_dir / f"{kind}_{machine}_section_{section}_test.csv"
                path.write_text("".join(f"{n},{v}\n" for n, v in zip(names, values, strict=True)))
                written.append(path)
        for machine in sorted({e["machine"] for e in entries}):
            rows = [i for i, e in enumerate(entries) if e["machine"] == machine]
            labels = [1 if entries[i]["label"] == "anomaly" else 0 for i in rows]
            domains = [entries[i]["domain"] for i in rows]
            path = run_dir / f"roc_{machine}.png"
            written.append(plot_roc(self.scores[rows], labels, domains, path, title=f"{title}: {machine}"))
        return written


@register_task
class AsdTask(Task):
    """First-shot unsupervised anomalous sound detection (DCASE 2023 Task 2 style) on SSL features.

    `head: embedding` trains a pooled 256-d embedding on normal training clips through an auxiliary AAM
    classifier of machine + section + attributes (`classes`, from the training manifest when unset); `head: none`
    is the frozen-embedding baseline (the pooled interface features, no training: `strata test` needs no
    checkpoint). At test the training clips are embedded and each test clip is scored against those of its
    machine and section by `scorer` (knn: cosine distance to the nearest source and target clips, the smaller;
    kmeans: 16 source centres plus every target clip). Validation reports the auxiliary accuracy on normal clips.
    """

    name = "asd"
    fields = {"machine": str, "section": str, "attributes": dict}
    monitor = "accuracy"

    def __init__(
        self,
        classes: list[str] | None = None,
        head: str = "embedding",
        embedding_size: int = 256,
        pooling: str = "mean_std",
        loss_type: str = "aam",
        margin: float = 0.2,
        scale: float = 30.0,
        scorer: str = "knn",
        scorer_options: dict[str, Any] | None = None,
        decision_percentile: float = 0.9,
    ) -> None:
        if head not in ("embedding", "none"):
            raise ValueError(f"head must be embedding or none (the frozen-embedding baseline), got {head!r}")
        self.classes = list(classes or [])
        self.head, self.embedding_size, self.pooling = head, embedding_size, pooling
        self.loss_type, self.margin, self.scale = loss_type, margin, scale
        self.scorer, self.scorer_options = scorer, dict(scorer_options or {})
        build_scorer(scorer, **self.scorer_options)  # an unknown scorer or option fails now
        self.decision_percentile = decision_percentile
        self._criterion: nn.Module | None = None

    @classmethod
    def trains(cls, init_args: dict[str, Any]) -> bool:
        return init_args.get("head", "embedding") != "none"

    @classmethod
    def complete_config(cls, init_args, train, checkpoint_args, run_dir=None):
        if init_args.get("classes") or not cls.trains(init_args):
            return init_args
        if checkpoint_args and checkpoint_args.get("classes"):
            return {**init_args, "classes": list(checkpoint_args["classes"])}
        if train is None:
            raise ValueError("asd needs the training clips' classes: pass --data.train or a checkpoint")
        manifest = read_manifest(train, fields=cls.fields, check_audio=False)
        normal = [e for e in manifest.entries if e.get("label", "normal") == "normal"]
        return {**init_args, "classes": sorted({asd_class(e) for e in normal})}

    def fields_for(self, split: str) -> dict[str, type | tuple[type, ...]]:
        extra = {"domain": str, "label": str} if split == "test" else {"domain": str}
        return {**self.fields, **extra}

    def drop(self, manifest: Manifest, split: str, frame_rate: float) -> dict[int, str]:
        if split == "test":
            return {}
        # Unsupervised: only normal clips train the embedding and form the scorer's reference.
        return {i: "anomalous clip" for i, e in enumerate(manifest.entries) if e.get("label") == "anomaly"}

    def targets(self, manifest: Manifest, split: str) -> list[int] | None:
        if split == "test" or self.head == "none":
            return None
        index = {label: i for i, label in enumerate(self.classes)}
        targets = []
        for i, entry in enumerate(manifest.entries):
            label = asd_class(entry)
            if label not in index:
                raise ManifestError(f"{manifest.where(i)}: class {label!r} has no training clips")
            targets.append(index[label])
        return targets

    @property
    def test_reference_split(self) -> str:
        return "train"

    def build_head(self, input_size: int) -> nn.Module:
        if self.head == "none":
            return PooledEmbedding(input_size, embedding_size=0, pooling=self.pooling)
        extractor = PooledEmbedding(input_size, self.embedding_size, self.pooling)
        options = {"margin": self.margin, "scale": self.scale} if self.loss_type == "aam" else {}
        classifier, self._criterion = build_loss(self.loss_type, extractor.embedding_size, len(self.classes), **options)
        return SpeakerEmbeddingHead(extractor, classifier)

    def loss(self, outputs: SpeakerOutput, targets: torch.Tensor) -> torch.Tensor:
        return self._criterion(outputs.logits, targets)

    def evaluator(self, split: SplitData) -> Evaluator:
        if split.name == "test":
            return AnomalyEvaluator(self, split)
        return AuxiliaryAccuracyEvaluator(self.classes)


class AuxiliaryAccuracyEvaluator(AccuracyEvaluator):
    """Validation of the anomaly embedding: how well it tells machine, section and attributes apart."""

    def update(self, outputs: SpeakerOutput, batch: dict[str, Any]) -> None:
        super().update(outputs.logits, batch)
