"""egs/mini/local/make_machines.py: DCASE names and layout, valid manifests, normal-only training and validation,
both labels in both test domains, the same bytes from the same seed, and a corpus that a simple spectral
nearest-neighbour detector learns but does not solve."""

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile
from egs_scripts import load_script as load_egs_script
from egs_scripts import read_jsonl as lines

from recipes.data import read_manifest
from recipes.dcase import MANIFEST_FIELDS, parse_dcase_name

SMALL = ["--scale", "0.2"]  # 18 + 2 training clips and 10 + 10 test clips per domain, per machine
MACHINES = ("fan", "pump", "gearbox")


def load_script() -> ModuleType:
    return load_egs_script("make_machines")


def generate(out: Path, seed: int = 0) -> Path:
    load_script().main(["--out", str(out), "--seed", str(seed), *SMALL])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("mini_machines") / "seed0")


def test_files_follow_the_dcase_layout_and_names(corpus):
    for machine in MACHINES:
        for split in ("train", "test"):
            paths = sorted((corpus / "machines" / machine / split).glob("*.wav"))
            assert paths, (machine, split)
            for path in paths:
                name = parse_dcase_name(path)
                assert (name.section, name.split) == ("00", split)
                assert name.attributes, path.name
                info = soundfile.info(str(path))
                assert (info.samplerate, info.channels, info.frames) == (16000, 1, 32000)


def test_manifests_validate_and_agree_with_the_file_names(corpus):
    for split in ("train", "valid", "test"):
        manifest = read_manifest(corpus / "asd" / f"{split}.jsonl", MANIFEST_FIELDS)
        for raw, entry in zip(lines(corpus / "asd" / f"{split}.jsonl"), manifest.entries, strict=True):
            assert raw["audio"].startswith(f"../machines/{entry['machine']}/")
            name = parse_dcase_name(entry["audio"])
            assert (name.domain, name.label, name.attributes) == (entry["domain"], entry["label"], entry["attributes"])
            assert entry["id"] == f"{entry['machine']}/{Path(entry['audio']).stem}"
            assert entry["duration"] == 2.0


def test_training_and_validation_hold_only_normals_and_few_target_clips(corpus):
    train, valid = lines(corpus / "asd" / "train.jsonl"), lines(corpus / "asd" / "valid.jsonl")
    assert {e["label"] for e in train + valid} == {"normal"}
    assert {e["domain"] for e in valid} == {"source"}
    assert not {e["id"] for e in train} & {e["id"] for e in valid}
    for machine in MACHINES:
        source = [e for e in train + valid if e["machine"] == machine and e["domain"] == "source"]
        target = [e for e in train if e["machine"] == machine and e["domain"] == "target"]
        held_out = [e for e in valid if e["machine"] == machine]
        assert (len(source), len(target), len(held_out)) == (18, 2, 2)


def test_test_set_has_both_labels_in_both_domains_and_every_anomaly_kind(corpus):
    test = lines(corpus / "asd" / "test.jsonl")
    for machine in MACHINES:
        for domain in ("source", "target"):
            rows = [e for e in test if e["machine"] == machine and e["domain"] == domain]
            assert sorted(e["label"] for e in rows) == ["anomaly"] * 10 + ["normal"] * 10
            kinds = [e["anomaly_kind"] for e in rows if e["label"] == "anomaly"]
            assert set(kinds) == {"click", "harmonic", "whine"}
            assert all("anomaly_kind" not in e for e in rows if e["label"] == "normal")


def test_target_attributes_lie_outside_the_source_values(corpus):
    train = lines(corpus / "asd" / "train.jsonl")
    for machine in MACHINES:
        source = {tuple(e["attributes"].items()) for e in train if e["machine"] == machine and e["domain"] == "source"}
        target = {tuple(e["attributes"].items()) for e in train if e["machine"] == machine and e["domain"] == "target"}
        assert len(source) > 1 and not source & target


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(corpus, tmp_path):
    again = generate(tmp_path / "again")
    other = generate(tmp_path / "other", seed=1)
    for split in ("train", "valid", "test"):
        assert (again / "asd" / f"{split}.jsonl").read_bytes() == (corpus / "asd" / f"{split}.jsonl").read_bytes()
    files = sorted(p.relative_to(corpus) for p in (corpus / "machines").rglob("*.wav"))
    assert files == sorted(p.relative_to(again) for p in (again / "machines").rglob("*.wav"))
    assert all((corpus / f).read_bytes() == (again / f).read_bytes() for f in files)
    same = [f for f in files if (other / f).is_file() and (other / f).read_bytes() == (corpus / f).read_bytes()]
    assert not same


def log_spectrum(path: Path) -> np.ndarray:
    """Mean power spectrum over Hann-windowed 1024-sample frames, in log."""
    wav, _ = soundfile.read(str(path), dtype="float64")
    frames = np.lib.stride_tricks.sliding_window_view(wav, 1024)[::512] * np.hanning(1024)
    return np.log((np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0) + 1e-10)


def mann_whitney_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half: the ROC AUC."""
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (positive.size * negative.size))


def test_mann_whitney_auc_counts_ordered_pairs():
    assert mann_whitney_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert mann_whitney_auc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == 0.25
    assert mann_whitney_auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_a_spectral_nearest_neighbour_detector_learns_the_corpus_but_does_not_solve_it(corpus):
    folder = corpus / "asd"
    train, test = lines(folder / "train.jsonl"), lines(folder / "test.jsonl")
    aucs, level_aucs = {}, {}
    for machine in MACHINES:
        normals = np.stack([log_spectrum(folder / e["audio"]) for e in train if e["machine"] == machine])
        rows = [e for e in test if e["machine"] == machine]
        features = np.stack([log_spectrum(folder / e["audio"]) for e in rows])
        scores = np.sqrt(((features[:, None] - normals[None]) ** 2).sum(-1)).min(axis=1)
        anomalous = np.array([e["label"] == "anomaly" for e in rows])
        aucs[machine] = mann_whitney_auc(scores[anomalous], scores[~anomalous])
        level = np.array([soundfile.read(str(folder / e["audio"]))[0].std() for e in rows])
        level_aucs[machine] = mann_whitney_auc(level[anomalous], level[~anomalous])
    print(f"nearest-neighbour log-spectrum AUC: {aucs}; loudness AUC: {level_aucs}")
    mean = sum(aucs.values()) / len(aucs)
    assert 0.62 < mean < 0.95, aucs
    assert min(aucs.values()) > 0.55, aucs
    assert all(0.25 < auc < 0.75 for auc in level_aucs.values()), level_aucs  # loudness alone does not tell
