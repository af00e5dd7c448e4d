"""DistilHuBERT-style distillation (Chang, Yang & Lee, ICASSP 2022): a shallow copy of a transformers encoder learns
to predict several of its teacher's hidden layers from its own last layer, one linear head per predicted layer.

`DistillModule` holds the frozen teacher, the student and the heads; `DistillDataModule` batches the audio and, when
given a `strata extract` folder of the teacher (`teacher_cache`), the teacher's targets read from it, so that the
teacher runs once rather than every epoch. `strata distill` (recipes.lightning_cli.DistillCLI) joins them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2FeatureExtractor

from upstream import build_upstream
from upstream.base import Upstream, lengths_to_mask
from upstream.hf import FAMILIES, HFUpstream

from ..cache import CacheError, FeatureCache, upstream_fingerprint
from ..data import AudioDataset, Manifest, PadCollate, read_manifest
from ..frozen import leave_out, put_back
from .data import HUBERT_CROP_SECONDS, BucketedAudioData
from .module import PretrainingModule

# Where a checkpoint names the teacher whose weights it leaves out: {"name": source, "fingerprint": hash}.
TEACHER_KEY = "strata_distill_teacher"


def default_target_layers(num_layers: int) -> list[int]:
    """The teacher layers the heads predict when none are given, for a teacher of `num_layers` transformer layers.

    DistilHuBERT predicts layers 4, 8 and 12 of the 12-layer HuBERT Base: a third, two thirds and all of its depth.
    For L layers that is round(L/3), round(2L/3) and L (a 4-layer teacher: 1, 3, 4; 24 layers: 8, 16, 24), never
    below layer 1 (the CNN's output, hidden state 0, is copied into the student as it is) and each layer once."""
    return sorted({max(1, round(num_layers * part / 3)) for part in (1, 2, 3)})


def distillable(upstream: Upstream, name: str) -> HFUpstream:
    """`upstream` when its CNN and layers can be copied into a student, else an error saying which can."""
    if not isinstance(upstream, HFUpstream):
        raise ValueError(
            f"cannot distill {name!r}, a {type(upstream).__name__}: the student copies the teacher's CNN and first "
            f"transformer layers, so the teacher must be a transformers encoder of the families "
            f"{', '.join(FAMILIES)} (a preset such as hubert_base or wavlm_base_plus, or hf:<hub id or directory>, "
            "e.g. a `strata pretrain` output hf:<run>/upstream)"
        )
    return upstream


def build_student(teacher: HFUpstream, num_layers: int) -> HFUpstream:
    """The teacher's architecture cut to `num_layers` transformer layers, initialised as DistilHuBERT is: the
    teacher's CNN, feature projection, positional convolution, norms and first `num_layers` layers."""
    config = copy.deepcopy(teacher.model.config)
    config.num_hidden_layers = num_layers
    model = type(teacher.model)(config)
    wanted = model.state_dict()
    # Every key of the shallow model is one of the teacher's (layers 0..num_layers-1 and everything around them).
    model.load_state_dict({key: value for key, value in teacher.model.state_dict().items() if key in wanted})
    name = f"{num_layers}-layer student of {teacher.name}"
    return HFUpstream(model, teacher.normalize, teacher.use_attention_mask, name=name)


@dataclass(frozen=True)
class TeacherSpec:
    """What the data module needs to know of the teacher (`strata distill` links it from the model): its source
    `name` and `fingerprint` (called only to check a teacher cache) and the hidden states the heads predict, and the
    audio it takes (`sample_rate`, `min_samples`, its receptive field) and its `frame_rate` (crops start on its
    frames, so that cached targets can be cut with them)."""

    name: str
    layers: list[int]
    fingerprint: Callable[[], str]
    sample_rate: int = 16000
    min_samples: int = 0
    frame_rate: float = 50.0


@dataclass
class DistillLoss:
    """`total`: the sum over heads; per head `[K]`: `l1`, the mean absolute error, and `cosine`, the mean cosine
    similarity of prediction and target (what the loss's log sigmoid term pushes up)."""

    total: torch.Tensor
    l1: torch.Tensor
    cosine: torch.Tensor


def distillation_loss(
    predictions: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, cosine_weight: float = 1.0
) -> DistillLoss:
    """DistilHuBERT's loss. `predictions`, `targets [B, K, T, D]`, `lengths [B]` valid frames: per head, the L1
    distance averaged over valid frames and dimensions minus `cosine_weight` x the mean over valid frames of
    log sigmoid(cos(prediction, target)); summed over the K heads. Padding frames count nowhere."""
    mask = lengths_to_mask(lengths, targets.size(2)).to(targets.dtype)[:, None]  # [B, 1, T]
    frames = mask.sum().clamp(min=1)
    l1 = ((predictions - targets).abs().mean(-1) * mask).sum((0, 2)) / frames
    cosine = F.cosine_similarity(predictions, targets, dim=-1)  # [B, K, T]
    log_sigmoid = (F.logsigmoid(cosine) * mask).sum((0, 2)) / frames
    total = (l1 - cosine_weight * log_sigmoid).sum()
    return DistillLoss(total, l1, (cosine * mask).sum((0, 2)) / frames)


def align_frames(
    hidden: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The student's `hidden [B, T, D]` and the teacher's `targets [B, K, T', D']` cut to their common frames.

    Student and teacher share the CNN, so they agree on frames; a cache written from differently cut audio may be
    one frame off at the end, which is dropped. More than that means the targets are not of this audio."""
    gap = (lengths.to(target_lengths.device) - target_lengths).abs()
    if int(gap.max()) > 1:
        row = int(gap.argmax())
        raise ValueError(
            f"the student makes {int(lengths[row])} frames of batch item {row} but the teacher's targets have "
            f"{int(target_lengths[row])}: they share the CNN, so the targets (a teacher cache?) are not of this audio"
        )
    frames = min(hidden.size(1), targets.size(2))
    return hidden[:, :frames], targets[:, :, :frames], torch.minimum(lengths, target_lengths.to(lengths.device))


class DistillModule(PretrainingModule):
    """A `student_layers`-deep copy of `teacher` (any strata upstream name of a transformers family, e.g.
    `hubert_base` or `hf:exp/pretrain/hubert_tiny/upstream`) learns to predict the teacher's `target_layers`
    (default: `default_target_layers`, DistilHuBERT's 4, 8, 12 of 12 scaled to the teacher's depth) with one linear
    head each on its last layer's output. The teacher is frozen and left out of checkpoints (rebuilt from its name,
    its fingerprint checked). A non-finite loss stops the run (`skip_nonfinite_loss`: skips the batch, see
    `recipes.nonfinite`). Targets come from the batch when the data module read them from a teacher cache,
    else from the teacher run on the batch's audio. `train_cnn`: the student's CNN learns too (DistilHuBERT trains
    the whole student). Optimiser: Adam (AdamW with `weight_decay`), the paper's 2e-4, linear warm-up.
    `fit` ends by writing the student to `<run>/upstream/` (loadable as `hf:<run>/upstream`)."""

    source_prefix = "hf"  # the student loads as hf:<run>/upstream

    def __init__(
        self,
        teacher: str,
        student_layers: int = 2,
        target_layers: list[int] | None = None,
        cosine_weight: float = 1.0,
        train_cnn: bool = True,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.skip_nonfinite_loss = skip_nonfinite_loss
        self.teacher_name = teacher
        self.teacher = distillable(build_upstream(teacher), teacher)  # frozen: eval mode, no gradients
        depth = self.teacher.num_layers - 1
        if not 1 <= student_layers <= depth:
            raise ValueError(f"student_layers must be 1-{depth} (the teacher {teacher!r} has {depth} layers)")
        self.target_layers = list(target_layers) if target_layers else default_target_layers(depth)
        if any(not 1 <= layer <= depth for layer in self.target_layers):
            raise ValueError(f"target_layers {self.target_layers} must be among the teacher's layers 1-{depth}")
        self.student = build_student(self.teacher, student_layers).set_trainable("all", train_cnn=train_cnn)
        self.heads = nn.ModuleList(
            nn.Linear(self.student.hidden_size, self.teacher.hidden_size) for _ in self.target_layers
        )
        self.cosine_weight = cosine_weight
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps

    @cached_property
    def teacher_fingerprint(self) -> str:
        """The frozen teacher's `recipes.cache.upstream_fingerprint`, computed once."""
        return upstream_fingerprint(self.teacher)

    def teacher_spec(self) -> TeacherSpec:
        """What the data module needs of the teacher (see TeacherSpec); `strata distill` links it."""
        return TeacherSpec(self.teacher_name, self.target_layers, lambda: self.teacher_fingerprint,
                           self.teacher.sample_rate, self.teacher.min_samples, self.teacher.frame_rate)  # fmt: skip

    def teacher_targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's target layers `[B, K, T, D]` and frames `[B]`: from the cache when the batch has them."""
        if "targets" in batch:
            return batch["targets"]["hidden"], batch["targets"]["lengths"]
        with torch.no_grad():
            out = self.teacher(batch["wavs"], batch["wav_lengths"])
        return torch.stack([out.hidden_states[layer] for layer in self.target_layers], 1), out.lengths

    def losses(self, batch: dict[str, Any]) -> DistillLoss:
        out = self.student(batch["wavs"], batch["wav_lengths"])
        targets, target_lengths = self.teacher_targets(batch)
        hidden, targets, lengths = align_frames(out.hidden_states[-1], out.lengths, targets, target_lengths)
        predictions = torch.stack([head(hidden) for head in self.heads], 1)
        return distillation_loss(predictions, targets.to(predictions.dtype), lengths, self.cosine_weight)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss = self.losses(batch)
        size = len(batch["ids"])
        self.log(f"{stage}/loss", loss.total, prog_bar=True, on_epoch=True, on_step=stage == "train", batch_size=size)
        for layer, l1, cosine in zip(self.target_layers, loss.l1, loss.cosine, strict=True):
            self.log(f"{stage}/l1_layer{layer}", l1, on_epoch=True, batch_size=size)
            self.log(f"{stage}/cos_layer{layer}", cosine, on_epoch=True, batch_size=size)
        return loss.total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The teacher is rebuilt from its name on load: the checkpoint keeps its name and fingerprint only."""
        leave_out(checkpoint, "teacher", TEACHER_KEY, self.teacher_name, self.teacher_fingerprint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt teacher's weights back, once its fingerprint shows it is the one the run distilled."""

        def mismatch(saved: dict[str, str], current: str) -> str:
            return (
                f"the checkpoint distilled the teacher {saved['name']!r} (weights {saved['fingerprint']}), which it "
                f"does not store; {self.teacher_name!r} now loads other weights ({current}). "
                "Resume with the teacher source and files the run started with"
            )

        put_back(checkpoint, "teacher", TEACHER_KEY, self.teacher, lambda: self.teacher_fingerprint, mismatch)

    def save_upstream(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """The student as a transformers directory (weights, config, feature-extractor settings) that
        `build_upstream("hf:<folder>")` loads, plus `distill.json` recording its teacher and training."""
        folder = Path(folder)
        self.student.model.save_pretrained(folder)
        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=self.student.sample_rate, padding_value=0.0,
            do_normalize=self.student.normalize, return_attention_mask=self.student.use_attention_mask,
        ).save_pretrained(folder)  # fmt: skip
        record = {
            "teacher": self.teacher_name,
            "teacher_fingerprint": self.teacher_fingerprint,
            "target_layers": self.target_layers,
            "global_step": self.global_step,
            "hyper_parameters": dict(self.hparams),
            **(extra or {}),
        }
        (folder / "distill.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        return folder


class CachedTargets(Sequence[torch.Tensor]):
    """The teacher's `layers` of each utterance of `manifest`, `[K, F, D]`, read from a `strata extract` cache as
    `AudioDataset` asks for them (its `targets`)."""

    def __init__(self, cache: FeatureCache, manifest: Manifest, layers: Sequence[int]) -> None:
        self.cache, self.ids = cache, [entry["id"] for entry in manifest.entries]
        self.positions = [cache.index.layers.index(layer) for layer in layers]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        return self.cache.hidden(self.ids[index])[self.positions]


def pad_teacher_targets(targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """`[K, F, D]` per utterance -> `hidden [B, K, T, D]` zero-padded and the frames `lengths [B]`."""
    lengths = torch.tensor([t.size(1) for t in targets], dtype=torch.long)
    layers, _, size = targets[0].shape
    hidden = torch.zeros(len(targets), layers, int(lengths.max()), size)
    for row, target in enumerate(targets):
        hidden[row, :, : target.size(1)] = target
    return {"hidden": hidden, "lengths": lengths}


class DistillDataModule(BucketedAudioData):
    """Unlabelled audio for distillation (labels are ignored), batched by length (`max_batch_seconds` of padded
    audio). Clips longer than `max_seconds` (HuBERT's 250k samples by default; None: never) are cut to a random
    window of it, starting on a teacher frame, anew each epoch; cached targets are cut to the same frames (they were
    computed on the whole clip, so the teacher saw more context than the crop: a teacher run live sees the crop).

    `teacher_cache`: a `strata extract` folder of the teacher holding at least the target layers, for every
    utterance of `train` and `valid`; batches then carry the teacher's targets (`targets`: `hidden [B, K, T, D]`,
    `lengths [B]`) and the teacher never runs. `teacher` (its name, fingerprint and target layers) comes from the
    model: `strata distill` links it."""

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        teacher_cache: str | None = None,
        max_seconds: float | None = HUBERT_CROP_SECONDS,
        max_batch_seconds: float = 60.0,
        num_workers: int = 0,
        seed: int | None = None,
        teacher: TeacherSpec | None = None,
    ) -> None:
        super().__init__()
        self.train, self.valid, self.teacher_cache = train, valid, teacher_cache
        self.max_batch_seconds, self.num_workers, self.seed = max_batch_seconds, num_workers, seed
        self.max_seconds = max_seconds
        self.teacher = teacher
        self.datasets: dict[str, AudioDataset] = {}

    def describe(self) -> dict[str, Any]:
        return {"train": self.train, "valid": self.valid, "teacher_cache": self.teacher_cache}

    def setup(self, stage: str) -> None:
        if self.train is None:
            raise ValueError("`strata distill` needs unlabelled audio: pass --data.train MANIFEST")
        teacher = self.teacher
        if teacher is None:
            raise ValueError(
                "DistillDataModule needs the teacher's description (`strata distill` links it): "
                "DistillDataModule(..., teacher=module.teacher_spec())"
            )
        splits = {"train": self.train, **({"valid": self.valid} if self.valid else {})}
        cache = None if self.teacher_cache is None else self._open_cache(teacher, list(splits.values()))
        for split, path in splits.items():
            manifest = read_manifest(path)
            targets = None
            if cache is not None:
                cache.check(teacher.name, teacher.fingerprint(), manifest, all_layers=False)
                targets = CachedTargets(cache, manifest, teacher.layers)
            self.datasets[split] = AudioDataset(
                manifest, teacher.sample_rate, targets, min_samples=teacher.min_samples, frame_rate=teacher.frame_rate,
                max_seconds=self.max_seconds, target_frame_dim=1,
            )  # fmt: skip

    def _open_cache(self, teacher: TeacherSpec, manifests: list[str]) -> FeatureCache:
        cache = FeatureCache(self.teacher_cache)
        missing = [layer for layer in teacher.layers if layer not in cache.index.layers]
        if missing:
            layers = ",".join(map(str, teacher.layers))
            raise CacheError(
                f"{self.teacher_cache} holds the teacher's hidden states {cache.index.layers}, not the target layers "
                f"{missing} (of {teacher.layers}); write a cache with them: strata extract --upstream {teacher.name} "
                f"--manifest {' '.join(manifests)} --layers {layers} --out {self.teacher_cache}"
            )
        return cache

    def collate(self) -> PadCollate:
        return PadCollate(pad_teacher_targets if self.teacher_cache is not None else None)
