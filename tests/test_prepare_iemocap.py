"""egs/iemocap/local/prepare.py on a tiny tree with IEMOCAP_full_release's layout, names and label-file format."""

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from egs_scripts import load_script, read_jsonl

from recipes.data import read_manifest

prepare = load_script("prepare", "iemocap")

FIELDS = {"emotion": str, "speaker": str, "session": int}
# Per session: (dialog label file stem, [(turn, label)]). The impro dialog is led by a woman (Ses0nF), its M turns
# are a man's; the scripted one is led by a man with a woman's turns.
DIALOGS = {
    "F_impro01": [("F000", "neu"), ("M000", "ang"), ("F001", "sad"), ("M001", "hap"), ("F002", "fru")],
    "M_script01_1": [("M000", "exc"), ("F000", "xxx"), ("F001", "neu")],
}
MISSING = "Ses02F_impro01_F001"  # a sad utterance whose wav is absent
KEPT = 6 * 5 - 1  # neu 2, hap 1, exc 1, ang 1, sad 1 a session, less the missing one
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def write_wav(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * 16000), dtype=np.float32), 16000, subtype="PCM_16")


def label_line(utt_id: str, label: str, start: float) -> str:
    # The real format, with the annotator lines that follow each turn.
    return (
        f"[{start:.4f} - {start + 1.5:.4f}]\t{utt_id}\t{label}\t[2.5000, 2.5000, 2.5000]\n"
        f"C-E1:\tNeutral state;\t()\nA-E1:\tval 3; act 2; dom  2;\t()\n\n"
    )


def make_tree(root: Path) -> Path:
    """Five sessions of 8 labelled turns each; durations 0.1-0.3 s."""
    for session in range(1, 6):
        base = root / f"Session{session}"
        labels = base / "dialog" / "EmoEvaluation"
        for suffix, turns in DIALOGS.items():
            dialog = f"Ses0{session}{suffix}"
            text = HEADER + "".join(label_line(f"{dialog}_{t}", label, i * 2.0) for i, (t, label) in enumerate(turns))
            (labels / f"{dialog}.txt").parent.mkdir(parents=True, exist_ok=True)
            (labels / f"{dialog}.txt").write_text(text)
            for i, (turn, _) in enumerate(turns):
                if f"{dialog}_{turn}" != MISSING:
                    write_wav(base / "sentences" / "wav" / dialog / f"{dialog}_{turn}.wav", 0.1 + 0.05 * (i % 5))
    # Decoys that name utterances whose wav exists, so reading them would change the counts: a single annotator's
    # file in a sub-folder, and a macOS resource fork (binary header, then text).
    labels = root / "Session1" / "dialog" / "EmoEvaluation"
    (labels / "Categorical").mkdir()
    (labels / "Categorical" / "Ses01F_impro01_e1_cat.txt").write_text(label_line("Ses01F_impro01_F008", "ang", 30))
    (labels / "._Ses01F_impro01.txt").write_bytes(
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe\n"
        + label_line("Ses01F_impro01_F009", "sad", 40).encode()
    )
    for turn in ("F008", "F009"):
        write_wav(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"Ses01F_impro01_{turn}.wav", 0.2)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "IEMOCAP_full_release")


def run(root: Path, out: Path, *extra: str) -> None:
    prepare.main(["--root", str(root), "--out", str(out), "--valid-fraction", "0.25", *extra])


def test_all_manifest_keeps_four_classes_with_exc_as_hap(root, tmp_path, capsys):
    run(root, tmp_path / "data")
    manifest = read_manifest(tmp_path / "data" / "all.jsonl", fields=FIELDS)
    assert len(manifest) == KEPT
    assert Counter(e["emotion"] for e in manifest.entries) == {"neu": 10, "hap": 10, "ang": 5, "sad": 4}
    by_id = {e["id"]: e for e in manifest.entries}
    assert by_id["Ses03M_script01_1_M000"]["emotion"] == "hap"  # exc
    assert not any(e["id"].endswith(("F002", "M_script01_1_F000", "F008", "F009")) for e in manifest.entries)
    out = capsys.readouterr().out
    assert "kept 30 (neu 10, hap 5, ang 5, sad 5, exc 5 as hap)" in out
    assert "dropped 10 (fru 5, xxx 5)" in out


def test_entries_have_absolute_audio_header_duration_speaker_and_session(root, tmp_path):
    run(root, tmp_path / "data")
    by_id = {e["id"]: e for e in read_jsonl(tmp_path / "data" / "all.jsonl")}
    scripted = by_id["Ses04M_script01_1_F001"]
    assert scripted["audio"] == str(root / "Session4/sentences/wav/Ses04M_script01_1/Ses04M_script01_1_F001.wav")
    assert Path(scripted["audio"]).is_absolute()
    assert scripted["duration"] == pytest.approx(0.2)
    # The speaker's gender is the last token's letter, not the dialog's (Ses01F's impro has a man's turns).
    assert scripted["speaker"] == "Ses04F"
    assert by_id["Ses01F_impro01_M000"]["speaker"] == "Ses01M"
    assert by_id["Ses05M_script01_1_M000"]["speaker"] == "Ses05M"
    assert {e["session"] for e in by_id.values()} == {1, 2, 3, 4, 5}
    assert all(e["id"].startswith(f"Ses0{e['session']}") for e in by_id.values())


def test_folds_leave_one_session_out_with_a_stratified_valid_split(root, tmp_path):
    out = tmp_path / "data"
    run(root, out)
    everything = {e["id"] for e in read_jsonl(out / "all.jsonl")}
    for fold in range(1, 6):
        splits = {
            s: read_manifest(out / f"fold{fold}" / f"{s}.jsonl", fields=FIELDS) for s in ("train", "valid", "test")
        }
        ids = {s: set(m.ids) for s, m in splits.items()}
        assert {e["session"] for e in splits["test"].entries} == {fold}
        assert len(splits["test"]) == (5 if fold == 2 else 6)
        assert fold not in {e["session"] for s in ("train", "valid") for e in splits[s].entries}
        assert not ids["train"] & ids["valid"] and not (ids["train"] | ids["valid"]) & ids["test"]
        assert ids["train"] | ids["valid"] | ids["test"] == everything
        pool = Counter(e["emotion"] for s in ("train", "valid") for e in splits[s].entries)
        valid = Counter(e["emotion"] for e in splits["valid"].entries)
        assert valid == {emotion: round(0.25 * n) for emotion, n in pool.items()}


def valid_ids(root: Path, out: Path, seed: int) -> list[set[str]]:
    run(root, out, "--seed", str(seed))
    return [{e["id"] for e in read_jsonl(out / f"fold{k}" / "valid.jsonl")} for k in range(1, 6)]


def test_same_seed_gives_the_same_valid_split_and_another_seed_another(root, tmp_path):
    first = valid_ids(root, tmp_path / "a", 0)
    assert valid_ids(root, tmp_path / "b", 0) == first
    assert any(valid_ids(root, tmp_path / f"s{seed}", seed) != first for seed in (1, 2, 3))


def test_missing_wav_is_skipped_listed_and_warned_once(root, tmp_path, capsys):
    run(root, tmp_path / "data")
    expected = root / "Session2/sentences/wav/Ses02F_impro01" / f"{MISSING}.wav"
    assert (tmp_path / "data" / "missing.txt").read_text().splitlines() == [str(expected)]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "1 of the 30" in warnings[0] and str(expected) in warnings[0]


def test_more_than_half_missing_wavs_is_an_error(root, tmp_path):
    for wav in sorted(root.glob("Session[1-3]/sentences/wav/*/*.wav")):
        wav.unlink()
    with pytest.raises(ValueError, match=r"of the 30 labelled utterances' wav files do not exist.*is --root"):
        run(root, tmp_path / "data")


def test_missing_parts_of_the_tree_are_named_together(root, tmp_path):
    shutil.rmtree(root / "Session3" / "dialog" / "EmoEvaluation")
    shutil.rmtree(root / "Session5" / "sentences" / "wav")
    with pytest.raises(ValueError, match="IEMOCAP_full_release") as error:
        run(root, tmp_path / "data")
    assert "Session3/dialog/EmoEvaluation, Session5/sentences/wav not found under" in str(error.value)
    assert str(root) in str(error.value)


def test_malformed_label_line_names_file_and_line(root, tmp_path):
    path = root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    path.write_text(HEADER + "[1.0 - 2.0] Ses02F_impro01_F000\n")
    with pytest.raises(ValueError, match=rf"{path.name} line 3: expected"):
        run(root, tmp_path / "data")
