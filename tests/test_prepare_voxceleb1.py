"""egs/voxceleb1/local/prepare.py on a tiny tree with VoxCeleb1's layout, names and list formats."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
from egs_scripts import load_script, read_jsonl

from recipes.data import read_manifest
from recipes.trials import read_trials

prepare = load_script("prepare", "voxceleb1")

FIELDS = {"speaker": str}
SID_SPEAKERS = ("id10001", "id10002", "id10003", "id10004")
SV_SPEAKERS = ("id10270", "id10300")  # named by the trials, as in VoxCeleb1-O
VIDEOS = ("1zcIwhmdeo4", "7w0IBEWc9Qw")
# Per speaker: video 0 -> train (1), video 1's first -> dev (2), its second -> test (3).
SID_PART = {(0, 1): "1", (0, 2): "1", (1, 1): "2", (1, 2): "3"}
TRIALS = [
    ("1", "id10270/1zcIwhmdeo4/00001.wav", "id10270/7w0IBEWc9Qw/00002.wav"),
    ("0", "id10270/1zcIwhmdeo4/00001.wav", "id10300/1zcIwhmdeo4/00001.wav"),
    ("1", "id10300/1zcIwhmdeo4/00001.wav", "id10300/7w0IBEWc9Qw/00001.wav"),
    ("0", "id10300/7w0IBEWc9Qw/00002.wav", "id10270/1zcIwhmdeo4/00002.wav"),
]


def name(speaker: str, video: int, utterance: int) -> str:
    return f"{speaker}/{VIDEOS[video]}/{utterance:05d}.wav"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "VoxCeleb1")


def make_tree(root: Path) -> Path:
    """Six speakers x two videos x two utterances of 0.1-0.25 s; four speakers in iden_split.txt, two in the trials."""
    for s, speaker in enumerate(SID_SPEAKERS + SV_SPEAKERS):
        for video in range(2):
            for utterance in (1, 2):
                path = root / "wav" / name(speaker, video, utterance)
                path.parent.mkdir(parents=True, exist_ok=True)
                samples = 1600 + 400 * ((s + video + utterance) % 4)
                soundfile.write(path, np.zeros(samples, dtype=np.float32), 16000, subtype="PCM_16")
    lines = [f"{SID_PART[v, u]} {name(s, v, u)}" for s in SID_SPEAKERS for v in range(2) for u in (1, 2)]
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    (root / "veri_test2.txt").write_text("".join(" ".join(trial) + "\n" for trial in TRIALS))
    return root


def run(root: Path, out: Path, *extra: str) -> None:
    """The fixture has four training speakers for SV: one is held out for validation (the default is 20)."""
    prepare.main(["--root", str(root), "--out", str(out), "--sv-valid-speakers", "1", *extra])


def test_sid_splits_follow_iden_split(root, tmp_path, capsys):
    out = tmp_path / "data"
    run(root, out)
    splits = {s: read_manifest(out / "sid" / f"{s}.jsonl", fields=FIELDS) for s in ("train", "valid", "test")}
    assert {s: len(m) for s, m in splits.items()} == {"train": 8, "valid": 4, "test": 4}
    assert splits["valid"].ids[0] == "id10001/7w0IBEWc9Qw/00001"
    assert set(splits["test"].ids) == {f"{s}/7w0IBEWc9Qw/00002" for s in SID_SPEAKERS}
    for manifest in splits.values():
        assert {e["speaker"] for e in manifest.entries} == set(SID_SPEAKERS)
        assert all(e["id"].startswith(e["speaker"] + "/") for e in manifest.entries)
    entry = read_jsonl(out / "sid" / "train.jsonl")[0]
    assert entry["audio"] == str(root / "wav" / "id10001/1zcIwhmdeo4/00001.wav")
    assert entry["duration"] == pytest.approx((1600 + 400 * 1) / 16000)
    assert f"wrote {out / 'sid' / 'train.jsonl'}: 8 utterances of 4 speakers" in capsys.readouterr().out


def test_sv_trains_on_every_speaker_outside_the_trials(root, tmp_path):
    out = tmp_path / "data"
    run(root, out)
    train = read_manifest(out / "sv" / "train.jsonl", fields=FIELDS)
    valid = read_manifest(out / "sv" / "valid.jsonl", fields=FIELDS)
    test = read_manifest(out / "sv" / "test.jsonl", fields=FIELDS)
    held_out = {e["speaker"] for e in valid.entries}
    assert len(held_out) == 1 and len(valid) == 4 and len(train) == 12  # every utterance of one held-out speaker
    assert {e["speaker"] for e in train.entries} == set(SID_SPEAKERS) - held_out
    assert {e["speaker"] for e in test.entries} == set(SV_SPEAKERS)
    assert set(test.ids) == {token.removesuffix(".wav") for trial in TRIALS for token in trial[1:]}
    assert len(test) == 6


def test_holding_out_every_training_speaker_is_an_error(root, tmp_path):
    with pytest.raises(ValueError, match="--sv-valid-speakers 4 leaves no training speaker of 4"):
        prepare.main(["--root", str(root), "--out", str(tmp_path / "data"), "--sv-valid-speakers", "4"])


def test_trials_use_manifest_ids_and_read_back(root, tmp_path):
    out = tmp_path / "data"
    run(root, out)
    lines = (out / "sv" / "trials.txt").read_text().splitlines()
    assert lines[0] == "1 id10270/1zcIwhmdeo4/00001 id10270/7w0IBEWc9Qw/00002"
    test = read_manifest(out / "sv" / "test.jsonl", fields=FIELDS)
    trials = read_trials(out / "sv" / "trials.txt", test.ids)
    assert trials.labels.tolist() == [1, 0, 1, 0]
    assert [test.ids[i] for i in trials.enroll.tolist()] == [t[1].removesuffix(".wav") for t in TRIALS]
    assert [test.ids[i] for i in trials.test.tolist()] == [t[2].removesuffix(".wav") for t in TRIALS]


def test_trial_naming_a_missing_wav_is_dropped_listed_and_warned_once(root, tmp_path, capsys):
    absent = "id10300/7w0IBEWc9Qw/00009.wav"
    with (root / "veri_test2.txt").open("a") as handle:
        handle.write(f"1 id10300/1zcIwhmdeo4/00002.wav {absent}\n")
    out = tmp_path / "data"
    run(root, out)
    assert len((out / "sv" / "trials.txt").read_text().splitlines()) == len(TRIALS)
    assert (out / "sv" / "missing.txt").read_text().splitlines() == [str(root / "wav" / absent)]
    test_ids = read_manifest(out / "sv" / "test.jsonl", fields=FIELDS).ids
    assert "id10300/1zcIwhmdeo4/00002" in test_ids and absent.removesuffix(".wav") not in test_ids
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "1 of the 8 wav files" in warnings[0] and absent in warnings[0]
    assert "4 trials (2 target, 2 non-target); dropped 1 of 5" in captured.out
    assert not (out / "sid" / "missing.txt").exists()


def test_more_than_half_of_the_trial_wavs_missing_is_an_error(root, tmp_path):
    for wav in (root / "wav" / "id10270").glob("*/*.wav"):
        wav.unlink()
    for wav in (root / "wav" / "id10300").glob("1zcIwhmdeo4/*.wav"):
        wav.unlink()
    with pytest.raises(ValueError, match=r"4 of the 6 wav files that .*veri_test2.txt names do not exist"):
        run(root, tmp_path / "data", "--tasks", "sv")


@pytest.mark.parametrize(
    ("listing", "text", "expected"),
    [
        ("iden_split.txt", "1 id10001/1zcIwhmdeo4/00001.wav\n\n4 id10001/1zcIwhmdeo4/00002.wav\n", "line 3: label '4'"),
        ("iden_split.txt", "1 id10001/1zcIwhmdeo4/00001.wav\n2 id10001/00002.wav\n", "line 2: 'id10001/00002.wav'"),
        ("veri_test2.txt", "1 id10270/1zcIwhmdeo4/00001.wav\n", "line 1: expected `<1|0>"),
    ],
)
def test_malformed_list_line_names_file_and_line(root, tmp_path, listing, text, expected):
    (root / listing).write_text(text)
    with pytest.raises(ValueError, match=f"{listing} {expected}"):
        run(root, tmp_path / "data")


def test_missing_wav_folder_and_list_are_reported_together(tmp_path):
    root = tmp_path / "VoxCeleb1"
    root.mkdir()
    with pytest.raises(ValueError) as error:
        run(root, tmp_path / "data")
    message = str(error.value)
    assert f"wav/ not found under {root}" in message
    assert f"{root / 'iden_split.txt'} not found" in message and "meta/iden_split.txt" in message
    assert "meta/veri_test2.txt" in message


def test_one_task_alone_needs_only_its_list(root, tmp_path):
    (root / "iden_split.txt").unlink()
    out = tmp_path / "data"
    run(root, out, "--tasks", "sv")
    assert (out / "sv" / "trials.txt").is_file() and not (out / "sid").exists()
    with pytest.raises(ValueError, match="iden_split.txt not found: --iden-split must name"):
        run(root, out, "--tasks", "sid")
    listing = tmp_path / "lists" / "iden.txt"
    listing.parent.mkdir()
    listing.write_text(
        "".join(f"{p} id10001/{VIDEOS[0]}/0000{p}.wav\n" for p in (1, 2)) + f"3 {name(SID_SPEAKERS[1], 1, 2)}\n"
    )
    run(root, out, "--tasks", "sid", "--iden-split", str(listing))
    assert [len(read_jsonl(out / "sid" / f"{s}.jsonl")) for s in ("train", "valid", "test")] == [1, 1, 1]


def test_unknown_task_is_a_usage_error(root, tmp_path):
    with pytest.raises(SystemExit):
        run(root, tmp_path / "data", "--tasks", "sid,asr")
