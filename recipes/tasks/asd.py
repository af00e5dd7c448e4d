"""Anomalous sound detection (DCASE 2023 Task 2 style): an embedding of normal clips, scored by nearest neighbours."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from downstream.asd import (
    SCORERS,
    FeatExHead,
    FeatExOutput,
    KMeansConfig,
    KnnConfig,
    PooledEmbedding,
    SpectrumEmbedding,
    build_scorer,
    gamma_threshold,
)
from downstream.embedding import EmbeddingHead, EmbeddingOutput
from downstream.losses import build_loss
from downstream.metrics import dcase_scores
from upstream.names import Registry, as_config

from .. import atomic
from ..data import Manifest, ManifestError, read_manifest
from .base import Calibration, EmbeddingTable, Evaluator, Predictor, Reduce, SplitData, Task, register_task
from .classification import AccuracyEvaluator


def asd_class(entry: dict[str, Any]) -> str:
    """The auxiliary class of a clip: machine, section and its attributes (`fan/00/vel_8`)."""
    attributes = "_".join(f"{key}_{value}" for key, value in sorted(entry.get("attributes", {}).items()))
    return f"{entry['machine']}/{entry['section']}/{attributes}"


def ground_truth_given(manifest: Manifest) -> bool:
    """Whether the test clips carry their ground truth (`label` normal / anomaly and `domain` source / target):
    all of them do (development data, or evaluation data labelled from the published CSVs) or none do (evaluation
    clips before the ground truth is out). A mix, or a label without a domain, is an error naming the line."""
    has_label = ["label" in entry for entry in manifest.entries]
    if not any(has_label):
        return False
    for i, entry in enumerate(manifest.entries):
        if not has_label[i]:
            raise ManifestError(
                f"{manifest.where(i)}: clip has no label while others have one; label every test clip (from the "
                "ground-truth CSV) or none"
            )
        if entry["label"] not in ("normal", "anomaly"):
            raise ManifestError(f"{manifest.where(i)}: label must be normal or anomaly, got {entry['label']!r}")
        if entry.get("domain") not in ("source", "target"):
            raise ManifestError(
                f"{manifest.where(i)}: a labelled clip needs its domain (source or target), got "
                f"{entry.get('domain')!r}; evaluation clips take it from the ground-truth domain CSV"
            )
    return True


def fit_scorer(task: AsdTask, source: torch.Tensor, target: torch.Tensor | None) -> Any:
    """The task's scorer fitted on a section's normal training embeddings, source and target domain."""
    scorer = build_scorer(task.scorer, **asdict(task.scorer_config))
    return scorer.fit(source, target if target is not None and len(target) else None)


def reference_key(machine: str, section: str, domain: str) -> str:
    """Where a section's training embeddings of one domain are kept in the calibration."""
    return f"reference/{machine}/{section}/{domain}"


class AnomalyPredictor(Predictor):
    """A clip's `score` against the training clips of its machine and section (the manifest's `machine` and
    `section`), with the test's scorer, and its `decision` (`anomaly` above the section's gamma threshold)."""

    def __init__(self, task: AsdTask, calibration: Calibration) -> None:
        self.task, self.calibration = task, calibration
        self.thresholds: dict[str, float] = calibration.values.get("thresholds", {})
        if not self.thresholds:
            raise ValueError("anomaly scoring needs the training clips' embeddings and thresholds: run `strata test`")
        self.scorers: dict[str, Any] = {}

    def _scorer(self, section: str) -> Any:
        if section not in self.scorers:
            if section not in self.thresholds:
                known = ", ".join(sorted(self.thresholds))
                raise ValueError(f"no training clips of machine/section {section}; this model knows {known}")
            machine, number = section.split("/", 1)
            source = self.calibration.tensors[reference_key(machine, number, "source")]
            target = self.calibration.tensors.get(reference_key(machine, number, "target"))
            self.scorers[section] = fit_scorer(self.task, source, target)
        return self.scorers[section]

    def __call__(self, outputs: Any, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        embeddings = getattr(outputs, "embeddings", outputs).detach().float().cpu()
        answers = []
        for row, entry in zip(embeddings, entries, strict=True):
            if "machine" not in entry or "section" not in entry:
                raise ValueError(f"{entry['id']}: anomaly scoring needs the clip's machine and section")
            section = f"{entry['machine']}/{entry['section']}"
            score = float(self._scorer(section).score(row[None]).float()[0])
            decision = "anomaly" if score > self.thresholds[section] else "normal"
            answers.append({"machine": entry["machine"], "section": entry["section"], "score": score,
                            "decision": decision})  # fmt: skip
        return answers


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
        self.labelled = False

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        self.table.add(batch["indices"], getattr(outputs, "embeddings", outputs))

    def set_reference(self, embeddings: torch.Tensor, manifest: Manifest) -> None:
        self.reference, self.reference_manifest = embeddings, manifest

    def _sections(self, entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, entry in enumerate(entries):
            groups.setdefault((entry["machine"], entry["section"]), []).append(i)
        return groups

    def _domains(self, rows: list[int], entries: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference embeddings of `rows`, source and target domain (the latter possibly empty)."""
        source = [i for i in rows if entries[i].get("domain") != "target"]
        target = [i for i in rows if entries[i].get("domain") == "target"]
        return self.reference[source], self.reference[target]

    def _fit(self, rows: list[int], entries: list[dict[str, Any]]) -> Any:
        return fit_scorer(self.task, *self._domains(rows, entries))

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
        self.labelled = ground_truth_given(self.split.manifest)
        if not self.labelled:  # evaluation clips without ground truth: scores and decisions only
            return {}
        labels = [1 if e["label"] == "anomaly" else 0 for e in entries]
        return dcase_scores(
            self.scores, labels, [e["domain"] for e in entries], [e["machine"] for e in entries],
            [e["section"] for e in entries],
        )  # fmt: skip

    @property
    def num_utterances(self) -> int:
        return self.table.num_filled

    def calibration(self) -> Calibration:
        """Each tested section's normal training embeddings (by domain) and decision threshold: what scoring a new
        clip of that machine and section takes."""
        train = self.reference_manifest
        tensors, thresholds = {}, {}
        for (machine, section), rows in self._sections(train.entries).items():
            if (machine, section) not in self.thresholds:
                continue
            source, target = self._domains(rows, train.entries)
            tensors[reference_key(machine, section, "source")] = source
            if len(target):
                tensors[reference_key(machine, section, "target")] = target
            thresholds[f"{machine}/{section}"] = self.thresholds[(machine, section)]
        return Calibration({"thresholds": thresholds}, tensors)

    def details(self) -> dict[str, Any]:
        scored = "scored" if self.labelled else "unlabelled: anomaly scores and decisions only, no metrics"
        return {"scorer": self.task.scorer, "test_labels": scored}

    def write(self, run_dir: Path, title: str) -> list[Path]:
        from ..plots import plot_roc

        entries, written = self.split.manifest.entries, []
        for (machine, section), rows in self._sections(entries).items():
            names = [Path(entries[i]["audio"]).name for i in rows]
            scores = self.scores[rows].tolist()
            threshold = self.thresholds[(machine, section)]
            for kind, values in (("anomaly_score", [f"{s:.6f}" for s in scores]),
                                 ("decision_result", [str(int(s > threshold)) for s in scores])):  # fmt: skip
                path = run_dir / f"{kind}_{machine}_section_{section}_test.csv"
                atomic.write_text(path, "".join(f"{n},{v}\n" for n, v in zip(names, values, strict=True)))
                written.append(path)
        for machine in sorted({e["machine"] for e in entries}) if self.labelled else []:
            rows = [i for i, e in enumerate(entries) if e["machine"] == machine]
            labels = [1 if entries[i]["label"] == "anomaly" else 0 for i in rows]
            domains = [entries[i]["domain"] for i in rows]
            path = run_dir / f"roc_{machine}.png"
            written.append(plot_roc(self.scores[rows], labels, domains, path, title=f"{title}: {machine}"))
        return written


# How AsdTask embeds a clip: `embedding` -> a builder of the head from the task and the interface's width.
ASD_EMBEDDINGS: Registry[nn.Module] = Registry("asd embedding")


@ASD_EMBEDDINGS.register("trained")
def trained_embedding(task: AsdTask, input_size: int) -> nn.Module:
    """A pooled `embedding_size` projection trained through the auxiliary classifier."""
    extractor = PooledEmbedding(input_size, task.embedding_size, task.pooling)
    return EmbeddingHead(extractor, *task.auxiliary_loss(extractor.embedding_size, len(task.classes)))


@ASD_EMBEDDINGS.register("featex")
def featex_embedding(task: AsdTask, input_size: int) -> nn.Module:
    """Feature exchange: half the embedding from the pooled features, half from the spectrum; twice the classes."""
    half = task.embedding_size // 2
    branches = PooledEmbedding(input_size, half, task.pooling), SpectrumEmbedding(task.embedding_size - half)
    loss = task.auxiliary_loss(task.embedding_size, 2 * len(task.classes))
    return FeatExHead(*branches, *loss, task.exchange_probability)


@ASD_EMBEDDINGS.register("frozen")
def frozen_embedding(task: AsdTask, input_size: int) -> nn.Module:
    """The pooled interface features themselves: no parameters, nothing to train."""
    return PooledEmbedding(input_size, embedding_size=0, pooling=task.pooling)


@register_task
@dataclass(eq=False)
class AsdTask(Task):
    """First-shot unsupervised anomalous sound detection (DCASE 2023 Task 2 style) on SSL features.

    `embedding` says how a clip is embedded (`ASD_EMBEDDINGS`):
    - `trained`: a pooled `embedding_size` (256) projection trained on normal training clips through an auxiliary
      classifier (`loss_type`, AAM by default) of machine + section + attributes (`classes`, from the training
      manifest when unset);
    - `featex`: the same trained with feature exchange (`downstream.asd.FeatExHead`): half the embedding from the
      pooled features, half from the clip's magnitude spectrum, the halves of clips swapped with
      `exchange_probability`;
    - `frozen`: the pooled interface features, no training (`strata test` needs no checkpoint): the baseline.
    At test the training clips are embedded and each test clip is scored against those of its machine and section
    by `scorer` (knn: cosine distance to the nearest source and target clips, the smaller; kmeans: 16 source
    centres plus every target clip), with the options in the field of the same name (`knn`, `kmeans`).
    Validation reports the auxiliary accuracy on normal clips. Unlabelled test clips (DCASE evaluation data before
    its ground truth) are scored without metrics.
    """

    name = "asd"
    fields = {"machine": str, "section": str, "attributes": dict}
    prediction_fields = {"machine": str, "section": str}
    monitor = "accuracy"

    classes: list[str] | None = None
    embedding: Literal["trained", "featex", "frozen"] = "trained"
    embedding_size: int = 256
    pooling: str = "mean_std"
    loss_type: str = "aam"
    margin: float = 0.2
    scale: float = 30.0
    exchange_probability: float = 0.5
    scorer: Literal["knn", "kmeans"] = "knn"
    knn: KnnConfig = field(default_factory=KnnConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    decision_percentile: float = 0.9

    def __post_init__(self) -> None:
        self.classes = list(self.classes or [])
        ASD_EMBEDDINGS[self.embedding]  # an unknown choice fails now, naming the valid ones
        self.knn = as_config(KnnConfig, self.knn, SCORERS.kind, "knn")
        self.kmeans = as_config(KMeansConfig, self.kmeans, SCORERS.kind, "kmeans")
        build_scorer(self.scorer, **asdict(self.scorer_config))  # an unknown scorer or a bad option fails now

    @property
    def scorer_config(self) -> KnnConfig | KMeansConfig:
        """The options of the chosen scorer."""
        return {"knn": self.knn, "kmeans": self.kmeans}[self.scorer]

    @classmethod
    def trains(cls, init_args: dict[str, Any]) -> bool:
        return init_args.get("embedding", "trained") != "frozen"

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
        # Test clips may be unlabelled evaluation clips (no label, no domain): scored, not evaluated.
        return self.fields if split == "test" else {**self.fields, "domain": str}

    def drop(self, manifest: Manifest, split: str, frame_rate: float) -> dict[int, str]:
        if split == "test":
            return {}
        # Unsupervised: only normal clips train the embedding and form the scorer's reference.
        return {i: "anomalous clip" for i, e in enumerate(manifest.entries) if e.get("label") == "anomaly"}

    def targets(self, manifest: Manifest, split: str) -> list[int] | None:
        if split == "test":
            ground_truth_given(manifest)  # a half-labelled test manifest fails at load, not after scoring
            return None
        if self.embedding == "frozen":  # nothing trains, so no auxiliary classes
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

    def auxiliary_loss(self, embedding_size: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
        """The auxiliary (classifier, criterion) pair on `embedding_size`-d embeddings (`loss_type`)."""
        options = {"margin": self.margin, "scale": self.scale} if self.loss_type == "aam" else {}
        return build_loss(self.loss_type, embedding_size, num_classes, **options)

    def build_head(self, input_size: int) -> nn.Module:
        build: Callable[[AsdTask, int], nn.Module] = ASD_EMBEDDINGS[self.embedding]
        return build(self, input_size)

    def evaluator(self, split: SplitData) -> Evaluator:
        if split.name == "test":
            return AnomalyEvaluator(self, split)
        return AuxiliaryAccuracyEvaluator(self.classes)

    def predictor(self, calibration: Calibration) -> Predictor:
        return AnomalyPredictor(self, calibration)


class AuxiliaryAccuracyEvaluator(AccuracyEvaluator):
    """Validation of the anomaly embedding: how well it tells machine, section and attributes apart."""

    def update(self, outputs: EmbeddingOutput | FeatExOutput, batch: dict[str, Any]) -> None:
        # FeatEx's logits also score exchanged pairs (the second half); a clip's own class is in the first.
        super().update(outputs.logits[:, : len(self.classes)], batch)
