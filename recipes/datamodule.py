"""ManifestDataModule: train / valid / test manifests -> length-bucketed DataLoaders."""

from __future__ import annotations

import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from upstream import compat

from . import atomic
from .cache import CachedFeatureDataset, FeatureCache, FeatureCollate
from .data import AudioDataset, BucketBatchSampler, Manifest, PadCollate, crop_samples, read_manifest, run_seed
from .resume import training_loader
from .spec import InputSpec
from .tasks import SplitData, Task
from .trials import Trials, make_trials, read_trials

# Drawn validation trials: every same-speaker pair up to this many (and as many different-speaker pairs) keeps
# validation of a large corpus to seconds of scoring.
MAX_VALID_TARGETS = 10000


class ManifestDataModule(L.LightningDataModule):
    """Loaders for JSONL manifests, batched by `max_batch_seconds` of padded audio.

    The task (labels, target collation), the sample rate and the shortest usable clip come from `spec`, the model's
    `InputSpec` (`strata fit` links it from the model; elsewhere pass `spec=module.input_spec()`). Shuffling is
    seeded by `seed`, or the run's `seed_everything` seed when unset.

    Verification scores pairs of test utterances from `trials` (`<1|0> <enroll id> <test id>` a line); its
    validation scores `valid_trials`, or balanced trials drawn from the valid manifest's speakers when unset.

    `features` (a `strata extract` folder) serves the upstream's cached hidden states instead of audio, so a frozen
    upstream is not run again every epoch; the cache must be of the run's upstream, with every layer and utterance.
    """

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        test: str | None = None,
        trials: str | None = None,
        valid_trials: str | None = None,
        max_batch_seconds: float = 120.0,
        num_workers: int = 2,
        seed: int | None = None,
        features: str | None = None,
        spec: InputSpec | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.cache: FeatureCache | None = None
        self.train, self.valid, self.test = train, valid, test
        self.trials, self.valid_trials = trials, valid_trials
        self.split_trials: dict[str, Trials] = {}
        self.max_batch_seconds = max_batch_seconds
        self.num_workers = num_workers
        self.seed = seed
        self.spec = spec
        self.datasets: dict[str, AudioDataset | CachedFeatureDataset] = {}

    @property
    def task(self) -> Task:
        if self.spec is None:
            raise ValueError(
                "ManifestDataModule has no InputSpec: `strata fit` links it from the model; in a Trainer of your "
                "own pass ManifestDataModule(..., spec=module.input_spec())"
            )
        return self.spec.task

    def _needed(self, stage: str) -> list[str]:
        splits = {"fit": ["train", "valid"], "validate": ["valid"], "test": ["test"], "predict": ["test"]}[stage]
        reference = self.task.test_reference_split if stage == "test" else None
        return splits + ([reference] if reference else [])

    def setup(self, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))  # Lightning passes a str-valued enum
        task, spec = self.task, self.spec
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and compat.trainer_uses_distributed_sampler(trainer):
            raise ValueError(
                "strata's bucketed batches shard themselves across processes; "
                "set Trainer(use_distributed_sampler=False) (`strata fit` does)"
            )
        if self.features is not None and self.cache is None:
            self.cache = self._open_cache()
        for split in self._needed(stage):
            path = getattr(self, split)
            if path is None:
                raise ValueError(f"`strata {stage}` needs a {split} manifest: pass --data.{split} PATH")
            if split in self.datasets and str(self.datasets[split].manifest.path) == str(path):
                continue
            manifest = self._usable(read_manifest(path, fields=task.fields_for(split)), split)
            targets = task.targets(manifest, split)
            crop_seconds = task.train_crop_seconds if split == "train" else None
            if self.cache is not None:
                self.cache.check(spec.upstream, spec.fingerprint(), manifest)
                crop_frames = None if crop_seconds is None else self._crop_frames(crop_seconds)
                self.datasets[split] = CachedFeatureDataset(manifest, self.cache, targets, crop_seconds, crop_frames)
            else:
                self.datasets[split] = AudioDataset(
                    manifest,
                    spec.sample_rate,
                    targets,
                    min_samples=spec.min_samples,
                    crop_seconds=crop_seconds,
                    frame_rate=spec.frame_rate,
                )
            if task.uses_trials and split != "train":
                self.split_trials[split] = self._read_trials(split, manifest)

    def _open_cache(self) -> FeatureCache:
        """The feature cache, after refusing what it cannot serve: a trainable upstream (its features change as it
        trains) or a head that reads the audio itself (FeatEx's spectrum branch)."""
        spec = self.spec
        if spec.trainable != "frozen":
            raise ValueError(
                f"--data.features {self.features}: cached features stand in for a frozen upstream only; this run "
                f"trains it (trainable {spec.trainable!r}). Drop --data.features or freeze the upstream"
            )
        if spec.reads_audio:
            raise ValueError(f"--data.features {self.features}: the {spec.task.name} head reads the audio too "
                             "(featex); train it from audio")  # fmt: skip
        return FeatureCache(self.features)

    def _crop_frames(self, crop_seconds: float) -> int:
        """The upstream's frames of a `crop_seconds` crop of audio: the length of a cached crop."""
        samples = torch.tensor([crop_samples(crop_seconds, self.spec.sample_rate)])
        return int(self.spec.frame_lengths(samples)[0])

    def _usable(self, manifest: Manifest, split: str) -> Manifest:
        """`manifest` without the utterances the task drops; the dropped ones are counted once, by reason, and
        listed in `<run dir>/dropped_<split>.txt` (`id<TAB>reason` a line)."""
        dropped = self.task.drop(manifest, split, self.spec.frame_rate)
        if not dropped:
            return manifest
        reasons = Counter(dropped.values())
        summary = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        message = f"dropped {len(dropped)} of {len(manifest)} utterances of {manifest.path} ({summary})"
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero:
            listing = Path(trainer.default_root_dir) / f"dropped_{split}.txt"
            listing.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(
                listing, "".join(f"{manifest.entries[i]['id']}\t{why}\n" for i, why in sorted(dropped.items()))
            )
            message += f"; listed in {listing}"
        warnings.warn(message, stacklevel=2)
        kept = [i for i in range(len(manifest)) if i not in dropped]
        if not kept:
            raise ValueError(f"no usable utterances left in {manifest.path}: {summary}")
        return Manifest(manifest.path, [manifest.entries[i] for i in kept], [manifest.lines[i] for i in kept])

    def _read_trials(self, split: str, manifest: Manifest) -> Trials:
        path = self.trials if split == "test" else self.valid_trials
        if path is not None:
            return read_trials(
                path, manifest.ids, [entry["audio"] for entry in manifest.entries], manifest=manifest.path
            )
        if split == "test":
            raise ValueError(
                f"{self.task.name} tests on trials: pass --data.trials PATH (`<1|0> <enroll> <test>` a line)"
            )
        if any("speaker" not in entry for entry in manifest.entries):
            raise ValueError(
                f"{manifest.path} has no speaker labels to draw validation trials from: "
                "add a `speaker` field or pass --data.valid_trials PATH"
            )
        seed = run_seed(self.seed)
        speakers = [entry["speaker"] for entry in manifest.entries]
        pairs = make_trials(manifest.ids, speakers, seed=seed, max_targets=MAX_VALID_TARGETS)
        index = {utterance: i for i, utterance in enumerate(manifest.ids)}
        labels, enroll, test = zip(*((label, index[a], index[b]) for label, a, b in pairs), strict=True)
        return Trials(manifest.path, torch.tensor(labels), torch.tensor(enroll), torch.tensor(test))

    def split_data(self, split: str) -> SplitData:
        """What the task's evaluator needs about a split: its manifest and trials (read by `SplitEvaluation`)."""
        return SplitData(split, self.datasets[split].manifest, self.split_trials.get(split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = run_seed(self.seed)
        sampler = BucketBatchSampler(
            dataset.durations,
            self.max_batch_seconds,
            shuffle=shuffle,
            seed=seed,
            num_replicas=world_size,
            rank=rank,
        )
        collate = FeatureCollate if self.cache is not None else PadCollate
        make_loader = partial(training_loader, self) if shuffle else DataLoader  # training: resumable mid-epoch
        return make_loader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate(self.task.collate_targets),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def reference_dataloader(self, split: str) -> DataLoader:
        """The loader of a split the test embeds as a reference (`Task.test_reference_split`)."""
        return self._loader(split, shuffle=False)
