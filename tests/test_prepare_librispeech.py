"""egs/librispeech/local/prepare.py: manifests from a LibriSpeech tree with its real layout (FLAC audio, chapter
transcripts), skipped and reported gaps, absent splits, and the root-or-parent --root."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
from egs_scripts import load_script, read_jsonl

from recipes.data import read_manifest

prepare = load_script("prepare", "librispeech")

RATE = 16000
FIELDS = {"text": str, "speaker": str}
# split -> speaker -> chapter -> utterances; 2 speakers x 2 chapters x 2-3 utterances.
TREE = {
    "dev-clean": {"1272": {"128104": 3, "135031": 2}, "2277": {"149896": 2, "149897": 3}},
    "test-clean": {"1089": {"134686": 2, "134691": 2}, "121": {"121726": 3, "123852": 2}},
}


def text_of(utterance: str) -> str:
    return f"WORDS OF {utterance} DON'T END"


def write_tree(base: Path) -> None:
    """A LibriSpeech/ folder: every utterance's FLAC (0.1 s per utterance number) and chapter transcript."""
    for split, speakers in TREE.items():
        for speaker, chapters in speakers.items():
            for chapter, count in chapters.items():
                folder = base / split / speaker / chapter
                folder.mkdir(parents=True)
                lines = []
                for number in range(count):
                    utterance = f"{speaker}-{chapter}-{number:04d}"
                    audio = np.zeros(int(0.1 * (number + 1) * RATE), dtype=np.float32)
                    soundfile.write(folder / f"{utterance}.flac", audio, RATE, format="FLAC")
                    lines.append(f"{utterance} {text_of(utterance)}\n")
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines), encoding="utf-8")
    for name in ("README.TXT", "SPEAKERS.TXT", "CHAPTERS.TXT"):  # what the archives put beside the splits
        (base / name).write_text("; not a split\n")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """<tmp>/corpus/LibriSpeech with dev-clean and test-clean, one FLAC missing and a stray file."""
    base = tmp_path / "corpus" / "LibriSpeech"
    write_tree(base)
    (base / "dev-clean" / "1272" / "128104" / "1272-128104-0001.flac").unlink()
    (base / "dev-clean" / "2277" / "149896" / "notes.txt").write_text("stray")
    return base


def test_manifests_hold_every_utterance_with_its_text_speaker_and_duration(corpus, tmp_path, capsys):
    out = tmp_path / "data"
    prepare.main(["--root", str(corpus), "--out", str(out)])
    assert sorted(path.name for path in out.iterdir()) == ["dev-clean.jsonl", "test-clean.jsonl"]
    dev = read_manifest(out / "dev-clean.jsonl", FIELDS)
    test = read_manifest(out / "test-clean.jsonl", FIELDS)
    assert len(dev) == 10 - 1 and len(test) == 9
    assert "1272-128104-0001" not in dev.ids and dev.ids == sorted(dev.ids)
    written = {entry["id"]: entry for entry in read_jsonl(out / "dev-clean.jsonl")}
    assert written["2277-149897-0002"] == {
        "id": "2277-149897-0002",
        "audio": str(corpus / "dev-clean" / "2277" / "149897" / "2277-149897-0002.flac"),
        "duration": pytest.approx(0.3),
        "text": "WORDS OF 2277-149897-0002 DON'T END",
        "speaker": "2277",
    }
    assert all(Path(entry["audio"]).is_absolute() for entry in written.values())
    assert {entry["speaker"] for entry in test.entries} == {"1089", "121"}
    assert sum(test.durations) == pytest.approx(0.1 * (1 + 2) * 3 + 0.1 * (1 + 2 + 3) * 1)
    printed = capsys.readouterr().out
    assert f"wrote {out / 'dev-clean.jsonl'}: 9 utterances" in printed and "2 speakers" in printed


def test_a_missing_flac_is_reported_once_and_skipped(corpus, tmp_path, capsys):
    prepare.main(["--root", str(corpus), "--out", str(tmp_path / "data")])
    errors = capsys.readouterr().err
    assert errors.count("without a .flac file") == 1
    assert "dev-clean: 1 transcript line(s) without a .flac file, skipped (1272-128104-0001)" in errors
    assert "test-clean:" not in errors


def test_a_flac_without_a_transcript_line_is_reported_with_the_first_three_ids(corpus, tmp_path, capsys):
    folder = corpus / "test-clean" / "121" / "121726"
    for number in range(5, 9):
        soundfile.write(folder / f"121-121726-{number:04d}.flac", np.zeros(RATE // 10), RATE, format="FLAC")
    prepare.main(["--root", str(corpus), "--out", str(tmp_path / "data"), "--splits", "test-clean"])
    errors = capsys.readouterr().err
    assert (
        "4 .flac file(s) without a transcript line, skipped (121-121726-0005, 121-121726-0006, 121-121726-0007, ...)"
        in errors
    )
    assert len(read_manifest(tmp_path / "data" / "test-clean.jsonl", FIELDS)) == 9


def test_absent_splits_are_skipped_with_a_note_and_none_present_is_an_error(corpus, tmp_path, capsys):
    out = tmp_path / "data"
    prepare.main(["--root", str(corpus), "--out", str(out), "--splits", "dev-clean,dev-other"])
    assert "note: dev-other not in" in capsys.readouterr().out
    assert [path.name for path in out.iterdir()] == ["dev-clean.jsonl"]
    with pytest.raises(ValueError, match=r"none of the requested splits \(train-clean-360, test-other\) is in"):
        prepare.prepare(corpus, out, ["train-clean-360", "test-other"])
    with pytest.raises(SystemExit, match="error: none of the requested splits"):
        prepare.main(["--root", str(corpus), "--out", str(out), "--splits", "test-other"])
    with pytest.raises(ValueError, match="unknown LibriSpeech split.*dev-cleen; choose from"):
        prepare.prepare(corpus, out, ["dev-cleen"])


def test_the_parent_of_the_librispeech_folder_is_accepted_as_root(corpus, tmp_path):
    prepare.main(["--root", str(corpus), "--out", str(tmp_path / "a")])
    prepare.main(["--root", str(corpus.parent), "--out", str(tmp_path / "b")])
    for split in TREE:
        assert read_jsonl(tmp_path / "a" / f"{split}.jsonl") == read_jsonl(tmp_path / "b" / f"{split}.jsonl")
    with pytest.raises(ValueError, match=f"no LibriSpeech split folder .* in {tmp_path}"):
        prepare.prepare(tmp_path, tmp_path / "c", ["dev-clean"])


def test_a_split_missing_more_than_half_its_audio_is_an_error_naming_every_such_split(corpus, tmp_path):
    for split in TREE:
        for path in sorted((corpus / split).glob("*/*/*.flac"))[:6]:
            path.unlink()
    with pytest.raises(ValueError, match="only 3 of 10 utterances") as error:
        prepare.prepare(corpus, tmp_path / "data", list(TREE))
    assert "dev-clean" in str(error.value) and "test-clean" in str(error.value)
    assert not (tmp_path / "data").exists()


def test_a_malformed_transcript_line_is_an_error_naming_file_and_line(corpus, tmp_path):
    transcript = corpus / "test-clean" / "121" / "123852" / "121-123852.trans.txt"
    transcript.write_text("121-123852-0000 HELLO\n121-123852-0001\n")
    with pytest.raises(ValueError, match=f"{transcript} line 2: expected `121-123852-<utterance> TEXT`"):
        prepare.prepare(corpus, tmp_path / "data", ["test-clean"])
