"""Per-layer matrices from the feature cache, read once for every layer: pooled vectors per utterance, or frames
sampled across utterances (with the utterance each came from)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..cache import FeatureCache, layer_list
from ..data import Manifest


def cached_layers(cache: FeatureCache, layers: str | Sequence[int] = "all") -> list[int]:
    """The hidden-state indices to analyse: `all` the cache holds, or a subset of them (`0,4,8`)."""
    held = cache.index.layers
    if isinstance(layers, str) and layers.strip() == "all":
        return list(held)
    layers = layer_list(layers)  # the form `strata extract --layers` takes
    missing = sorted(set(layers) - set(held))
    if missing:
        raise ValueError(f"layers {missing} are not in {cache.folder} (it holds {held}); extract them first")
    return layers


def pooled(cache: FeatureCache, manifest: Manifest, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """`layer -> [N, D]`: each utterance's frames averaged, in manifest order (the utterance-level probe's input)."""
    cache.check_covers(manifest)
    rows = [cache.index.layers.index(layer) for layer in layers]
    vectors = torch.stack([cache.hidden(e["id"])[rows].mean(1) for e in manifest.entries], dim=1)  # [L, N, D]
    return dict(zip(layers, vectors, strict=True))


@dataclass
class Frames:
    """Frames sampled across a manifest: `layers[l] [F, D]`, and for each frame its utterance (manifest index)
    and its position in that utterance."""

    layers: dict[int, np.ndarray]
    utterance: np.ndarray
    position: np.ndarray


def sample_frames(
    cache: FeatureCache,
    manifest: Manifest,
    layers: Sequence[int],
    max_frames: int = 20000,
    seed: int = 0,
    keep: dict[int, np.ndarray] | None = None,
) -> Frames:
    """Up to `max_frames` frames drawn uniformly (seeded) from all of the manifest's frames, in utterance order.
    `keep[i]` (optional) is a boolean mask of utterance i's frames that may be drawn (e.g. those with a label)."""
    cache.check_covers(manifest)
    counts = [cache.frames(e["id"]) for e in manifest.entries]
    allowed = [keep[i] if keep is not None else np.ones(n, dtype=bool) for i, n in enumerate(counts)]
    candidates = [(i, t) for i, mask in enumerate(allowed) for t in np.flatnonzero(mask)]
    if not candidates:
        raise ValueError(f"no frames to sample in {manifest.path}")
    generator = np.random.default_rng(seed)
    chosen = sorted(generator.choice(len(candidates), size=min(max_frames, len(candidates)), replace=False).tolist())
    picked = [candidates[c] for c in chosen]
    rows = [cache.index.layers.index(layer) for layer in layers]
    by_utterance: dict[int, list[int]] = {}
    for i, t in picked:
        by_utterance.setdefault(i, []).append(t)
    blocks = [cache.hidden(manifest.entries[i]["id"])[rows][:, ts] for i, ts in by_utterance.items()]  # [L, n, D]
    stacked = torch.cat(blocks, dim=1).double().numpy()
    return Frames(
        layers={layer: stacked[k] for k, layer in enumerate(layers)},
        utterance=np.array([i for i, _ in picked]),
        position=np.array([t for _, t in picked]),
    )
