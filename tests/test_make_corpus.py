"""The mini corpus generator: valid manifests, speaker-disjoint emotion splits, deterministic from the seed."""

import importlib.util
import json
from pathlib import Path

import pytest
import soundfile

SCRIPT = Path(__file__).resolve().parents[1] / "egs" / "mini" / "local" / "make_corpus.py"
SMALL = ["--num-speakers", "24", "--utterances-per-speaker", "4"]


def make_corpus(out: Path, seed: int = 0) -> Path:
    spec = importlib.util.spec_from_file_location("make_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out), "--seed", str(seed), *SMALL])
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "a")


def test_manifests_carry_the_fields_and_relative_paths_that_exist(corpus):
    entries = lines(corpus / "all.jsonl")
    assert len(entries) == 24 * 4
    for entry in entries:
        assert {"id", "audio", "duration", "speaker", "emotion", "text"} <= set(entry)
        assert not Path(entry["audio"]).is_absolute() and (corpus / entry["audio"]).is_file()
        assert entry["text"].strip()
    for split in ["train", "valid", "test"]:
        for entry in lines(corpus / "emotion" / f"{split}.jsonl"):
            assert (corpus / "emotion" / entry["audio"]).is_file()


def test_emotion_splits_are_speaker_disjoint_and_cover_every_utterance_once(corpus):
    splits = {s: lines(corpus / "emotion" / f"{s}.jsonl") for s in ["train", "valid", "test"]}
    speakers = {s: {e["speaker"] for e in entries} for s, entries in splits.items()}
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["valid"]
    assert not speakers["valid"] & speakers["test"]
    ids = sorted(e["id"] for entries in splits.values() for e in entries)
    assert ids == sorted(e["id"] for e in lines(corpus / "all.jsonl"))


def test_speakers_and_emotions_are_balanced(corpus):
    entries = lines(corpus / "all.jsonl")
    assert len({e["speaker"] for e in entries}) == 24
    for emotion in ["neu", "hap", "ang", "sad"]:
        assert sum(e["emotion"] == emotion for e in entries) == 24


def test_audio_is_mono_16k_speech_with_the_manifest_duration(corpus):
    for entry in lines(corpus / "all.jsonl")[:12]:
        data, rate = soundfile.read(corpus / entry["audio"], always_2d=True)
        assert rate == 16000 and data.shape[1] == 1
        assert abs(data.shape[0] / 16000 - entry["duration"]) < 1e-3
        assert 0.5 < entry["duration"] < 8 and data.std() > 0.01 and abs(data).max() <= 1.0


def test_the_same_seed_gives_the_same_corpus_and_another_seed_a_different_one(corpus, tmp_path):
    again = make_corpus(tmp_path / "b")
    assert (again / "all.jsonl").read_text() == (corpus / "all.jsonl").read_text()
    first = lines(corpus / "all.jsonl")[0]["audio"]
    assert (again / first).read_bytes() == (corpus / first).read_bytes()
    other = make_corpus(tmp_path / "c", seed=1)
    assert (other / "all.jsonl").read_text() != (corpus / "all.jsonl").read_text()
