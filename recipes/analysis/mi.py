"""How much a layer's frames say about frame labels (phones, words, speakers): k-means clusters of the frames,
scored by the mutual information between cluster and label over the label entropy.

This is the phone-normalised mutual information (PNMI) of Hsu et al., "HuBERT: self-supervised speech
representation learning by masked prediction of hidden units", TASLP 2021, used layer by layer by Pasad et al.
("Comparative layer-wise analysis of self-supervised speech models", ICASSP 2023). Clusters come from mini-batch
k-means (Sculley, "Web-scale k-means clustering", WWW 2010), as HuBERT's own target clustering.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(clusters: Sequence | np.ndarray, labels: Sequence | np.ndarray) -> float:
    """I(cluster; label) / H(label) in nats, for `clusters [N]` and `labels [N]` (ints or strings).

    Hsu et al.'s PNMI: the fraction of the label's uncertainty the cluster removes. It is 1 whenever the cluster
    determines the label (so any refinement of the labels scores 1: compare layers at one k) and ~0 for independent
    clusters (plus a small-sample bias of about (k - 1)(L - 1) / 2N nats)."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.ndim != 1 or clusters.shape != labels.shape:
        raise ValueError(f"clusters and labels must be [N] of one length, got {clusters.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no frames to score")
    _, c = np.unique(clusters, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    joint = np.bincount(c * (y.max() + 1) + y, minlength=(c.max() + 1) * (y.max() + 1)).reshape(-1, y.max() + 1)
    h_label = _entropy(joint.sum(0))
    if h_label == 0.0:
        raise ValueError(
            f"all {len(labels)} labels are {labels[:1].tolist()[0]!r}: mutual information over H(label) is undefined"
        )
    mi = h_label + _entropy(joint.sum(1)) - _entropy(joint.ravel())  # I = H(Y) + H(C) - H(C, Y)
    return float(min(max(mi / h_label, 0.0), 1.0))


def cluster_mi(
    x_fit: np.ndarray, x_eval: np.ndarray, labels_eval: Sequence | np.ndarray, k: int, seed: int = 0
) -> float:
    """PNMI of `x_eval [M, D]` against `labels_eval [M]`, clustered with `k` centres fitted on `x_fit [N, D]`: the
    centres never see the frames they are scored on."""
    return normalized_mutual_information(assign(x_eval, minibatch_kmeans(x_fit, k, seed=seed)), labels_eval)
