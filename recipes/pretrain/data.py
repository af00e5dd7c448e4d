"""Data of `strata pretrain`: `AudioPretrainDataModule`, the audio of unlabelled manifests (TERA's), and
`PretrainDataModule`, that audio with each utterance's k-means cluster ids (HuBERT's). Labels are ignored."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import AudioDataset, BucketBatchSampler, Manifest, PadCollate, read_entry, read_manifest, run_seed
from ..resume import training_loader
from .targets import Codebook, mfcc_frames


class TargetsCollate(PadCollate):
    """Waveforms padded as for the tasks, and `targets [B, T]` padded with -100 (ignored)."""

    def __init__(self) -> None:
        super().__init__(collate_targets=self.pad)

    @staticmethod
    def pad(targets: list[torch.Tensor]) -> torch.Tensor:
        padded = torch.full((len(targets), max(len(t) for t in targets)), -100, dtype=torch.long)
        for row, ids in enumerate(targets):
            padded[row, : len(ids)] = ids
        return padded


# HuBERT's pre-training crops clips longer than 250k samples (15.625 s at 16 kHz) to a random window of that length.
HUBERT_CROP_SECONDS = 250000 / 16000


class BucketedAudioData(L.LightningDataModule):
    """Length-bucketed loaders over `self.datasets` (train shuffled, valid when there is one), sharded by rank: what
    the pre-training data modules share. Subclasses fill `datasets` in `setup` and say how a batch is padded."""

    max_batch_seconds: float
    num_workers: int
    seed: int | None
    datasets: dict[str, AudioDataset]

    def collate(self) -> PadCollate:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        trainer = self.trainer
        sampler = BucketBatchSampler(dataset.durations, self.max_batch_seconds, shuffle=shuffle,
                                     seed=run_seed(self.seed), num_replicas=trainer.world_size,
                                     rank=trainer.global_rank)  # fmt: skip
        make_loader = partial(training_loader, self) if shuffle else DataLoader  # training: resumable mid-epoch
        return make_loader(dataset, batch_sampler=sampler, collate_fn=self.collate(), num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False) if "valid" in self.datasets else []


class AudioPretrainDataModule(BucketedAudioData):
    """Manifests of unlabelled audio batched by length (`max_batch_seconds` of padded audio), for an objective whose
    targets come from the audio itself (TERA). Clips longer than `max_seconds` (HuBERT's 250k samples by default;
    None: never) are cut to a random window of it, anew each epoch, starting on one of the model's frames
    (`frame_rate`, linked by `strata pretrain`). Clips shorter than `min_samples` (the model's shortest input, linked
    too) are zero-padded to it. `seed` (the batch order) defaults to the run's `seed_everything` seed."""

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        max_batch_seconds: float = 60.0,
        num_workers: int = 0,
        seed: int | None = None,
        min_samples: int = 0,
        max_seconds: float | None = HUBERT_CROP_SECONDS,
        frame_rate: float | None = None,
    ) -> None:
        super().__init__()
        self.train, self.valid = train, valid
        self.max_batch_seconds, self.num_workers, self.seed = max_batch_seconds, num_workers, seed
        self.min_samples, self.max_seconds, self.frame_rate = min_samples, max_seconds, frame_rate
        self.datasets: dict[str, AudioDataset] = {}

    def describe(self) -> dict[str, Any]:
        return {"features": "the model's own", "train": self.train}

    def _manifests(self) -> dict[str, Manifest]:
        if self.train is None:
            raise ValueError("`strata pretrain` needs unlabelled audio: pass --data.train MANIFEST")
        splits = {"train": self.train, **({"valid": self.valid} if self.valid else {})}
        return {split: read_manifest(path) for split, path in splits.items()}

    def setup(self, stage: str) -> None:
        for split, manifest in self._manifests().items():
            self.datasets[split] = AudioDataset(manifest, 16000, min_samples=self.min_samples,
                                                frame_rate=self.frame_rate, max_seconds=self.max_seconds)  # fmt: skip

    def collate(self) -> PadCollate:
        return PadCollate()


class PretrainDataModule(AudioPretrainDataModule):
    """Manifests of unlabelled audio and the k-means targets of their frames.

    `features: mfcc` (iteration 1) clusters MFCCs with deltas; `features: <upstream>:<layer>` (iteration 2, e.g.
    `hf:exp/pretrain/it1/upstream:3`) clusters that upstream's hidden layer. `num_clusters` centres are fitted on up
    to `sample_frames` frames of the training set and saved as `<run>/codebook.npz`; a resumed run reloads it, so
    the targets stay the same. Clips are batched by length (`max_batch_seconds` of padded audio); those longer than
    `max_seconds` are cropped as HuBERT does (see the base class), their targets with them. `seed` (the frames
    sampled, the k-means initialisation, the batch order) defaults to the run's `seed_everything` seed.
    `num_clusters`, `frame_lengths` (the model's frames per clip, one target each) and `frame_rate` come from the
    model: `strata pretrain` links them.
    """

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        features: str = "mfcc",
        num_clusters: int = 100,
        sample_frames: int = 100000,
        max_batch_seconds: float = 60.0,
        num_workers: int = 0,
        seed: int | None = None,
        frame_lengths: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_seconds: float | None = HUBERT_CROP_SECONDS,
        frame_rate: float | None = None,
    ) -> None:
        super().__init__(train, valid, max_batch_seconds, num_workers, seed, max_seconds=max_seconds,
                         frame_rate=frame_rate)  # fmt: skip
        self.frame_lengths = frame_lengths
        self.features = features
        self.num_clusters, self.sample_frames = num_clusters, sample_frames
        self.codebook: Codebook | None = None

    def describe(self) -> dict[str, Any]:
        return {"features": self.features, "num_clusters": self.num_clusters, "train": self.train}

    def setup(self, stage: str) -> None:
        if self.frame_lengths is None:
            raise ValueError(
                "PretrainDataModule needs the model's frame_lengths (`strata pretrain` links it): "
                "PretrainDataModule(..., frame_lengths=module.frame_lengths)"
            )
        manifests = self._manifests()
        frames = {split: self._frame_features(m) for split, m in manifests.items()}
        self.codebook = self._codebook(frames["train"], Path(self.trainer.default_root_dir) / "codebook.npz")
        for split, manifest in manifests.items():
            targets = [torch.from_numpy(self.codebook.assign(x)).long() for x in frames[split]]
            self.datasets[split] = AudioDataset(manifest, 16000, targets, frame_rate=self.frame_rate,
                                                max_seconds=self.max_seconds, target_frame_dim=0)  # fmt: skip

    def _frame_features(self, manifest: Manifest) -> list[np.ndarray]:
        """Each utterance's frame features, as many frames as the model makes of it."""
        extractor = _layer_extractor(self.features) if self.features != "mfcc" else None
        features = []
        for entry in tqdm(manifest.entries, desc=f"{self.features} features of {manifest.path.name}", unit="utt"):
            wav = read_entry(entry, 16000)
            frames = int(self.frame_lengths(torch.tensor([wav.numel()]))[0])
            features.append(mfcc_frames(wav, 16000, frames) if extractor is None else extractor(wav, frames))
        return features

    def _codebook(self, frames: list[np.ndarray], path: Path) -> Codebook:
        if path.is_file():
            codebook = Codebook.load(path)
            if codebook.features == self.features and codebook.num_clusters == self.num_clusters:
                return codebook  # a resumed run: the same targets
        pooled = np.concatenate(frames)
        if len(pooled) > self.sample_frames:
            rng = np.random.default_rng(run_seed(self.seed))
            pooled = pooled[rng.choice(len(pooled), self.sample_frames, replace=False)]
        codebook = Codebook.fit(pooled, self.num_clusters, self.features, seed=run_seed(self.seed))
        if self.trainer.is_global_zero:
            codebook.save(path)
        return codebook

    def collate(self) -> PadCollate:
        return TargetsCollate()


def _layer_extractor(features: str):
    """`<upstream>:<layer>` -> a function (wav, frames) -> that layer's `[frames, D]` (iteration 2's features)."""
    from upstream import build_upstream

    source, _, layer = features.rpartition(":")
    if not source or not layer.isdigit():
        raise ValueError(f"features must be mfcc or <upstream>:<layer> (e.g. hf:exp/it1/upstream:3); got {features!r}")
    upstream = build_upstream(source)
    if int(layer) >= upstream.num_layers:
        raise ValueError(f"{source} has hidden states 0-{upstream.num_layers - 1}; no layer {layer}")

    def extract(wav: torch.Tensor, frames: int) -> np.ndarray:
        with torch.no_grad():
            hidden = upstream(wav[None]).hidden_states[int(layer)][0].double().numpy()
        if len(hidden) < frames:
            hidden = np.concatenate([hidden, np.repeat(hidden[-1:], frames - len(hidden), axis=0)])
        return hidden[:frames]

    return extract
