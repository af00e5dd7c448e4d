"""recipes/dcase.py: DCASE 2023 Task 2 clip names of several machines, evaluation names, errors that name the file,
ground-truth CSVs, and manifest entries that validate with read_manifest."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from recipes.data import ManifestError, read_manifest
from recipes.dcase import (
    DOMAINS,
    EVAL_MANIFEST_FIELDS,
    MANIFEST_FIELDS,
    DcaseName,
    manifest_entries,
    parse_dcase_name,
    read_ground_truth,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "section_00_target_test_anomaly_0003_m-n_W.wav",  # fan
            DcaseName("00", "target", "test", "anomaly", "0003", {"m-n": "W"}),
        ),
        (
            "section_00_source_train_normal_0012_pat_00_panel_b-c.wav",  # valve
            DcaseName("00", "source", "train", "normal", "0012", {"pat": "00", "panel": "b-c"}),
        ),
        (
            "section_00_source_test_normal_0049_car_A1_spd_28V_mic_1.wav",  # ToyCar
            DcaseName("00", "source", "test", "normal", "0049", {"car": "A1", "spd": "28V", "mic": "1"}),
        ),
        (
            "section_00_source_train_normal_0001_vel_8_loc_A.wav",  # bearing
            DcaseName("00", "source", "train", "normal", "0001", {"vel": "8", "loc": "A"}),
        ),
        (
            "section_00_target_train_normal_0005_volt_1.0_wt_30.wav",  # gearbox: values with '.'
            DcaseName("00", "target", "train", "normal", "0005", {"volt": "1.0", "wt": "30"}),
        ),
        ("section_00_source_train_normal_0000.wav", DcaseName("00", "source", "train", "normal", "0000", {})),
        ("section_00_source_train_normal_0000_noAttribute.wav", DcaseName("00", "source", "train", "normal", "0000")),
        ("section_00_0123.wav", DcaseName("00", None, None, None, "0123", {})),  # evaluation set
        ("section_03_0007", DcaseName("03", None, None, None, "0007", {})),
    ],
)
def test_parse_dcase_name_reads_the_fields_of_real_style_names(name, expected):
    assert parse_dcase_name(name) == expected
    assert parse_dcase_name(Path("dev_data/raw/fan/test") / name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("section_00_source_train_normal_0001_vel_8_loc.wav", "3 tokens"),
        ("section_00_source_train_normal_0001_vel.wav", "1 tokens"),
        ("section_00_source_train_normal_0001_vel__loc_A.wav", "empty attribute"),
        ("section_00_source_train_normal_0001_vel_8_vel_9.wav", "repeated"),
        ("section_00_domain_train_normal_0001.wav", "not a DCASE clip name"),
        ("section_00_source_valid_normal_0001.wav", "not a DCASE clip name"),
        ("section_00_source_train_broken_0001.wav", "not a DCASE clip name"),
        ("section_00.wav", "not a DCASE clip name"),
        ("fan_id_00_normal_00000001.wav", "not a DCASE clip name"),  # DCASE 2020 style
    ],
)
def test_malformed_names_raise_value_errors_that_name_the_file(name, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_dcase_name(f"raw/fan/train/{name}")
    assert name in str(error.value)


def write_wav(path: Path, seconds: float = 0.25, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * rate), dtype=np.float32), rate)


def write_jsonl(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    return path


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "dev_data" / "raw"
    write_wav(root / "fan" / "train" / "section_00_source_train_normal_0000_m-n_W.wav", seconds=0.5)
    write_wav(root / "fan" / "train" / "section_00_target_train_normal_0000_m-n_X.wav")
    write_wav(root / "fan" / "test" / "section_00_source_test_anomaly_0000_m-n_W.wav")
    write_wav(root / "fan" / "test" / "section_00_target_test_normal_0000_m-n_X.wav")
    write_wav(root / "ToyTank" / "test" / "section_00_0000.wav")
    write_wav(root / "ToyTank" / "test" / "section_00_0001.wav")
    (root / "ToyTank" / "test" / "notes.txt").write_text("not audio")
    return root


def test_manifest_entries_of_development_clips_carry_every_field_and_validate(raw, tmp_path):
    train = manifest_entries(raw, "fan", "train")
    assert [e["id"] for e in train] == [
        "fan/section_00_source_train_normal_0000_m-n_W",
        "fan/section_00_target_train_normal_0000_m-n_X",
    ]
    assert train[0] == {
        "id": "fan/section_00_source_train_normal_0000_m-n_W",
        "audio": str(raw / "fan" / "train" / "section_00_source_train_normal_0000_m-n_W.wav"),
        "duration": 0.5,
        "machine": "fan",
        "section": "00",
        "domain": "source",
        "label": "normal",
        "attributes": {"m-n": "W"},
    }
    test = manifest_entries(raw, "fan", "test")
    assert [(e["domain"], e["label"]) for e in test] == [("source", "anomaly"), ("target", "normal")]
    manifest = read_manifest(write_jsonl(tmp_path / "fan.jsonl", train + test), MANIFEST_FIELDS)
    assert len(manifest) == 4 and manifest.durations == [0.5, 0.25, 0.25, 0.25]


def test_ground_truth_labels_evaluation_clips_which_have_no_domain(raw, tmp_path):
    truth = tmp_path / "ground_truth_ToyTank_section_00_test.csv"
    truth.write_text("section_00_0000.wav,0\nsection_00_0001.wav,1\n")
    entries = manifest_entries(raw, "ToyTank", "test", ground_truth=truth)
    assert [(e["id"], e["label"], e["section"]) for e in entries] == [
        ("ToyTank/section_00_0000", "normal", "00"),
        ("ToyTank/section_00_0001", "anomaly", "00"),
    ]
    assert all("domain" not in e and e["attributes"] == {} for e in entries)
    path = write_jsonl(tmp_path / "eval.jsonl", entries)
    assert len(read_manifest(path, EVAL_MANIFEST_FIELDS)) == 2
    with pytest.raises(ManifestError, match="missing field 'domain'"):
        read_manifest(path, MANIFEST_FIELDS)
    unlabelled = manifest_entries(raw, "ToyTank", "test")
    assert all("label" not in e for e in unlabelled)


def test_domain_ground_truth_gives_evaluation_clips_their_domain(raw, tmp_path):
    labels = tmp_path / "ground_truth_data.csv"
    labels.write_text("section_00_0000.wav,0\nsection_00_0001.wav,1\n")
    domains = tmp_path / "ground_truth_domain.csv"
    domains.write_text("section_00_0000.wav,1\nsection_00_0001.wav,0\n")
    entries = manifest_entries(raw, "ToyTank", "test", ground_truth=labels, domain_truth=domains)
    assert [(e["label"], e["domain"]) for e in entries] == [("normal", "target"), ("anomaly", "source")]
    path = write_jsonl(tmp_path / "eval.jsonl", entries)
    assert len(read_manifest(path, MANIFEST_FIELDS)) == 2
    assert read_ground_truth(domains, DOMAINS) == {"section_00_0000.wav": "target", "section_00_0001.wav": "source"}
    domains.write_text("section_00_source_test_anomaly_0000_m-n_W.wav,1\n")
    with pytest.raises(ValueError, match="the domain 'target', but its name says 'source'"):
        manifest_entries(raw, "fan", "test", domain_truth=domains)
    domains.write_text("section_00_0000.wav,1\n")
    with pytest.raises(ValueError, match="no domain for .*section_00_0001.wav"):
        manifest_entries(raw, "ToyTank", "test", domain_truth=domains)


def test_read_ground_truth_skips_a_header_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("file,anomaly\nsection_00_0000.wav,1\n\nsection_00_0001.wav, 0\n")
    assert read_ground_truth(path) == {"section_00_0000.wav": "anomaly", "section_00_0001.wav": "normal"}
    path.write_text("section_00_0000.wav,1\nsection_00_0001.wav,yes\n")
    with pytest.raises(ValueError, match="line 2: value 'yes' is not 0 normal / 1 anomaly"):
        read_ground_truth(path)
    path.write_text("section_00_0000.wav 1\n")
    with pytest.raises(ValueError, match="line 1: expected"):
        read_ground_truth(path)


def test_ground_truth_that_misses_a_clip_or_names_another_is_an_error(raw, tmp_path):
    truth = tmp_path / "gt.csv"
    truth.write_text("section_00_0000.wav,0\n")
    with pytest.raises(ValueError, match="no label for .*section_00_0001.wav"):
        manifest_entries(raw, "ToyTank", "test", ground_truth=truth)
    truth.write_text("section_00_0000.wav,0\nsection_00_0001.wav,1\nsection_01_0000.wav,1\n")
    with pytest.raises(ValueError, match="1 file.*section_01_0000.wav"):
        manifest_entries(raw, "ToyTank", "test", ground_truth=truth)
    truth.write_text("section_00_source_test_anomaly_0000_m-n_W.wav,0\n")
    with pytest.raises(ValueError, match="its name says 'anomaly'"):
        manifest_entries(raw, "fan", "test", ground_truth=truth)


def test_missing_or_empty_folders_and_bad_names_are_errors(raw):
    with pytest.raises(ValueError, match="is not a folder"):
        manifest_entries(raw, "valve", "train")
    (raw / "fan" / "empty").mkdir()
    with pytest.raises(ValueError, match="no .wav files"):
        manifest_entries(raw, "fan", "empty")
    write_wav(raw / "fan" / "train" / "fan_normal_0001.wav")
    with pytest.raises(ValueError, match="fan_normal_0001.wav: not a DCASE clip name"):
        manifest_entries(raw, "fan", "train")
