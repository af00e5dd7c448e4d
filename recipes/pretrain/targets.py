"""Frame features and their k-means codebook: the targets HuBERT learns to predict under the mask.

Iteration 1 clusters MFCCs (13 coefficients with deltas and delta-deltas, 39 dimensions) computed at the model's
frame rate (25 ms windows every 20 ms, so frame t of the MFCCs and of the CNN cover the same samples); iteration 2
clusters a hidden layer of the model trained in iteration 1. Features are standardised per dimension before
k-means (mini-batch k-means, Sculley 2010, fitted on a sample of frames), and the codebook is saved, so a resumed or
repeated run predicts the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from downstream.clustering import assign, minibatch_kmeans

from ..atomic import atomic_path


def mfcc_frames(wav: torch.Tensor, sample_rate: int, num_frames: int) -> np.ndarray:
    """`[num_frames, 39]` MFCCs with deltas for `wav [S]`, one every 20 ms (the last repeated to fill a shortfall)."""
    mfcc = torchaudio.compliance.kaldi.mfcc(
        wav[None] * 32768, sample_frequency=sample_rate, num_ceps=13, frame_length=25.0, frame_shift=20.0,
        dither=0.0, use_energy=False,
    )  # fmt: skip
    first = torchaudio.functional.compute_deltas(mfcc.T)
    features = torch.cat([mfcc.T, first, torchaudio.functional.compute_deltas(first)]).T
    return _fit_length(features.numpy(), num_frames)


def _fit_length(features: np.ndarray, num_frames: int) -> np.ndarray:
    if len(features) >= num_frames:
        return features[:num_frames]
    return np.concatenate([features, np.repeat(features[-1:], num_frames - len(features), axis=0)])


@dataclass
class Codebook:
    """k-means centres over standardised features; `assign` gives each frame its nearest centre's id."""

    centres: np.ndarray  # [K, D]
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    features: str  # what was clustered: "mfcc" or "<upstream>:<layer>"

    @classmethod
    def fit(cls, frames: np.ndarray, num_clusters: int, features: str, seed: int = 0) -> Codebook:
        if len(frames) < num_clusters:
            raise ValueError(f"{num_clusters} clusters need at least as many frames; got {len(frames)}")
        mean, std = frames.mean(0), frames.std(0) + 1e-8
        centres = minibatch_kmeans((frames - mean) / std, num_clusters, seed=seed)
        return cls(centres, mean, std, features)

    def assign(self, frames: np.ndarray) -> np.ndarray:
        return assign((frames - self.mean) / self.std, self.centres)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial, open(partial, "wb") as handle:  # a handle: savez would add .npz to a name
            np.savez(handle, centres=self.centres, mean=self.mean, std=self.std, features=np.array(self.features))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        with np.load(path) as data:
            return cls(data["centres"], data["mean"], data["std"], str(data["features"]))

    @property
    def num_clusters(self) -> int:
        return len(self.centres)
