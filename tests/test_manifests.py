"""Manifests from a folder (regex fields), a CSV and a Kaldi data dir; errors name the file, the line and the id."""

import json

import numpy as np
import pytest
import soundfile

from recipes.cli import main
from recipes.data import read_manifest
from recipes.manifests import from_csv, from_folder, from_kaldi, summarize


def write_audio(path, seconds, sample_rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * sample_rate), dtype="float32"), sample_rate)
    return path


@pytest.fixture
def emotion_folder(tmp_path):
    """spk/emotion_n.wav files (one flac), plus a readme-like wav that does not follow the naming."""
    root = tmp_path / "corpus"
    write_audio(root / "spk1" / "neu_01.wav", 0.5)
    write_audio(root / "spk1" / "ang_02.flac", 0.25, 8000)
    write_audio(root / "spk2" / "neu_03.wav", 1.0)
    write_audio(root / "spk2" / "noise.wav", 0.1)
    write_audio(root / "calibration.wav", 0.1)
    (root / "spk1" / "notes.txt").write_text("not audio")
    return root


def test_folder_pattern_groups_become_fields_and_other_files_are_reported(emotion_folder):
    pattern = r"(?P<speaker>[^/]+)/(?P<emotion>[^_]+)_.*\.(wav|flac)"
    with pytest.warns(UserWarning, match=r"2 of 5 files .* calibration.wav, spk2/noise.wav"):
        entries = from_folder(emotion_folder, pattern)
    assert [e["id"] for e in entries] == ["spk1/ang_02", "spk1/neu_01", "spk2/neu_03"]
    assert [(e["speaker"], e["emotion"]) for e in entries] == [("spk1", "ang"), ("spk1", "neu"), ("spk2", "neu")]
    assert [e["duration"] for e in entries] == [0.25, 0.5, 1.0]
    assert entries[0]["audio"] == str(emotion_folder / "spk1" / "ang_02.flac")


def test_folder_id_group_sets_the_id_and_no_pattern_takes_every_file(emotion_folder):
    with pytest.warns(UserWarning):
        entries = from_folder(emotion_folder, r"(?P<speaker>[^/]+)/[^_]+_(?P<id>\d+)\.wav", ["wav"])
    assert [(e["id"], e["speaker"]) for e in entries] == [("01", "spk1"), ("03", "spk2")]
    assert "id" in entries[0] and set(entries[0]) == {"id", "audio", "duration", "speaker"}
    assert len(from_folder(emotion_folder, extensions=["wav"])) == 4


def test_folder_pattern_that_matches_nothing_shows_it_and_an_example(emotion_folder):
    with pytest.raises(ValueError, match=r"none of the 5 files .* 'spk\*\\\.wav' .* e.g. 'calibration.wav'"):
        from_folder(emotion_folder, r"spk*\.wav")


@pytest.mark.filterwarnings("ignore:.*do not match --pattern")
def test_folder_duplicate_ids_name_both_files(emotion_folder):
    with pytest.raises(ValueError, match=r"id 'neu' is used twice: .*spk1/neu_01.wav and .*spk2/neu_03.wav"):
        from_folder(emotion_folder, r"[^/]+/(?P<id>neu)_.*\.wav")


def test_empty_audio_file_is_an_error_naming_it(tmp_path):
    write_audio(tmp_path / "a.wav", 0.1)
    write_audio(tmp_path / "empty.wav", 0)
    with pytest.raises(ValueError, match=r"empty.wav is empty"):
        from_folder(tmp_path)


def test_csv_resolves_relative_paths_and_keeps_other_columns_as_fields(tmp_path):
    write_audio(tmp_path / "wavs" / "a.wav", 0.5)
    write_audio(tmp_path / "wavs" / "b.flac", 2.0)
    (tmp_path / "meta.csv").write_text(
        "audio,speaker,emotion,age,start,end\n"
        "wavs/a.wav,s1,hap,31,,\n"
        "wavs/b.flac,s2,,,0.5,1.75\n"
    )  # fmt: skip
    a, b = from_csv(tmp_path / "meta.csv")
    assert a == {"id": "wavs/a", "audio": str(tmp_path / "wavs" / "a.wav"), "duration": 0.5, "speaker": "s1",
                 "emotion": "hap", "age": "31"}  # fmt: skip
    assert b["start"] == 0.5 and b["end"] == 1.75 and b["duration"] == 1.25  # a segment: end - start
    assert "emotion" not in b and "age" not in b  # empty cells are left out


def test_csv_duration_and_id_columns_are_used_as_they_are(tmp_path):
    write_audio(tmp_path / "a.wav", 0.5)
    (tmp_path / "m.csv").write_text("utt,path,duration\nu1,a.wav,7.5\n")
    assert from_csv(tmp_path / "m.csv", audio_column="path", id_column="utt") == [
        {"id": "u1", "audio": str(tmp_path / "a.wav"), "duration": 7.5}
    ]


def test_csv_missing_audio_files_are_counted_with_their_lines(tmp_path):
    write_audio(tmp_path / "root" / "a.wav", 0.5)
    lines = ["id,audio"] + [f"u{i},{'a' if i == 2 else f'gone{i}'}.wav" for i in range(6)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"5 of 6 audio files in .*m.csv .* line 2 \(.*gone0.wav\), line 3 \(.*\), line 5 \(.*\), \.\.\.$",
    ):
        from_csv(tmp_path / "m.csv", root=tmp_path / "root")


def test_csv_duplicate_ids_name_both_lines(tmp_path):
    write_audio(tmp_path / "a.wav", 0.5)
    (tmp_path / "m.csv").write_text("id,audio\nx,a.wav\ny,a.wav\nx,a.wav\n")
    with pytest.raises(ValueError, match=r"id 'x' is used twice: .*m.csv line 2 and .*m.csv line 4"):
        from_csv(tmp_path / "m.csv")


@pytest.fixture
def kaldi_dir(tmp_path):
    write_audio(tmp_path / "audio" / "rec1.wav", 3.0)
    write_audio(tmp_path / "audio" / "rec2.flac", 2.0)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text(f"rec1 {tmp_path}/audio/rec1.wav\nrec2 audio/rec2.flac\n")
    (data / "segments").write_text("spkA-rec1-0 rec1 0.0 1.5\nspkB-rec1-1 rec1 1.5 -1\nspkA-rec2-0 rec2 0.25 2.0\n")
    (data / "utt2spk").write_text("spkA-rec1-0 spkA\nspkB-rec1-1 spkB\nspkA-rec2-0 spkA\n")
    (data / "text").write_text("spkA-rec1-0 HELLO  WORLD\nspkB-rec1-1 GOOD MORNING\nspkA-rec2-0 YES\n")
    return data


def test_kaldi_segments_with_speakers_and_text(kaldi_dir):
    entries = from_kaldi(kaldi_dir, root=kaldi_dir.parent.parent)
    rec1 = str(kaldi_dir.parent.parent / "audio" / "rec1.wav")
    assert entries[0] == {"id": "spkA-rec1-0", "audio": rec1, "duration": 1.5, "start": 0.0, "end": 1.5,
                          "speaker": "spkA", "text": "HELLO  WORLD"}  # fmt: skip
    assert (entries[1]["start"], entries[1]["end"], entries[1]["duration"]) == (1.5, 3.0, 1.5)  # -1: to the end
    assert entries[2]["audio"].endswith("audio/rec2.flac") and entries[2]["duration"] == 1.75
    assert [e["speaker"] for e in entries] == ["spkA", "spkB", "spkA"]


def test_kaldi_without_segments_has_one_entry_per_recording(kaldi_dir):
    for name in ("segments", "utt2spk", "text"):
        (kaldi_dir / name).unlink()
    entries = from_kaldi(kaldi_dir, root=kaldi_dir.parent.parent)
    assert [(e["id"], e["duration"]) for e in entries] == [("rec1", 3.0), ("rec2", 2.0)]


def test_kaldi_piped_wav_scp_is_an_error_naming_the_line(kaldi_dir):
    (kaldi_dir / "wav.scp").write_text("rec1 /x/rec1.wav\nrec2 flac -c -d /x/rec2.flac |\n")
    with pytest.raises(ValueError, match=r"wav.scp line 2: 'flac -c -d /x/rec2.flac \|' is a command .*> rec.wav"):
        from_kaldi(kaldi_dir)
    (kaldi_dir / "wav.scp").write_text("rec1 /x/feats.ark:1234\n")
    with pytest.raises(ValueError, match=r"wav.scp line 1: .* extended filename"):
        from_kaldi(kaldi_dir)


def test_kaldi_utterance_missing_from_utt2spk_or_unknown_to_segments(kaldi_dir):
    (kaldi_dir / "utt2spk").write_text("spkA-rec1-0 spkA\nspkA-rec2-0 spkA\n")
    with pytest.raises(ValueError, match=r"1 utterances of .*segments are not in .*utt2spk: spkB-rec1-1"):
        from_kaldi(kaldi_dir, root=kaldi_dir.parent.parent)
    (kaldi_dir / "utt2spk").write_text("spkA-rec1-0 spkA\nspkB-rec1-1 spkB\nspkA-rec2-0 spkA\nghost spkC\n")
    with pytest.raises(ValueError, match=r"not in .*segments: .*utt2spk line 4 \(ghost\)"):
        from_kaldi(kaldi_dir, root=kaldi_dir.parent.parent)


def test_kaldi_lines_with_missing_fields_and_duplicate_ids(kaldi_dir):
    (kaldi_dir / "segments").write_text("s1 rec1 0.0 1.5\ns2 rec1 1.5\n")
    with pytest.raises(ValueError, match=r"segments line 2: expected at least 4 fields, got 3"):
        from_kaldi(kaldi_dir, root=kaldi_dir.parent.parent)
    (kaldi_dir / "segments").write_text("s1 rec1 0.0 1.5\ns1 rec1 1.5 2.0\n")
    with pytest.raises(ValueError, match=r"id 's1' is used twice: .*segments line 1 and .*segments line 2"):
        from_kaldi(kaldi_dir, root=kaldi_dir.parent.parent)


def test_summary_counts_label_values_but_not_unique_ones():
    entries = [
        {"id": f"u{i}", "audio": "a.wav", "duration": 900.0, "emotion": "neu" if i % 3 else "ang", "text": f"t{i}"}
        for i in range(6)
    ]
    entries[0]["speaker"] = "s1"
    summary = summarize(entries)
    assert summary.splitlines()[0] == "6 utterances, 1.50 hours; fields: emotion, speaker, text"
    assert "  emotion: ang 2, neu 4" in summary
    assert "  text: 6 distinct values" in summary
    assert "  speaker (in 1 of 6): 1 distinct values" in summary


def test_manifest_command_writes_a_manifest_that_loads(emotion_folder, tmp_path, capsys):
    out = tmp_path / "data" / "train.jsonl"
    pattern = r"(?P<speaker>[^/]+)/(?P<emotion>[^_]+)_.*"
    assert main(["manifest", "--folder", str(emotion_folder), "--pattern", pattern, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("note: 2 of 5 files")  # the files the pattern leaves out, on one line
    manifest = read_manifest(out, fields={"speaker": str, "emotion": str})
    assert manifest.ids == ["spk1/ang_02", "spk1/neu_01", "spk2/neu_03"]
    assert json.loads(out.read_text().splitlines()[0])["audio"] == str(emotion_folder / "spk1" / "ang_02.flac")
    printed = captured.out
    assert f"wrote {out}: 3 utterances, 0.00 hours; fields: emotion, speaker" in printed
    assert "  emotion: ang 1, neu 2\n  speaker: spk1 2, spk2 1" in printed


def test_manifest_command_reports_bad_input_in_one_line_with_exit_code_2(kaldi_dir, tmp_path, capsys):
    (kaldi_dir / "wav.scp").write_text("rec1 sox in.wav -t wav - |\n")
    out = tmp_path / "m.jsonl"
    assert main(["manifest", "--kaldi", str(kaldi_dir), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("strata manifest: error: ") and "wav.scp line 1" in error and "piped" in error
    assert not out.exists()
    assert main(["manifest", "--csv", str(tmp_path / "m.csv"), "--pattern", "x", "--out", str(out)]) == 2
    assert "--pattern does not apply" in capsys.readouterr().err
