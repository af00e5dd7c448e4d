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

from downstream.clustering import assign, minibatch_kmeans


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
