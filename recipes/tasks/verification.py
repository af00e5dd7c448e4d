"""Speaker verification: an embedding extractor trained as a speaker classifier, scored on trials (EER, minDCF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from downstream.embedding import EmbeddingHead, EmbeddingOutput
from downstream.losses import build_loss
from downstream.metrics import eer, min_dcf
from downstream.speaker import EXTRACTORS, EcapaConfig, XVectorConfig, cosine_scores
from upstream.names import as_config

from .. import atomic
from ..data import Manifest
from .base import (
    Calibration,
    EmbeddingTable,
    Evaluator,
    Predictor,
    Reduce,
    SplitData,
    Task,
    encode_labels,
    register_task,
    speakers_from_data,
)


class EmbeddingPredictor(Predictor):
    """The utterance's speaker embedding (`embedding`, as the test scores it: before any mean subtraction)."""

    def __call__(self, outputs: EmbeddingOutput, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"embedding": row.tolist()} for row in outputs.embeddings.detach().float().cpu()]


def verification_score(first: torch.Tensor, second: torch.Tensor, calibration: Calibration) -> float:
    """The test's cosine score of two embeddings `[E]`, after subtracting the training mean when the test did."""
    mean = calibration.tensors.get("mean")
    return float(cosine_scores(first[None].float(), second[None].float(), mean=mean)[0])


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
        self.thresholds: dict[str, float] = {}  # metric -> the score threshold at which it was reached

    def update(self, outputs: EmbeddingOutput, batch: dict[str, Any]) -> None:
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
        metrics, self.thresholds = {}, {}
        metrics["EER"], self.thresholds["EER"] = eer(self.scores, trials.labels)
        for p_target in self.p_targets:
            name = f"minDCF@{p_target:g}"
            metrics[name], self.thresholds[name] = min_dcf(self.scores, trials.labels, p_target=p_target)
        return metrics

    @property
    def num_utterances(self) -> int:
        return self.table.num_filled

    def details(self) -> dict[str, Any]:
        return {"num_trials": len(self.split.trials), "mean_subtraction": self.mean is not None}

    def set_reference(self, embeddings: torch.Tensor, manifest: Manifest) -> None:
        self.mean = embeddings.mean(0)

    def calibration(self) -> Calibration:
        """The thresholds of the EER and minDCF operating points (a trial is "same speaker" when its score is at
        least the threshold; `strata verify` decides at the EER's) and the subtracted mean, if any."""
        tensors = {} if self.mean is None else {"mean": self.mean}
        return Calibration({"thresholds": self.thresholds, "decision_threshold": "EER"}, tensors)

    def write(self, run_dir: Path, title: str) -> list[Path]:
        from ..plots import plot_det

        trials, ids = self.split.trials, self.split.manifest.ids
        path = run_dir / "scores.txt"
        rows = zip(
            trials.labels.tolist(), trials.enroll.tolist(), trials.test.tolist(), self.scores.tolist(), strict=True
        )
        atomic.write_text(path, "".join(f"{label} {ids[e]} {ids[t]} {score:.6f}\n" for label, e, t, score in rows))
        return [path, plot_det(self.scores, trials.labels, run_dir / "det.png", title=title)]


@register_task
@dataclass(eq=False)
class SpeakerVerificationTask(Task):
    """Speaker verification as the speaker-recognition community runs it: an embedding extractor (ECAPA-TDNN or
    x-vector) trained on random `crop_seconds` crops to classify the training speakers with an additive angular
    margin (AAM) softmax; valid and test embed whole utterances and score trials by cosine similarity.

    `extractor` picks the extractor; its sizes are the matching field, `ecapa` (`downstream.speaker.EcapaConfig`)
    or `xvector` (`XVectorConfig`). Validation scores `--data.valid_trials`, or balanced trials drawn from the valid
    manifest's speakers; test scores `--data.trials`. `speakers` (the training classes) come from the training
    manifest when unset. `subtract_mean` makes the test subtract the mean embedding of the training set (its crops,
    embedded once more with the trained model; `--data.train` must be given) before cosine scoring.
    """

    name = "speaker_verification"
    fields = {"speaker": str}
    monitor = "EER"
    monitor_mode = "min"
    uses_trials = True

    speakers: list[str] | None = None
    extractor: Literal["ecapa", "xvector"] = "ecapa"
    ecapa: EcapaConfig = field(default_factory=EcapaConfig)
    xvector: XVectorConfig = field(default_factory=XVectorConfig)
    loss_type: str = "aam"
    margin: float = 0.2
    scale: float = 30.0
    crop_seconds: float = 3.0
    subtract_mean: bool = False

    def __post_init__(self) -> None:
        self.speakers = list(self.speakers or [])
        if len(set(self.speakers)) != len(self.speakers):
            raise ValueError("speaker_verification speakers must be distinct")
        if self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {self.crop_seconds}")
        EXTRACTORS[self.extractor]  # an unknown extractor fails now, naming the valid ones
        self.ecapa = as_config(EcapaConfig, self.ecapa, EXTRACTORS.kind, "ecapa")
        self.xvector = as_config(XVectorConfig, self.xvector, EXTRACTORS.kind, "xvector")

    @property
    def extractor_config(self) -> EcapaConfig | XVectorConfig:
        """The sizes of the chosen extractor."""
        return {"ecapa": self.ecapa, "xvector": self.xvector}[self.extractor]

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
        extractor = EXTRACTORS[self.extractor](input_size, self.extractor_config)
        loss = build_loss(self.loss_type, extractor.embedding_size, len(self.speakers), **self.loss_options)
        return EmbeddingHead(extractor, *loss)

    def evaluator(self, split: SplitData) -> Evaluator:
        return VerificationEvaluator(split)

    def predictor(self, calibration: Calibration) -> Predictor:
        return EmbeddingPredictor()
