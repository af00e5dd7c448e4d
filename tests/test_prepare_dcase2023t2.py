"""egs/dcase2023t2/local/prepare.py: manifests from a DCASE 2023 Task 2 tree (dev_data and eval_data), evaluation
labels and domains from the official ground-truth layout, the per-machine summary, and errors for incomplete trees."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
from egs_scripts import load_script, read_jsonl

from recipes.data import read_manifest
from recipes.dcase import EVAL_MANIFEST_FIELDS, MANIFEST_FIELDS

prepare = load_script("prepare", "dcase2023t2")

LABELLED = {**MANIFEST_FIELDS, "label": str}
# machine -> split -> clip names; fan has attributes in its names, slider none.
DEV = {
    "fan": {
        "train": [
            "section_00_source_train_normal_0000_m-n_W.wav",
            "section_00_source_train_normal_0001_m-n_W.wav",
            "section_00_target_train_normal_0000_m-n_X.wav",
        ],
        "test": [
            "section_00_source_test_normal_0000_m-n_W.wav",
            "section_00_source_test_anomaly_0000_m-n_W.wav",
            "section_00_target_test_normal_0000_m-n_X.wav",
            "section_00_target_test_anomaly_0000_m-n_X.wav",
        ],
    },
    "slider": {
        "train": ["section_00_source_train_normal_0000.wav", "section_00_target_train_normal_0000.wav"],
        "test": ["section_00_source_test_normal_0000.wav", "section_00_target_test_anomaly_0000.wav"],
    },
}
EVAL = {
    "bandsaw": {
        "train": [
            "section_00_source_train_normal_0000_vel_6000.wav",
            "section_00_target_train_normal_0000_vel_3000.wav",
        ],
        "test": ["section_00_0000.wav", "section_00_0001.wav", "section_00_0002.wav"],
    }
}
# bandsaw's test clips: (label, domain) as 0/1 codes, the evaluator's CSVs.
TRUTH = {"section_00_0000.wav": ("0", "0"), "section_00_0001.wav": ("1", "1"), "section_00_0002.wav": ("1", "0")}


def write_wav(path: Path, seconds: float = 0.25, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * rate), dtype=np.float32), rate)


def write_set(raw: Path, machines: dict[str, dict[str, list[str]]]) -> None:
    for machine, splits in machines.items():
        for split, names in splits.items():
            for name in names:
                write_wav(raw / machine / split / name)


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "dcase2023t2"
    write_set(root / "dev_data" / "raw", DEV)
    write_set(root / "eval_data" / "raw", EVAL)
    (root / "dev_data" / "raw" / "fan" / "attributes_00.csv").write_text("file_name,d1p,d1v\n")  # shipped beside
    return root


@pytest.fixture
def ground_truth(tmp_path) -> Path:
    folder = tmp_path / "evaluator"
    for sub, column in (("ground_truth_data", 0), ("ground_truth_domain", 1)):
        (folder / sub).mkdir(parents=True)
        lines = "".join(f"{name},{codes[column]}\n" for name, codes in TRUTH.items())
        (folder / sub / "ground_truth_bandsaw_section_00_test.csv").write_text(lines)
    return folder


def test_dev_and_eval_manifests_hold_every_clip_of_every_machine(root, ground_truth, tmp_path, capsys):
    out = tmp_path / "data"
    prepare.main(["--root", str(root), "--out", str(out), "--ground-truth", str(ground_truth)])
    assert sorted(p.name for p in out.iterdir()) == [
        "dev_test.jsonl",
        "dev_train.jsonl",
        "dev_valid.jsonl",
        "eval_test.jsonl",
        "eval_train.jsonl",
    ]
    dev_train = read_manifest(out / "dev_train.jsonl", LABELLED)
    dev_test = read_manifest(out / "dev_test.jsonl", LABELLED)
    dev_valid = read_manifest(out / "dev_valid.jsonl", LABELLED)
    assert len(dev_train) == 4 and len(dev_test) == 6
    # One of fan's two source training clips validates; slider's only one and every target clip stay in training.
    assert [(e["machine"], e["domain"]) for e in dev_valid.entries] == [("fan", "source")]
    assert not set(dev_valid.ids) & set(dev_train.ids)
    assert {e["machine"] for e in dev_test.entries} == {"fan", "slider"}
    fan = next(
        e for e in read_jsonl(out / "dev_test.jsonl") if e["id"] == "fan/section_00_target_test_anomaly_0000_m-n_X"
    )
    assert fan == {
        "id": "fan/section_00_target_test_anomaly_0000_m-n_X",
        "audio": str(root / "dev_data" / "raw" / "fan" / "test" / "section_00_target_test_anomaly_0000_m-n_X.wav"),
        "duration": 0.25,
        "machine": "fan",
        "section": "00",
        "domain": "target",
        "label": "anomaly",
        "attributes": {"m-n": "X"},
    }
    assert all(e["attributes"] == {} for e in dev_test.entries if e["machine"] == "slider")
    assert all(Path(e["audio"]).is_absolute() for e in read_jsonl(out / "dev_train.jsonl"))
    eval_train = read_manifest(out / "eval_train.jsonl", LABELLED)
    assert [e["attributes"] for e in eval_train.entries] == [{"vel": "6000"}, {"vel": "3000"}]
    printed = capsys.readouterr().out
    assert (
        "fan          dev_test       4 clips: source anomaly 1, source normal 1, target anomaly 1, target normal 1"
        in printed
    )
    assert "slider       dev_train      2 clips: source normal 1, target normal 1" in printed
    assert f"wrote {out / 'dev_test.jsonl'}: 6 clips" in printed and "2 machines" in printed


def test_eval_test_clips_take_label_and_domain_from_the_ground_truth(root, ground_truth, tmp_path):
    out = tmp_path / "data"
    prepare.main(["--root", str(root), "--out", str(out), "--ground-truth", str(ground_truth)])
    test = read_manifest(out / "eval_test.jsonl", LABELLED)
    assert [(e["id"], e["label"], e["domain"]) for e in test.entries] == [
        ("bandsaw/section_00_0000", "normal", "source"),
        ("bandsaw/section_00_0001", "anomaly", "target"),
        ("bandsaw/section_00_0002", "anomaly", "source"),
    ]


def test_eval_test_clips_without_ground_truth_have_neither_label_nor_domain(root, ground_truth, tmp_path, capsys):
    out = tmp_path / "data"
    prepare.main(["--root", str(root), "--out", str(out)])
    entries = read_manifest(out / "eval_test.jsonl", EVAL_MANIFEST_FIELDS).entries
    assert len(entries) == 3 and all("label" not in e and "domain" not in e for e in entries)
    assert "bandsaw      eval_test      3 clips: unlabelled 3" in capsys.readouterr().out
    for path in ground_truth.glob("*/*.csv"):  # a ground-truth folder that lacks the machine: a note, no labels
        path.rename(path.with_name(path.name.replace("bandsaw", "grinder")))
    prepare.main(["--root", str(root), "--out", str(out), "--ground-truth", str(ground_truth)])
    assert "no ground truth for bandsaw" in capsys.readouterr().out
    assert all("label" not in e for e in read_jsonl(out / "eval_test.jsonl"))


def test_without_eval_data_only_dev_manifests_are_written(root, tmp_path):
    for path in sorted((root / "eval_data").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "eval_data").rmdir()
    out = tmp_path / "data"
    prepare.main(["--root", str(root), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["dev_test.jsonl", "dev_train.jsonl", "dev_valid.jsonl"]


def test_eval_data_before_its_test_clips_came_out_gives_eval_train_only(root, tmp_path):
    for path in (root / "eval_data" / "raw" / "bandsaw" / "test").iterdir():
        path.unlink()
    (root / "eval_data" / "raw" / "bandsaw" / "test").rmdir()
    out = tmp_path / "data"
    prepare.main(["--root", str(root), "--out", str(out)])
    names = ["dev_test.jsonl", "dev_train.jsonl", "dev_valid.jsonl", "eval_train.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == names


def test_no_dev_data_raw_is_an_error_that_says_what_root_is(tmp_path):
    (tmp_path / "dcase" / "raw").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"dev_data/raw is not a folder: --root is the folder that holds dev_data"):
        prepare.prepare(tmp_path / "dcase", tmp_path / "data")
    with pytest.raises(SystemExit, match="error: .*dev_data/raw is not a folder"):
        prepare.main(["--root", str(tmp_path / "dcase"), "--out", str(tmp_path / "data")])


def test_every_missing_split_folder_is_named_in_one_error(root, tmp_path):
    (root / "dev_data" / "raw" / "valve" / "train").mkdir(parents=True)  # unzipped halfway
    for path in (root / "dev_data" / "raw" / "slider" / "test").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="incomplete DCASE tree") as error:
        prepare.prepare(root, tmp_path / "data")
    message = str(error.value)
    for folder in ("slider/test", "valve/train", "valve/test"):
        assert f"{root / 'dev_data' / 'raw' / folder} has no .wav files" in message
    assert not (tmp_path / "data").exists()


def test_ground_truth_errors_name_the_folder_or_the_clip(root, ground_truth, tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nowhere' / 'ground_truth_data'} is not a folder"):
        prepare.prepare(root, tmp_path / "data", tmp_path / "nowhere")
    labels = ground_truth / "ground_truth_data" / "ground_truth_bandsaw_section_00_test.csv"
    labels.write_text("section_00_0000.wav,0\nsection_00_0001.wav,1\n")
    with pytest.raises(ValueError, match="no label for .*section_00_0002.wav"):
        prepare.prepare(root, tmp_path / "data", ground_truth)


def test_sections_ground_truth_files_are_read_together(root, ground_truth, tmp_path):
    write_wav(root / "eval_data" / "raw" / "bandsaw" / "test" / "section_01_0000.wav")
    with pytest.raises(ValueError, match="some sections of bandsaw but not .*ground_truth_bandsaw_section_01_test.csv"):
        prepare.prepare(root, tmp_path / "data", ground_truth)
    for sub in ("ground_truth_data", "ground_truth_domain"):
        (ground_truth / sub / "ground_truth_bandsaw_section_01_test.csv").write_text("section_01_0000.wav,1\n")
    prepare.prepare(root, tmp_path / "data", ground_truth)
    test = read_manifest(tmp_path / "data" / "eval_test.jsonl", LABELLED)
    assert [(e["section"], e["label"], e["domain"]) for e in test.entries][-1] == ("01", "anomaly", "target")
