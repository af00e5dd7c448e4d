"""Projection-weighted CCA between a layer's frames and a reference (log-mel features, or another layer).

PWCCA is the similarity measure of Morcos, Raghu & Bengio, "Insights on representational similarity in neural
networks with canonical correlation", NeurIPS 2018, used by Pasad et al. ("Layer-wise analysis of a self-supervised
speech representation model", ASRU 2021; "Comparative layer-wise analysis of self-supervised speech models",
ICASSP 2023) to trace how far each layer of an SSL model is from the surface features.

With as many dimensions as frames, CCA finds perfect correlations in noise; `held_out_pwcca` therefore scores frames
the directions were not fitted on, and `choose_epsilon` picks the ridge on held-out frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchaudio.compliance import kaldi

# Eigenvalues of a covariance below this fraction of the largest are numerical zeros (rank-deficient directions).
EIGEN_FLOOR = 1e-10
DEFAULT_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class CCAFit:
    """Canonical directions fitted on some frames: `x_dirs [d1, K]`, `y_dirs [d2, K]`, the means they centre with."""

    x_mean: np.ndarray
    y_mean: np.ndarray
    x_dirs: np.ndarray
    y_dirs: np.ndarray


def _as_matrix(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {a.shape}")
    return a


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same frames, got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError(f"CCA needs at least 2 frames, got {x.shape[0]}")
    return x, y


def _whitener(xc: np.ndarray, epsilon: float) -> np.ndarray:
    """`[d, r]` map W with W^T (X^T X + lambda I) W = I on X's row space, lambda = epsilon * mean variance * N.

    Directions in X's null space are dropped: X maps them to zero, so they carry no canonical variate (this is what
    makes d > N rank-limited rather than singular)."""
    gram = xc.T @ xc
    eigvals, eigvecs = np.linalg.eigh(gram)
    keep = eigvals > EIGEN_FLOOR * max(eigvals.max(), 0.0)
    if not keep.any():
        raise ValueError("a feature matrix is constant over the frames (zero variance); CCA is undefined")
    ridge = epsilon * np.trace(gram) / gram.shape[0]  # scale-free: epsilon is relative to the mean variance
    return eigvecs[:, keep] / np.sqrt(eigvals[keep] + ridge)


def fit_cca(x: np.ndarray, y: np.ndarray, epsilon: float = 0.0) -> CCAFit:
    """Canonical directions of `x [N, d1]` and `y [N, d2]`, min(d1, d2, rank) of them, strongest first.

    Whitening each side by its (ridge-regularised) covariance and taking the SVD of the whitened cross-covariance is
    the standard stable form of CCA (eigh and SVD in float64, no explicit inverse)."""
    x, y = _check_pair(x, y)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    wx, wy = _whitener(xc, epsilon), _whitener(yc, epsilon)
    u, _, vt = np.linalg.svd((xc @ wx).T @ (yc @ wy), full_matrices=False)
    return CCAFit(x_mean, y_mean, wx @ u, wy @ vt.T)


def _unit_columns(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    norms = np.linalg.norm(a, axis=0)
    return a / np.where(norms > 0, norms, 1.0)


def _score(fit: CCAFit, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlations rho [K] of the projected variates of `x`, `y` (clipped to [0, 1]) and the PWCCA weights alpha [K].

    alpha_i = sum_j |<h_i, x_j>|, h_i the unit-norm x variate in sample space, x_j the centred columns of x: how much
    of x each direction accounts for (Morcos et al., eq. 3)."""
    xc = x - fit.x_mean
    h = _unit_columns(xc @ fit.x_dirs)
    g = _unit_columns((y - fit.y_mean) @ fit.y_dirs)
    rho = np.clip((h * g).sum(0), 0.0, 1.0)
    alpha = np.abs(h.T @ xc).sum(1)  # h is centred, so this is <h_i, x_j> for x's columns centred too
    return rho, alpha


def _weighted(rho: np.ndarray, alpha: np.ndarray) -> float:
    total = alpha.sum()
    return float((alpha * rho).sum() / total) if total > 0 else 0.0


def canonical_correlations(x: np.ndarray, y: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """Canonical correlations `[K]` of `x [N, d1]` and `y [N, d2]`, K = min(d1, d2, rank), in [0, 1].

    Each is the correlation of the fitted pair of variates on these frames, so it is 1 for identical inputs at any
    epsilon (the regularised problem's singular values would be shrunk by the ridge instead)."""
    x, y = _check_pair(x, y)
    return _score(fit_cca(x, y, epsilon), x, y)[0]


def pwcca(x: np.ndarray, y: np.ndarray, epsilon: float = 0.0) -> float:
    """Projection-weighted CCA (Morcos et al. 2018) of `x [N, d1]` and `y [N, d2]`: sum(alpha rho) / sum(alpha).

    In-sample: with d1 + d2 near N it is inflated by chance correlations; report `held_out_pwcca` for that case."""
    x, y = _check_pair(x, y)
    return _weighted(*_score(fit_cca(x, y, epsilon), x, y))


def held_out_pwcca(
    x_fit: np.ndarray, y_fit: np.ndarray, x_held: np.ndarray, y_held: np.ndarray, epsilon: float = 0.0
) -> float:
    """PWCCA of `x_held [M, d1]`, `y_held [M, d2]` under directions fitted on `x_fit [N, d1]`, `y_fit [N, d2]`.

    Correlations that are noise on the fit frames do not carry over, so this is not inflated by over-fitting."""
    x_held, y_held = _check_pair(x_held, y_held)
    fit = fit_cca(x_fit, y_fit, epsilon)
    if x_held.shape[1] != fit.x_dirs.shape[0] or y_held.shape[1] != fit.y_dirs.shape[0]:
        raise ValueError(
            f"held-out frames have {x_held.shape[1]} and {y_held.shape[1]} dimensions, the fit frames "
            f"{fit.x_dirs.shape[0]} and {fit.y_dirs.shape[0]}"
        )
    return _weighted(*_score(fit, x_held, y_held))


def choose_epsilon(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_held: np.ndarray,
    y_held: np.ndarray,
    grid: Sequence[float] = DEFAULT_GRID,
) -> float:
    """The ridge of `grid` with the largest held-out PWCCA (directions fitted on the fit frames); ties go to the
    earlier (smaller) value."""
    if not grid:
        raise ValueError("grid of epsilons is empty")
    scores = [held_out_pwcca(x_fit, y_fit, x_held, y_held, eps) for eps in grid]
    return float(grid[int(np.argmax(scores))])


def frame_average_weights(num_in: int, num_out: int, stride: float) -> np.ndarray:
    """`[num_out, num_in]` rows that map frames at one rate onto frames `stride` input frames apart.

    Output frame t is centred on input frame t * stride (both start at time 0 with the same 25 ms window); a triangle
    of half-width max(stride, 1) input frames averages when downsampling (anti-aliased) and linearly interpolates
    when upsampling. Centres past the last input frame repeat it."""
    centres = np.minimum(np.arange(num_out) * stride, num_in - 1)
    width = max(stride, 1.0)
    weights = np.clip(1.0 - np.abs(np.arange(num_in)[None, :] - centres[:, None]) / width, 0.0, None)
    return weights / weights.sum(1, keepdims=True)


def log_mel(wav: torch.Tensor, sample_rate: int, frame_rate: float, num_frames: int, n_mels: int = 80) -> np.ndarray:
    """Kaldi log-mel filterbanks of `wav [T]` (25 ms windows, 10 ms hop) on a layer's frames: `[num_frames, n_mels]`.

    Pasad et al. compare each layer with the log-mel input; the 100 Hz mel frames are averaged onto the layer's
    `frame_rate` (50 Hz for HuBERT/wav2vec 2.0, whose CNN also sees 25 ms every 20 ms) so frame t of both covers
    the same stretch of audio."""
    wav = torch.as_tensor(wav, dtype=torch.float32).reshape(-1)
    window = int(round(0.025 * sample_rate))
    if wav.numel() < window:
        raise ValueError(
            f"{wav.numel()} samples is shorter than one 25 ms window ({window} samples at {sample_rate} Hz)"
        )
    if frame_rate <= 0 or num_frames <= 0:
        raise ValueError(f"frame_rate and num_frames must be positive, got {frame_rate} and {num_frames}")
    mel = kaldi.fbank(
        wav[None] * 32768.0,  # Kaldi computes on 16-bit sample values (as upstream.surface.Fbank)
        num_mel_bins=n_mels,
        sample_frequency=float(sample_rate),
        frame_length=25.0,
        frame_shift=10.0,
        dither=0.0,
    ).double()
    weights = frame_average_weights(mel.shape[0], num_frames, 100.0 / frame_rate)
    return weights @ mel.numpy()
