"""The task interface: what differs between downstream problems (labels, head, loss, metrics, test outputs), so
that one LightningModule serves them all; the registry, and helpers the tasks share."""

# No `from __future__ import annotations` here: a task dataclass's type hints are evaluated in its own module
# (jsonargparse, `typing.get_type_hints`), where the names in Task's annotations (ClassVar, ...) may be missing.
import dataclasses
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from upstream.names import Registry, check_options

from ..atomic import atomic_path
from ..data import Manifest, ManifestError, read_manifest
from ..trials import Trials

# Sums a tensor over processes under distributed evaluation; the identity on one process.
Reduce = Callable[[torch.Tensor], torch.Tensor]

# Task names -> classes, for listings and errors; configs name a task by its class path (`task_class`).
TASKS: Registry["Task"] = Registry("task")


def register_task(cls: type["Task"]) -> type["Task"]:
    return TASKS.register(cls.name)(cls)


@dataclass
class SplitData:
    """What an evaluator may need to know about the split it scores: its manifest, and for verification the
    trials (pairs of manifest indices)."""

    name: str
    manifest: Manifest
    trials: Trials | None = None


def public_class_path(cls: type) -> str:
    """`recipes.tasks.<Name>` for a task the package exports (the path configs and checkpoints keep, whichever
    module defines it), else the defining module's path."""
    package = importlib.import_module(__package__)
    if getattr(package, cls.__qualname__, None) is cls:
        return f"{__package__}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def task_class(class_path: str) -> type["Task"]:
    """The task class a config names (`recipes.tasks.EmotionTask`)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        tasks = ", ".join(f"recipes.tasks.{TASKS[name].__name__}" for name in TASKS)
        raise ValueError(f"unknown task class {class_path!r}; choose from {tasks}") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"{class_path!r} is not a recipes.tasks.Task")
    return cls


def task_from_config(config: dict[str, Any]) -> "Task":
    """The task a `Task.config()` (a checkpoint's `hyper_parameters["task"]`) describes; an init argument the task
    does not take (e.g. from an older strata) is a `ValueError` naming those it does."""
    cls = task_class(config["class_path"])
    init_args = config.get("init_args") or {}
    check_options("task", cls.name, init_args, [field.name for field in dataclasses.fields(cls)])
    return cls(**init_args)


@dataclass
class Calibration:
    """What a test measured that later decisions need: verification's EER threshold and training-set mean, ASD's
    reference embeddings and per-section thresholds. `strata test` writes it into the run folder
    (`calibration.safetensors`), `strata export` carries it, `strata predict` decides with it. `values` are plain
    JSON (kept in the file's metadata), `tensors` the arrays."""

    values: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    FILENAME: ClassVar[str] = "calibration.safetensors"

    def save(self, path: str | Path) -> Path:
        """Write to `path` through a temporary name, so a crash never leaves half a file there."""
        from safetensors.torch import save_file

        tensors = {key: value.detach().cpu().contiguous() for key, value in self.tensors.items()}
        with atomic_path(path) as partial:
            save_file(tensors, str(partial), metadata={"values": json.dumps(self.values)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                values = json.loads((handle.metadata() or {}).get("values", "{}"))
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 -- not a dict
        except (SafetensorError, OSError, json.JSONDecodeError) as error:
            raise ValueError(f"could not read the calibration {path}: {error}") from None
        return cls(values, tensors)

    @classmethod
    def in_folder(cls, folder: str | Path) -> "Calibration":
        """The calibration a run or export folder holds; an empty one when it has none (a task needing none)."""
        path = Path(folder) / cls.FILENAME
        return cls.load(path) if path.is_file() else cls()


class Predictor:
    """Turns the head's outputs for a batch (in eval mode) into the task's answer per utterance, as
    `strata predict` writes them: one JSON-able dict each. `entries` are the utterances' manifest entries (ASD
    reads their machine and section)."""

    def __call__(self, outputs: Any, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def join(self, answers: list[dict[str, Any]]) -> dict[str, Any]:
        """One answer from those of consecutive windows of a long input (only tasks with `window_seconds`)."""
        raise NotImplementedError


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

    def calibration(self) -> Calibration:
        """What this test measured that the task's `predictor` decides with (after `compute`); most need none."""
        return Calibration()


class Task:
    """One downstream problem. Every concrete task is a dataclass: its fields are its typed init arguments (what
    LightningCLI lists under `--model.task.help` and checks), its only state besides caches of files they name, so
    `config()` is plain serialisation. The task builds the head; the head owns its loss (`head.loss`)."""

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
        """The head on `[B, T, input_size]` interface features: `head(features, lengths) -> outputs`,
        `head.loss(outputs, targets) -> loss` for a head that trains, and `head.embed(features, lengths) -> [B, E]`
        for `strata embed`."""
        raise NotImplementedError

    def evaluator(self, split: SplitData) -> Evaluator:
        raise NotImplementedError

    # Inputs longer than this are cut into windows for prediction and their answers joined (`Predictor.join`).
    window_seconds: ClassVar[float | None] = None
    # Manifest fields `strata predict` needs beside the audio (no labels): ASD scores a clip against its section.
    prediction_fields: ClassVar[dict[str, type]] = {}

    def predictor(self, calibration: Calibration) -> Predictor:
        """What `strata predict` answers from the head's outputs, deciding with what the test measured."""
        raise NotImplementedError(f"the {self.name} task has no predictions")

    def config(self) -> dict[str, Any]:
        """The task as LightningCLI writes it: class path and init arguments (its fields, as plain data)."""
        return {"class_path": public_class_path(type(self)), "init_args": dataclasses.asdict(self)}


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


def gather_objects(value: Any) -> list[Any]:
    """`value` from every process (in rank order) under distributed evaluation; `[value]` on one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered
