"""Anomalous sound detection (DCASE Task 2): the scorers of clip embeddings, and FeatEx's trained head.

A scorer is `fit` on normal training embeddings and scores test embeddings `[N, E]` -> `[N]`, higher = more
anomalous; scorers train nothing and read no files. The embeddings come from the pooled upstream features
(`PooledEmbedding`), a trained embedding head, or FeatEx (`SpectrumEmbedding` + `FeatExHead`, feature exchange over
an SSL branch and a spectrum branch).

Both scorers keep the source and target domains apart, as first-shot DCASE 2023 needs: the target domain has only
a handful of normal clips (10 per section), which a pooled model of the ~990 source clips would drown.
- `KnnScorer`: mean cosine distance to the k nearest training embeddings, computed against each domain separately
  and the smaller one kept (the DCASE 2023 baseline's domain-wise kNN; Wilkinghoff's k = 1 setting).
- `KMeansScorer`: spherical k-means with 16 centres on the source embeddings plus every target embedding as its
  own prototype; the score is the cosine distance to the nearest prototype (Wilkinghoff, DCASE 2023).
`gamma_threshold` turns training scores into a decision threshold, as the DCASE baselines do.

Embeddings may be numpy arrays or tensors; scores come back as float tensors on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from upstream.names import Registry

from .clustering import spherical_kmeans
from .pooling import build_pooling
from .speaker import length_normalize

SCORERS: Registry[AnomalyScorer] = Registry("anomaly scorer")
register = SCORERS.register


def build_scorer(name: str, **options) -> AnomalyScorer:
    """`options` are the scorer's constructor arguments, e.g. `build_scorer("knn", k=2)`."""
    return SCORERS.build(name, **options)


def as_embeddings(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """A float `[N, E]` CPU tensor (float32 unless given float64), checked for shape and finiteness."""
    tensor = torch.as_tensor(x).detach().cpu()
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.dim() != 2:
        raise ValueError(f"{what} must be embeddings [N, E]; got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what} contain non-finite values")
    return tensor


def cosine_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Pairwise 1 - cosine similarity: `x [N, E]`, `y [M, E]` -> `[N, M]`, in [0, 2] (rounding clamped at 0)."""
    x, y = as_embeddings(x, "x"), as_embeddings(y, "y")
    if x.size(1) != y.size(1):
        raise ValueError(f"embedding sizes differ: {x.size(1)} and {y.size(1)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    similarity = length_normalize(x.to(dtype)) @ length_normalize(y.to(dtype)).T
    return (1 - similarity).clamp_(0, 2)


class AnomalyScorer:
    """Fit on normal training embeddings of one section (source, and target if any); score test embeddings.

    `config_class` is a dataclass of the constructor's options (same names and defaults), for typed configs."""

    name: str
    config_class: type

    def fit(self, source: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray | None = None) -> AnomalyScorer:
        raise NotImplementedError

    def score(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _check_fitted(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        if not getattr(self, "fitted", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(source, target) first")
        x = as_embeddings(x, "test embeddings")
        if x.size(1) != self.embedding_size:
            raise ValueError(f"test embeddings have size {x.size(1)}; the scorer was fitted on {self.embedding_size}")
        return x


def _domains(source, target) -> dict[str, torch.Tensor]:
    domains = {"source": as_embeddings(source, "source embeddings")}
    if target is not None:
        domains["target"] = as_embeddings(target, "target embeddings")
    sizes = {name: e.size(1) for name, e in domains.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"source and target embedding sizes differ: {sizes}")
    for name, embeddings in domains.items():
        if embeddings.size(0) == 0:
            raise ValueError(f"no {name} embeddings to fit on (pass target=None for none)")
    return domains


@dataclass
class KnnConfig:
    """Options of the knn scorer (`KnnScorer`).

    `k`: how many nearest training embeddings of each domain are averaged."""

    k: int = 1


@dataclass
class KMeansConfig:
    """Options of the kmeans scorer (`KMeansScorer`).

    `num_centers` source centres; the k-means `seed` and `max_iterations`."""

    num_centers: int = 16
    seed: int = 0
    max_iterations: int = 100


@register("knn")
class KnnScorer(AnomalyScorer):
    """Mean cosine distance to the k nearest training embeddings of each domain; the smaller of the two domains.

    Taking the minimum over domains means a test clip need only look normal for one of them, so the few target
    clips are not outvoted by the many source clips.
    """

    config_class = KnnConfig

    def __init__(self, k: int = 1) -> None:
        if k < 1:
            raise ValueError(f"k must be positive; got {k}")
        self.k = k
        self.fitted = False

    def fit(self, source, target=None) -> KnnScorer:
        domains = _domains(source, target)
        small = {name: e.size(0) for name, e in domains.items() if e.size(0) < self.k}
        if small:
            raise ValueError(f"k={self.k} needs at least {self.k} embeddings per domain; got {small} (lower k)")
        self.embeddings = {name: length_normalize(e) for name, e in domains.items()}
        self.embedding_size = domains["source"].size(1)
        self.fitted = True
        return self

    def score(self, x) -> torch.Tensor:
        """`x [N, E]` -> `[N]`."""
        x = self._check_fitted(x)
        per_domain = [
            cosine_distance(x, train).topk(self.k, dim=1, largest=False).values.mean(1)
            for train in self.embeddings.values()
        ]
        return torch.stack(per_domain).amin(0)


@register("kmeans")
class KMeansScorer(AnomalyScorer):
    """Cosine distance to the nearest prototype: `num_centers` spherical k-means centres of the source embeddings,
    plus every target embedding as its own prototype (too few to cluster). Fewer source embeddings than centres
    is an error: lower `num_centers`, or use `KnnScorer`, which then keeps every embedding."""

    config_class = KMeansConfig

    def __init__(self, num_centers: int = 16, seed: int = 0, max_iterations: int = 100) -> None:
        if num_centers < 1 or max_iterations < 1:
            raise ValueError(f"num_centers and max_iterations must be positive; got {num_centers}, {max_iterations}")
        self.num_centers, self.seed, self.max_iterations = num_centers, seed, max_iterations
        self.fitted = False

    def fit(self, source, target=None) -> KMeansScorer:
        domains = _domains(source, target)
        self.centres, _ = spherical_kmeans(domains["source"], self.num_centers, self.seed, self.max_iterations)
        extra = [length_normalize(domains["target"])] if "target" in domains else []
        self.prototypes = torch.cat([self.centres, *extra])
        self.embedding_size = domains["source"].size(1)
        self.fitted = True
        return self

    def score(self, x) -> torch.Tensor:
        """`x [N, E]` -> `[N]`."""
        x = self._check_fitted(x)
        return cosine_distance(x, self.prototypes).amin(1)


def fit_gamma(scores: torch.Tensor | np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Maximum-likelihood `(shape, scale)` of a gamma distribution (location fixed at 0) for positive scores.

    The shape solves log(a) - digamma(a) = s with s = log(mean) - mean(log x) > 0; Minka's closed-form estimate
    ("Estimating a Gamma distribution", 2002) starts Newton's method on it, which then converges in a few steps;
    the scale is mean / shape. The DCASE baselines call scipy's `gamma.fit`, which also fits a location; scores
    here are distances >= 0, so the location is fixed at 0 (scipy is not a dependency).
    """
    x = torch.as_tensor(scores).detach().cpu().double().flatten()
    if x.numel() < 2:
        raise ValueError(f"fitting a gamma distribution needs at least 2 scores; got {x.numel()}")
    if not torch.isfinite(x).all():
        raise ValueError("scores contain non-finite values")
    if (x <= 0).any():
        raise ValueError(
            f"{int((x <= 0).sum())} of {x.numel()} scores are <= 0 (smallest {float(x.min()):.3g}); a gamma "
            "distribution lives on positive values. Score held-out normal clips (a training clip scored against "
            "itself by kNN gives 0), or shift the scores"
        )
    mean = x.mean()
    s = float(mean.log() - x.log().mean())
    if s <= 1e-12:
        raise ValueError("all scores are (nearly) equal: the gamma shape is unbounded")
    a = torch.tensor((3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s), dtype=torch.float64)
    for _ in range(iterations):
        # Newton on f(a) = log(a) - digamma(a) - s, with f'(a) = 1/a - trigamma(a).
        step = (a.log() - torch.special.digamma(a) - s) / (1 / a - torch.special.polygamma(1, a))
        a = (a - step).clamp(min=a / 10)
        if abs(float(step)) <= 1e-12 * float(a):
            break
    return float(a), float(mean / a)


def gamma_threshold(train_scores: torch.Tensor | np.ndarray, percentile: float = 0.9) -> float:
    """Decision threshold: the `percentile` quantile of a gamma distribution fitted to normal training scores.

    The DCASE baselines' rule (90th percentile): a test clip scoring above it is declared anomalous. torch has the
    regularised incomplete gamma function but not its inverse, so the quantile is found by bisection on
    `torch.special.gammainc(shape, x / scale)`.
    """
    if not 0 < percentile < 1:
        raise ValueError(f"percentile must be a fraction in (0, 1), e.g. 0.9; got {percentile}")
    shape, scale = fit_gamma(train_scores)
    a = torch.tensor(shape, dtype=torch.float64)

    def cdf(value: float) -> float:
        return float(torch.special.gammainc(a, torch.tensor(value / scale, dtype=torch.float64)))

    low, high = 0.0, shape * scale  # the mean
    while cdf(high) < percentile:
        low, high = high, 2 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if cdf(middle) < percentile else (low, middle)
    return 0.5 * (low + high)


class PooledEmbedding(nn.Module):
    """The anomaly-detection embedding: mask-aware pooling of `features [B, T, D]` then a linear map to
    `embedding_size` (256 by default), trained through an auxiliary classifier of machine, section and attributes.
    With `embedding_size` 0 it is the pooled vector itself, with no parameters: the frozen-embedding baseline."""

    def __init__(self, input_size: int, embedding_size: int = 256, pooling: str = "mean_std") -> None:
        super().__init__()
        self.pooling = build_pooling(pooling, input_size)
        self.projection = nn.Linear(self.pooling.output_size, embedding_size) if embedding_size else None
        self.embedding_size = embedding_size or self.pooling.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(features, lengths)
        return pooled if self.projection is None else self.projection(pooled)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self(features, lengths)


class SpectrumEmbedding(nn.Module):
    """FeatEx's second branch: an embedding of the magnitude spectrum of the whole clip, `wavs [B, S]`,
    `wav_lengths [B]` -> `[B, embedding_size]`.

    Each clip's spectrum |rfft(x)| over its valid samples (scaled by 1/sqrt(length), so loudness does not depend on
    duration) is averaged into `num_bins` equal frequency bands, whatever the clip's length, then log-compressed and
    standardised per band. Its fine frequency resolution sees what a frame-level model averages away: a detuned
    harmonic, a narrow whine. Strided 1-d convolutions over frequency then a linear map keep where in the spectrum
    a pattern sits, which is the point (Wilkinghoff's spectrum branch: convolutions over the spectrum, flattened).
    """

    # (channels, kernel, stride) of the convolutions over frequency: 2048 bands -> 64 channels x 32 positions.
    LAYERS = ((32, 16, 4), (64, 8, 4), (64, 8, 2))

    def __init__(self, embedding_size: int = 128, num_bins: int = 2048) -> None:
        super().__init__()
        if embedding_size < 1 or num_bins < 64:
            raise ValueError(f"embedding_size must be positive and num_bins >= 64; got {embedding_size}, {num_bins}")
        self.num_bins, self.embedding_size = num_bins, embedding_size
        self.input_norm = nn.BatchNorm1d(num_bins)
        layers, width = [], 1
        for channels, kernel, stride in self.LAYERS:
            padding = (kernel - stride) // 2
            layers += [nn.Conv1d(width, channels, kernel, stride, padding), nn.BatchNorm1d(channels), nn.ReLU()]
            width = channels
        self.convolutions = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.convolutions(torch.zeros(2, 1, num_bins)).flatten(1).size(1)
        self.projection = nn.Linear(flat, embedding_size)

    def spectra(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """`[B, num_bins]` log band magnitudes, each clip from its own valid samples (padding never enters)."""
        rows = []
        for wav, length in zip(wavs.float(), wav_lengths.tolist(), strict=True):
            magnitude = torch.fft.rfft(wav[: int(length)]).abs() / math.sqrt(max(int(length), 1))
            rows.append(nn.functional.adaptive_avg_pool1d(magnitude[None, None], self.num_bins)[0, 0])
        return torch.stack(rows).clamp(min=1e-8).log()

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(self.spectra(wavs, wav_lengths))
        return self.projection(self.convolutions(x[:, None]).flatten(1))


@dataclass
class FeatExOutput:
    """`embeddings [B, E]` (both branches of each clip: what anomaly scoring reads), `logits [B, 2C]` of the
    classifier on the possibly exchanged pairs, and `partners [B]`: the clip whose feature-branch embedding each row
    carries (the row itself when not exchanged)."""

    embeddings: torch.Tensor
    logits: torch.Tensor
    partners: torch.Tensor


class FeatExHead(nn.Module):
    """Feature exchange (FeatEx; Wilkinghoff, "Self-supervised learning for anomalous sound detection", ICASSP 2024).

    Two branches embed each clip: the pooled SSL features and the clip's magnitude spectrum. In training, with
    probability `exchange_probability` a clip's feature-branch embedding is replaced by another clip's of the batch,
    and the classifier, over twice the classes, must say both which classes the halves come from and whether they
    were exchanged (`featex_targets`, which `loss` gives the criterion; classifier and criterion are a pair from
    `downstream.losses.build_loss`). Telling matching pairs from exchanged ones is self-supervised: it needs no
    labels beyond the auxiliary classes and makes the embedding keep what ties the two views of one clip together.
    The anomaly embedding is the two branch embeddings of a clip side by side, each of unit length.
    """

    reads_audio = True  # SSLTaskModule passes the waveforms too

    def __init__(
        self,
        feature_branch: PooledEmbedding,
        spectrum_branch: SpectrumEmbedding,
        classifier: nn.Module,
        criterion: nn.Module,
        exchange_probability: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0 <= exchange_probability <= 1:
            raise ValueError(f"exchange_probability must be in [0, 1]; got {exchange_probability}")
        self.feature_branch, self.spectrum_branch = feature_branch, spectrum_branch
        self.classifier, self.criterion = classifier, criterion
        self.exchange_probability = exchange_probability
        self.embedding_size = feature_branch.embedding_size + spectrum_branch.embedding_size

    def embed(
        self, features: torch.Tensor, lengths: torch.Tensor, wavs: torch.Tensor, wav_lengths: torch.Tensor
    ) -> torch.Tensor:
        return torch.cat(self._branches(features, lengths, wavs, wav_lengths), dim=1)

    def _branches(self, features, lengths, wavs, wav_lengths) -> tuple[torch.Tensor, torch.Tensor]:
        # Each half is length-normalised: otherwise the spectrum branch's larger norm decides every cosine, and
        # the classifier and the scorer hardly see the SSL features (measured on the mini machines).
        first = length_normalize(self.feature_branch(features, lengths))
        return first, length_normalize(self.spectrum_branch(wavs, wav_lengths))

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, wavs: torch.Tensor, wav_lengths: torch.Tensor
    ) -> FeatExOutput:
        first, second = self._branches(features, lengths, wavs, wav_lengths)
        batch = first.size(0)
        partners = torch.arange(batch, device=first.device)
        if self.training and batch > 1:
            exchange = torch.rand(batch, device=first.device) < self.exchange_probability
            others = (partners + torch.randint(1, batch, (batch,), device=first.device)) % batch  # never itself
            partners = torch.where(exchange, others, partners)
        pairs = torch.cat([first[partners], second], dim=1)
        return FeatExOutput(torch.cat([first, second], dim=1), self.classifier(pairs), partners)

    def loss(self, outputs: FeatExOutput, targets: torch.Tensor) -> torch.Tensor:
        """The criterion on the pairs' logits `[B, 2C]` against `featex_targets` of the clips' classes `[B]`."""
        soft = featex_targets(targets, outputs.partners, outputs.logits.size(1) // 2)
        return self.criterion(outputs.logits, soft)


def featex_targets(targets: torch.Tensor, partners: torch.Tensor, num_classes: int) -> torch.Tensor:
    """FeatEx's soft targets `[B, 2C]`: a matching pair keeps its class in the first C columns; an exchanged pair
    (feature branch from clip `partners[i]`, spectrum from clip i) puts half its mass on each clip's class in the
    second C columns (all of it when both are of one class)."""
    batch = targets.size(0)
    rows = torch.arange(batch, device=targets.device)
    exchanged = partners != rows
    soft = torch.zeros(batch, 2 * num_classes, device=targets.device)
    soft[rows[~exchanged], targets[~exchanged]] = 1.0
    for classes in (targets, targets[partners]):  # half to the spectrum's clip, half to the feature branch's
        soft.index_put_((rows[exchanged], num_classes + classes[exchanged]), torch.tensor(0.5), accumulate=True)
    return soft
