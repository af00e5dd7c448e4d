"""PWCCA (recipes/analysis/cca.py) and k-means mutual information (recipes/analysis/mi.py) on synthetic data whose
answer is known: identical, linearly related, independent and partly shared features; labels and their refinements."""

import math

import numpy as np
import pytest
import torch

from downstream.clustering import assign, minibatch_kmeans
from recipes.analysis.cca import (
    canonical_correlations,
    choose_epsilon,
    frame_average_weights,
    held_out_pwcca,
    log_mel,
    pwcca,
)
from recipes.analysis.mi import cluster_mi, normalized_mutual_information


def gaussian(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# --- PWCCA ---


@pytest.mark.parametrize("epsilon", [0.0, 1e-2])
def test_pwcca_of_identical_inputs_is_one(epsilon):
    x = gaussian(0, 500, 12) * np.arange(1, 13)  # unequal scales, as real features have
    assert pwcca(x, x, epsilon) == pytest.approx(1.0, abs=1e-6)


def test_pwcca_is_one_under_an_invertible_linear_map():
    x = gaussian(1, 1000, 16)
    transform = gaussian(2, 16, 16) + 4 * np.eye(16)
    assert pwcca(x, x @ transform + 3.0) == pytest.approx(1.0, abs=1e-6)
    assert pwcca(x @ transform, x) == pytest.approx(1.0, abs=1e-6)


def test_pwcca_of_independent_noise_is_near_zero_and_falls_with_more_frames():
    small = pwcca(gaussian(3, 500, 10), gaussian(4, 500, 10))
    large = pwcca(gaussian(3, 5000, 10), gaussian(4, 5000, 10))
    assert large < 0.1
    assert large < small / 2  # chance correlations shrink like 1 / sqrt(N)


def test_a_planted_shared_component_gives_a_value_in_between():
    shared = gaussian(5, 4000, 3)
    x = np.hstack([shared, gaussian(6, 4000, 7)])
    y = np.hstack([shared + 0.5 * gaussian(7, 4000, 3), gaussian(8, 4000, 7)])
    rho = canonical_correlations(x, y)
    assert rho.shape == (10,)
    assert np.all(np.diff(rho) <= 1e-12) and rho[0] <= 1.0 and rho[-1] >= 0.0
    assert np.all(rho[:3] > 0.85) and np.all(rho[3:] < 0.1)  # corr(z, z + noise/2) = 1 / sqrt(1.25) = 0.894
    assert 0.15 < pwcca(x, y) < 0.6


def test_more_dimensions_than_frames_is_rank_limited():
    x, y = gaussian(9, 40, 100), gaussian(10, 40, 60)
    rho = canonical_correlations(x, y)
    assert len(rho) == 39  # centring leaves N - 1 = 39 directions
    assert np.all(np.isfinite(rho)) and rho.min() > 0.999  # d > N: any two spans correlate perfectly in-sample


def test_held_out_pwcca_of_noise_is_near_zero_while_in_sample_is_inflated():
    x, y = gaussian(11, 1200, 60), gaussian(12, 1200, 60)
    in_sample = pwcca(x[:200], y[:200])
    held_out = held_out_pwcca(x[:200], y[:200], x[200:], y[200:])
    assert in_sample > 0.3
    assert held_out < 0.05


def test_choose_epsilon_regularises_when_dimensions_approach_frames():
    # Five shared directions buried in 150 noisy dimensions per side, 220 fit frames: unregularised CCA fits noise.
    rng = np.random.default_rng(13)
    n, d = 1220, 150
    shared = rng.standard_normal((n, 5))
    x = shared @ rng.standard_normal((5, d)) + 2.0 * rng.standard_normal((n, d))
    y = shared @ rng.standard_normal((5, d)) + 2.0 * rng.standard_normal((n, d))
    fit, held = slice(0, 220), slice(220, n)
    epsilon = choose_epsilon(x[fit], y[fit], x[held], y[held])
    assert epsilon > 0
    unregularised = held_out_pwcca(x[fit], y[fit], x[held], y[held], 0.0)
    assert held_out_pwcca(x[fit], y[fit], x[held], y[held], epsilon) > unregularised + 0.05


def test_frame_average_weights_average_onto_a_lower_rate_and_interpolate_onto_a_higher():
    down = frame_average_weights(10, 5, 2.0)  # 100 Hz -> 50 Hz: a [1/4, 1/2, 1/4] triangle around frame 2t
    np.testing.assert_allclose(down[2, 3:6], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(down.sum(1), 1.0)
    up = frame_average_weights(4, 7, 0.5)  # 100 Hz -> 200 Hz: halfway frames are the mean of their neighbours
    np.testing.assert_allclose(up[3, 1:3], [0.5, 0.5])


def test_log_mel_puts_a_440_hz_tone_in_its_mel_band_and_in_the_second_half_of_the_frames():
    sample_rate, seconds = 16000, 2.0
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    wav = torch.where(t >= 1.0, 0.5 * torch.sin(2 * math.pi * 440 * t), torch.zeros_like(t))
    wav = wav + 1e-4 * torch.randn(len(t), generator=torch.Generator().manual_seed(0))
    num_frames = 99  # a HuBERT-like 50 Hz layer: 1 + (32000 - 400) // 320
    mel = log_mel(wav, sample_rate, frame_rate=50.0, num_frames=num_frames)
    assert mel.shape == (num_frames, 80) and np.all(np.isfinite(mel))
    energy = mel.mean(1)
    assert energy[52:].min() > energy[:48].max() + 3  # frame t covers [20t, 20t + 25] ms: the tone starts at t = 50
    # Kaldi's mel bins are equally spaced on 1127 ln(1 + f / 700) between 20 Hz and 8 kHz, bin i centred at i + 1.
    mel_scale = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    band = (mel_scale(440) - mel_scale(20)) / ((mel_scale(8000) - mel_scale(20)) / 81) - 1
    assert abs(int(mel[60:].mean(0).argmax()) - band) <= 1


# --- k-means mutual information ---


def test_nmi_is_one_for_the_labels_themselves_a_relabelling_and_a_refinement():
    labels = np.random.default_rng(20).choice(["aa", "iy", "s", "t"], size=2000)
    assert normalized_mutual_information(labels, labels) == pytest.approx(1.0, abs=1e-9)
    relabel = {"aa": 7, "iy": 0, "s": 3, "t": 12}
    assert normalized_mutual_information([relabel[p] for p in labels], labels) == pytest.approx(1.0, abs=1e-9)
    codes = np.unique(labels, return_inverse=True)[1]
    finer = codes * 5 + np.random.default_rng(21).integers(5, size=len(labels))
    assert normalized_mutual_information(finer, labels) == pytest.approx(1.0, abs=1e-9)
    assert normalized_mutual_information(labels, finer) < 0.7  # not symmetric: the labels do not fix the clusters


def test_nmi_of_random_clusters_is_near_zero():
    rng = np.random.default_rng(22)
    labels, clusters = rng.integers(10, size=20000), rng.integers(50, size=20000)
    assert 0.0 <= normalized_mutual_information(clusters, labels) < 0.02


def test_nmi_of_a_known_joint_distribution():
    # Two equiprobable labels, each cluster right 3 times in 4: I = ln 2 - H(3/4), H(label) = ln 2.
    labels = np.array([0, 0, 0, 1] * 100 + [1, 1, 1, 0] * 100)
    clusters = np.array([0] * 400 + [1] * 400)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert normalized_mutual_information(clusters, labels) == pytest.approx((math.log(2) - h) / math.log(2))


def test_nmi_refuses_a_single_label():
    with pytest.raises(ValueError, match="all 5 labels are 'sil'"):
        normalized_mutual_information([0, 1, 2, 3, 4], ["sil"] * 5)


def blobs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.array([[0.0] * 8, [10.0] * 8, [0.0] * 4 + [10.0] * 4])
    labels = rng.integers(3, size=n)
    return means[labels] + rng.standard_normal((n, 8)), labels


def test_minibatch_kmeans_recovers_three_separated_blobs_and_is_deterministic():
    x, labels = blobs(23, 6000)
    centres = minibatch_kmeans(x, 3, seed=1, batch_size=256, iterations=50)
    assert normalized_mutual_information(assign(x, centres), labels) > 0.99
    np.testing.assert_array_equal(centres, minibatch_kmeans(x, 3, seed=1, batch_size=256, iterations=50))
    x_eval, labels_eval = blobs(24, 3000)
    assert cluster_mi(x, x_eval, labels_eval, k=3, seed=1) > 0.99


def test_assign_in_chunks_matches_the_full_distance_matrix(monkeypatch):
    x, centres = gaussian(25, 1000, 6), gaussian(26, 7, 6)
    expected = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    monkeypatch.setattr("downstream.clustering.ASSIGN_CHUNK", 70)  # 10 frames a chunk
    np.testing.assert_array_equal(assign(x, centres), expected)
