"""Anomaly scorers on toy embeddings whose cosine distances are known by hand: kNN is domain-wise (the smaller of
the source and target distances), k-means keeps every target clip as a prototype; the gamma threshold recovers the
quantile of a known gamma distribution."""

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch

from downstream.asd import (
    SCORERS,
    KMeansScorer,
    KnnScorer,
    build_scorer,
    cosine_distance,
    fit_gamma,
    gamma_threshold,
    spherical_kmeans,
)

SQRT_HALF = math.sqrt(0.5)


def test_cosine_distance_is_pairwise_and_ignores_length():
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    expected = [[0.0, 1.0, 2.0], [1 - SQRT_HALF, 1 - SQRT_HALF, 1 + SQRT_HALF]]
    assert torch.allclose(cosine_distance(x, y), torch.tensor(expected), atol=1e-6)


def test_knn_scores_a_training_point_zero_and_averages_k_neighbours():
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    test = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
    one = KnnScorer(k=1).fit(source, target).score(test)
    # [1, 0] is a source point; [-1, -1] is 45 degrees from both target points.
    assert torch.allclose(one, torch.tensor([0.0, 1 - SQRT_HALF]), atol=1e-6)
    two = KnnScorer(k=2).fit(source, target).score(test)
    # k=2: source distances of [1, 0] are 0 and 1 -> 0.5 (target: 2 and 1 -> 1.5); [-1, -1] -> 1 - 1/sqrt(2) twice.
    assert torch.allclose(two, torch.tensor([0.5, 1 - SQRT_HALF]), atol=1e-6)


def test_knn_takes_the_minimum_over_domains_not_the_pooled_neighbours():
    source = np.array([[1.0, 0.0], [-1.0, 0.0]])
    target = np.array([[0.6, 0.8], [-0.6, -0.8]])
    # Source distances of [1, 0]: 0 and 2 (mean 1); target: 0.4 and 1.6 (mean 1). Pooled 2-NN would give 0.2.
    score = KnnScorer(k=2).fit(source, target).score(np.array([[1.0, 0.0]]))
    assert score.tolist() == pytest.approx([1.0], abs=1e-6)


def test_knn_without_target_uses_the_source_only():
    scorer = KnnScorer().fit(torch.tensor([[1.0, 0.0]]))
    assert scorer.score(torch.tensor([[0.0, 1.0], [3.0, 0.0]])).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_knn_refuses_fewer_embeddings_than_k_and_unfitted_scoring():
    with pytest.raises(ValueError, match=r"k=3 needs at least 3 embeddings per domain; got \{'target': 2\}"):
        KnnScorer(k=3).fit(torch.randn(5, 4), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="not fitted"):
        KnnScorer().score(torch.randn(2, 4))
    with pytest.raises(ValueError, match="size 3; the scorer was fitted on 4"):
        KnnScorer().fit(torch.randn(5, 4)).score(torch.randn(2, 3))


def clusters(generator: torch.Generator, directions: torch.Tensor, per_cluster: int, spread: float) -> torch.Tensor:
    noise = spread * torch.randn(directions.size(0), per_cluster, directions.size(1), generator=generator)
    return (directions[:, None, :] + noise).reshape(-1, directions.size(1))


def test_spherical_kmeans_finds_separated_clusters_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:4]
    x = clusters(generator, directions, 10, 0.05)
    centres, assignment = spherical_kmeans(x, 4, seed=1)
    # Each true direction has one centre within a few degrees, and each cluster's points share one label.
    assert (centres @ directions.T).amax(0).min() > 0.99
    assert all(len(set(assignment[i * 10 : (i + 1) * 10].tolist())) == 1 for i in range(4))
    assert torch.allclose(centres.norm(dim=1), torch.ones(4))
    again, _ = spherical_kmeans(x, 4, seed=1)
    assert torch.equal(centres, again)


def test_kmeans_prototypes_are_the_centres_plus_every_target_embedding():
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(50, 8, generator=generator), torch.randn(3, 8, generator=generator)
    scorer = KMeansScorer().fit(source, target)
    assert scorer.centres.shape == (16, 8)
    assert scorer.prototypes.shape == (19, 8)
    assert scorer.score(target * 5).tolist() == pytest.approx([0.0] * 3, abs=1e-6)  # each target is a prototype
    # The score is the distance to the nearest prototype, so never above the distance to the nearest centre.
    test = torch.randn(20, 8, generator=generator)
    assert torch.allclose(scorer.score(test), cosine_distance(test, scorer.prototypes).amin(1))
    assert (scorer.score(test) <= cosine_distance(test, scorer.centres).amin(1) + 1e-6).all()


def test_kmeans_refuses_fewer_source_embeddings_than_centres():
    with pytest.raises(ValueError, match="16 k-means centres need at least 16 embeddings; got 10"):
        KMeansScorer().fit(torch.randn(10, 4))
    assert KMeansScorer(num_centers=10).fit(torch.randn(10, 4)).prototypes.shape == (10, 4)


def test_registry_builds_scorers_and_names_the_choices():
    assert set(SCORERS) == {"knn", "kmeans"}
    assert isinstance(build_scorer("knn", k=2), KnnScorer) and build_scorer("knn", k=2).k == 2
    assert build_scorer("kmeans", num_centers=4).num_centers == 4
    with pytest.raises(ValueError, match=r"unknown anomaly scorer 'lof'; choose from \['kmeans', 'knn'\]"):
        build_scorer("lof")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_centers'\] for anomaly scorer 'knn'"):
        build_scorer("knn", num_centers=3)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_each_scorers_config_class_has_its_constructors_options_and_defaults(name):
    scorer = SCORERS[name]
    options = {p.name: p.default for p in inspect.signature(scorer).parameters.values()}
    assert {field.name: field.default for field in dataclasses.fields(scorer.config_class)} == options
    config = scorer.config_class()
    assert vars(build_scorer(name, **dataclasses.asdict(config))).items() >= dataclasses.asdict(config).items()


def gamma2_quantile(probability: float) -> float:
    """Quantile of Gamma(shape 2, scale 1), whose CDF is 1 - exp(-y) (1 + y), by bisection (independent of torch)."""
    low, high = 0.0, 50.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if 1 - math.exp(-middle) * (1 + middle) < probability else (low, middle)
    return low


@pytest.mark.parametrize(("shape", "scale", "quantile"), [(2.0, 0.05, gamma2_quantile(0.9)), (1.0, 0.3, math.log(10))])
def test_gamma_threshold_recovers_the_true_90th_percentile(shape, scale, quantile):
    torch.manual_seed(0)
    samples = torch.distributions.Gamma(torch.tensor(shape), torch.tensor(1 / scale)).sample((20000,))
    fitted_shape, fitted_scale = fit_gamma(samples)
    assert fitted_shape == pytest.approx(shape, rel=0.03)
    assert fitted_shape * fitted_scale == pytest.approx(float(samples.double().mean()), rel=1e-9)
    assert gamma_threshold(samples) == pytest.approx(quantile * scale, rel=0.02)
    assert gamma_threshold(samples.numpy(), percentile=0.5) < gamma_threshold(samples)


def test_gamma_threshold_refuses_non_positive_scores_and_bad_percentiles():
    with pytest.raises(ValueError, match=r"1 of 3 scores are <= 0 .*Score held-out normal clips"):
        gamma_threshold([0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="percentile must be a fraction"):
        gamma_threshold([0.1, 0.2], percentile=90)
    with pytest.raises(ValueError, match="nearly"):
        gamma_threshold([0.2, 0.2, 0.2])
