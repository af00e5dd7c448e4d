"""k-means, twice: mini-batch k-means in numpy for millions of frames (layer analysis, pre-training targets), and
spherical k-means in torch for a few hundred utterance embeddings (anomaly prototypes, cosine geometry).

Mini-batch k-means is Sculley's ("Web-scale k-means clustering", WWW 2010), as HuBERT clusters its targets;
both seed with k-means++ (Arthur & Vassilvitskii, SODA 2007) from a seeded generator, so one seed gives one result.
"""

from __future__ import annotations

import numpy as np
import torch

from .speaker import length_normalize

# Distances are computed for at most this many (frame, centre) pairs at once, so memory stays bounded.
ASSIGN_CHUNK = 1 << 22


def _as_frames(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"frames must be [N, D], got shape {x.shape}")
    return x


def _sq_distances(x: np.ndarray, centres: np.ndarray, centre_norms: np.ndarray) -> np.ndarray:
    """`[n, k]` squared Euclidean distances (|x|^2 - 2 x.c + |c|^2, in float64, floored at 0)."""
    x = x.astype(np.float64, copy=False)
    d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ centres.T + centre_norms[None, :]
    return np.maximum(d2, 0.0)


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of `centres [k, D]` for each frame of `x [N, D]`: `[N]`, in chunks of frames."""
    x = _as_frames(x)
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != x.shape[1]:
        raise ValueError(f"centres must be [k, {x.shape[1]}], got shape {centres.shape}")
    norms = (centres * centres).sum(1)
    step = max(1, ASSIGN_CHUNK // len(centres))
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), step):
        out[start : start + step] = _sq_distances(x[start : start + step], centres, norms).argmin(1)
    return out


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """`[k, D]` seeds drawn by D^2 sampling (Arthur & Vassilvitskii, "k-means++", SODA 2007)."""
    x = x.astype(np.float64, copy=False)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    closest = _sq_distances(x, centres[:1], (centres[:1] ** 2).sum(1))[:, 0]
    for i in range(1, k):
        total = closest.sum()
        # Fewer distinct points than centres: every point is already a centre, so any pick is as good.
        index = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=closest / total)
        centres[i] = x[index]
        closest = np.minimum(closest, _sq_distances(x, centres[i : i + 1], (centres[i : i + 1] ** 2).sum(1))[:, 0])
    return centres


def minibatch_kmeans(x: np.ndarray, k: int, seed: int = 0, batch_size: int = 1024, iterations: int = 100) -> np.ndarray:
    """Centres `[k, D]` of `x [N, D]` by mini-batch k-means (Sculley 2010), deterministic for a seed.

    Seeds by k-means++ on a sample of max(3 * batch_size, 3 * k) frames (as scikit-learn's init_size). Each step
    assigns a batch to the current centres, then moves each centre with a per-centre learning rate 1 / (frames it
    has seen): applied to a whole batch at once that is the running mean of everything assigned to it, the same as
    Sculley's frame-by-frame update with the assignments cached."""
    x = _as_frames(x)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be between 1 and the number of frames ({len(x)}), got {k}")
    if batch_size < 1 or iterations < 0:
        raise ValueError(f"batch_size must be >= 1 and iterations >= 0, got {batch_size} and {iterations}")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(x), size=min(len(x), max(3 * batch_size, 3 * k)), replace=False)
    centres = kmeans_plus_plus(x[np.sort(sample)], k, rng)
    counts = np.zeros(k)
    for _ in range(iterations):
        batch = x[rng.integers(len(x), size=min(batch_size, len(x)))].astype(np.float64, copy=False)
        nearest = _sq_distances(batch, centres, (centres * centres).sum(1)).argmin(1)
        batch_counts = np.bincount(nearest, minlength=k).astype(np.float64)
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, batch)
        hit = batch_counts > 0
        counts[hit] += batch_counts[hit]
        # c <- c + (sum_b x - m c) / v  ==  (v_old c + sum_b x) / v_new, the running mean of the centre's frames
        centres[hit] += (sums[hit] - batch_counts[hit, None] * centres[hit]) / counts[hit, None]
    return centres


def spherical_kmeans(
    x: torch.Tensor, num_centers: int, seed: int = 0, max_iterations: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(centres [K, E], assignment [N])` of k-means on the unit sphere: cosine similarity assigns, each centre is
    its members' normalised mean. k-means++ initialisation from a seeded generator, so one seed gives one result.

    For unit vectors the squared Euclidean distance is 2 (1 - cos), so k-means++ samples each next centre with
    probability proportional to its cosine distance to the nearest centre chosen so far. Iterates until the
    assignment stops changing or `max_iterations`; an emptied cluster keeps its previous centre.
    """
    x = length_normalize(x)
    n = x.size(0)
    if num_centers < 1:
        raise ValueError(f"num_centers must be positive; got {num_centers}")
    if n < num_centers:
        raise ValueError(f"{num_centers} k-means centres need at least {num_centers} embeddings; got {n}")
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = (1 - x @ x[chosen[0]]).clamp(min=0)
    for _ in range(1, num_centers):
        weights = nearest.clone()
        weights[chosen] = 0
        if weights.sum() <= 0:  # fewer distinct points than centres: pick among the unchosen uniformly
            weights = torch.ones(n, dtype=x.dtype)
            weights[chosen] = 0
        chosen.append(int(torch.multinomial(weights.double(), 1, generator=generator)))
        nearest = torch.minimum(nearest, (1 - x @ x[chosen[-1]]).clamp(min=0))
    centres = x[chosen].clone()
    assignment = torch.full((n,), -1, dtype=torch.long)
    for _ in range(max_iterations):
        new = (x @ centres.T).argmax(1)
        if torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centres).index_add_(0, assignment, x)
        filled = torch.bincount(assignment, minlength=num_centers) > 0
        centres[filled] = length_normalize(sums[filled])
    return centres, assignment
