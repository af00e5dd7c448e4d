"""recipes/analysis/probe.py: per-layer probes find the one layer that carries the label, standardisation, chance
levels, label encoding and frame labels from an alignment."""

import pytest
import torch

from recipes.analysis.probe import (
    PROBES,
    build_probe,
    chance_level,
    encode,
    evaluate_probe,
    frame_labels,
    probe_layers,
    train_probe,
)

NUM_LAYERS, NUM_CLASSES, DIM = 5, 4, 32
INFORMATIVE = 2


def synthetic_layers(n: int, seed: int) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Layer 2 = class mean + noise, every other layer pure noise: `{layer: [n, DIM]}`, labels `[n]`."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(123))  # shared by train and test
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    layers = {layer: torch.randn(n, DIM, generator=g) for layer in range(NUM_LAYERS)}
    layers[INFORMATIVE] = means[y] + 1.0 * torch.randn(n, DIM, generator=g)
    return layers, y


@pytest.fixture(autouse=True)
def one_thread():
    """Probes this small run fastest on one thread; on a shared CPU, OpenMP's spinning threads cost 10x more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    train, y_train = synthetic_layers(400, seed=0)
    test, y_test = synthetic_layers(400, seed=1)
    return train, y_train, test, y_test


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_accuracy_peaks_at_the_only_informative_layer(data, kind):
    train, y_train, test, y_test = data
    rows = probe_layers(train, y_train, test, y_test, NUM_CLASSES, kind=kind, steps=150)
    assert [row["layer"] for row in rows] == list(range(NUM_LAYERS))
    chance = chance_level(y_train, y_test, NUM_CLASSES)
    best = max(rows, key=lambda row: row["accuracy"])
    assert best["layer"] == INFORMATIVE
    assert best["accuracy"] > 0.9 and best["UA"] > 0.9
    for row in rows:
        if row["layer"] != INFORMATIVE:
            # Noise layers: near the 0.25 a guess gets (400 test samples: a std of ~0.02 around it).
            assert abs(row["accuracy"] - 0.25) < 0.1, row
            assert abs(row["UA"] - chance["UA"]) < 0.1, row


def test_same_seed_same_probe_and_global_rng_untouched(data):
    train, y_train, _, _ = data
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = train_probe("mlp", train[INFORMATIVE], y_train, NUM_CLASSES, steps=20, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = train_probe("mlp", train[INFORMATIVE], y_train, NUM_CLASSES, steps=20, seed=3)
    c = train_probe("mlp", train[INFORMATIVE], y_train, NUM_CLASSES, steps=20, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.state_dict()["net.0.weight"], c.state_dict()["net.0.weight"])


def test_standardisation_makes_a_feature_scaled_by_1e4_learnable():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (400,), generator=g)
    x = torch.randn(400, 8, generator=g)
    # The only informative dimension: classes at 4e4 and 6e4, spread 3e3. Unstandardised, Adam's steps of ~lr
    # cannot move the bias to -5e4 * weight, and every sample lands in one class.
    x[:, 0] = (5.0 + (2.0 * y - 1.0) + 0.3 * torch.randn(400, generator=g)) * 1e4
    x[:, 1] = 5.0  # constant: must not become NaN or inf
    probe = train_probe("linear", x[:200], y[:200], 2, steps=100)
    assert torch.allclose(probe.mean[0], x[:200, 0].mean(), rtol=1e-4)
    assert probe.std[1] == 1.0
    assert evaluate_probe(probe, x[200:], y[200:], 2)["accuracy"] > 0.98


def test_balanced_loss_raises_the_recall_of_a_rare_class():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(360, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    x = (y.float() * 1.0)[:, None] + 1.0 * torch.randn(400, 1, generator=g)  # overlapping classes
    plain = evaluate_probe(train_probe("linear", x, y, 2, steps=200), x, y, 2)
    balanced = evaluate_probe(train_probe("linear", x, y, 2, steps=200, balanced=True), x, y, 2)
    assert balanced["UA"] > plain["UA"] + 0.1


def test_evaluate_probe_ua_is_mean_recall_over_present_classes():
    probe = train_probe("linear", torch.eye(3) * 10, torch.arange(3), 5, steps=200)
    x = torch.eye(3)[[0, 0, 0, 1]] * 10
    y = torch.tensor([0, 0, 0, 2])  # class 0 always right, class 2 (seen as class 1) always wrong
    scores = evaluate_probe(probe, x, y, 5)
    assert scores == {"accuracy": 0.75, "UA": 0.5}


def test_chance_level_on_a_skewed_label_set():
    y_train = torch.tensor([1] * 7 + [0] * 2 + [2])
    y_test = torch.tensor([1] * 6 + [0] * 3 + [2] * 1)
    assert chance_level(y_train, y_test, 4) == pytest.approx({"accuracy": 0.6, "UA": 1 / 3})


def test_encode_indexes_sorted_train_labels_and_names_unseen_test_labels():
    y_train, y_test, classes = encode(["sad", "ang", "neu", "ang"], ["neu", "sad"])
    assert classes == ["ang", "neu", "sad"]
    assert y_train.tolist() == [2, 0, 1, 0] and y_test.tolist() == [1, 2]
    assert y_train.dtype == torch.long
    with pytest.raises(ValueError, match=r"'fru' .*first at test item 1.* ang, neu, sad"):
        encode(["sad", "ang", "neu"], ["neu", "fru", "fru"])


def test_frame_labels_use_frame_centres_and_leave_gaps_none():
    # 8 frames at 4 Hz (binary-exact times): centres 0.125, 0.375, 0.625, ..., 1.875 s.
    segments = [[0.0, 0.375, "a"], [0.375, 0.6, "b"], [0.625, 1.125, "c"], [1.2, 1.3, "e"], [1.5, 3.0, "d"]]
    labels = frame_labels(segments, num_frames=8, frame_rate=4.0)
    # Half-open segments: the centre 0.375 is b's (not a's), 0.625 is c's, 1.125 (c's end) falls in a gap;
    # "e" holds no centre; "d" runs past the last frame.
    assert labels == ["a", "b", "c", "c", None, None, "d", "d"]
    assert frame_labels(list(reversed(segments)), 8, 4.0) == labels
    assert frame_labels([], 3, 50.0) == [None, None, None]
    assert frame_labels([(0.0, 1.0, "x")], 0, 50.0) == []
    # 50 Hz, the rate of wav2vec2/HuBERT: a 0.1 s phone starting at 0.2 s covers frames 10..14.
    at_50hz = frame_labels([[0.2, 0.3, "p"]], 20, 50.0)
    assert [t for t, label in enumerate(at_50hz) if label == "p"] == [10, 11, 12, 13, 14]


def test_frame_labels_reject_overlaps_and_malformed_segments():
    with pytest.raises(ValueError, match="segments 0 and 1 overlap"):
        frame_labels([[0.0, 0.1, "a"], [0.05, 0.2, "b"]], 10, 50.0)
    frame_labels([[0.0, 0.1 + 1e-9, "a"], [0.1, 0.2, "b"]], 10, 50.0)  # rounding, not an overlap
    with pytest.raises(ValueError, match=r"segment 1 .*start <= end"):
        frame_labels([[0.0, 0.1, "a"], [0.3, 0.2, "b"]], 10, 50.0)
    with pytest.raises(ValueError, match="expected \\[start, end, label\\]"):
        frame_labels([[0.0, 0.1]], 10, 50.0)


def test_registry_lists_choices_and_inputs_are_checked(data):
    assert sorted(PROBES) == ["linear", "mlp"]
    with pytest.raises(ValueError, match=r"unknown probe 'svm'; choose from \['linear', 'mlp'\]"):
        build_probe("svm", 4, 2)
    train, y_train, test, y_test = data
    with pytest.raises(ValueError, match=r"only in test: \[9\]"):
        probe_layers(train, y_train, {**test, 9: test[0]}, y_test, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train_probe("linear", train[0], y_train, 2)
    bad = train[0].clone()
    bad[5, 3] = float("nan")
    with pytest.raises(ValueError, match="first at row 5"):
        train_probe("linear", bad, y_train, NUM_CLASSES)
