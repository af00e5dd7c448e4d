"""egs/mini/local/make_corpus.py: valid manifests, speaker-disjoint emotion and verification splits, utterance-
disjoint speaker-id splits, balanced labels and trials, the same bytes from the same seed, and emotions that change
the delivery the way the prosody table says."""

import re
import statistics
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile
from egs_scripts import load_script as load_egs_script
from egs_scripts import read_jsonl as lines

from recipes.data import read_manifest
from recipes.trials import read_trials

EMOTIONS = ("neu", "hap", "ang", "sad")
SPLITS = ("train", "valid", "test")
TASKS = ("emotion", "speaker_id", "speaker_verification", "asr")
MANIFESTS = ["all.jsonl", *(f"{task}/{split}.jsonl" for task in TASKS for split in SPLITS)]
TRIALS = {"valid": "speaker_verification/valid_trials.txt", "test": "speaker_verification/trials.txt"}
SMALL = ["--num-speakers", "24", "--utterances-per-speaker", "4"]


def load_script() -> ModuleType:
    return load_egs_script("make_corpus")


def generate(out: Path, seed: int = 0) -> Path:
    load_script().main(["--out", str(out), "--seed", str(seed), *SMALL])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("mini_corpus") / "seed0")


def test_manifests_validate_with_the_task_fields_and_relative_paths_that_exist(corpus):
    fields = {"speaker": str, "emotion": str, "text": str, "gender": str}
    for name in MANIFESTS:
        read_manifest(corpus / name, fields)  # raises on a missing field, a duplicate id or a missing audio file
    for entry in lines(corpus / "all.jsonl"):
        assert entry["audio"] == f"wav/{entry['id']}.wav"
        assert entry["id"] == f"{entry['speaker']}_{entry['emotion']}_{entry['id'][-3:]}"
        assert re.fullmatch(r"[A-Z']+( [A-Z']+){3,7}", entry["text"]), entry["text"]
        assert entry["gender"] in {"male", "female"}
    for name in MANIFESTS[1:]:
        for entry in lines(corpus / name):
            assert entry["audio"] == f"../wav/{entry['id']}.wav"  # relative to the manifest's own folder


def test_emotion_splits_are_speaker_disjoint_mixed_and_cover_every_utterance_once(corpus):
    splits = {split: lines(corpus / "emotion" / f"{split}.jsonl") for split in SPLITS}
    speakers = {split: {e["speaker"] for e in entries} for split, entries in splits.items()}
    assert [len(speakers[split]) for split in SPLITS] == [16, 4, 4]
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    for entries in splits.values():
        assert {e["gender"] for e in entries} == {"male", "female"}
    ids = [e["id"] for entries in splits.values() for e in entries]
    assert sorted(ids) == sorted(e["id"] for e in lines(corpus / "all.jsonl"))
    assert len(ids) == len(set(ids))


def test_speaker_id_splits_are_utterance_disjoint_and_each_holds_every_speaker(corpus):
    everything = lines(corpus / "all.jsonl")
    splits = {split: lines(corpus / "speaker_id" / f"{split}.jsonl") for split in SPLITS}
    ids = [e["id"] for entries in splits.values() for e in entries]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(e["id"] for e in everything)
    speakers = {e["speaker"] for e in everything}
    for split, entries in splits.items():
        assert {e["speaker"] for e in entries} == speakers
        # 4 utterances a speaker: 4 // 8 rounds to none, and valid and test keep one each.
        per_speaker = [sum(e["speaker"] == s for e in entries) for s in speakers]
        assert per_speaker == [{"train": 2, "valid": 1, "test": 1}[split]] * len(speakers)
    assert [len(splits[split]) for split in SPLITS] == [48, 24, 24]
    # Manifest order follows all.jsonl, like the emotion manifests.
    train = {e["id"] for e in splits["train"]}
    assert [e["id"] for e in splits["train"]] == [e["id"] for e in everything if e["id"] in train]


def test_speaker_id_split_is_one_eighth_each_with_eight_utterances():
    module = load_script()
    plan = module.plan_utterances(module.make_speakers(3), 8, np.random.default_rng(0))
    splits = module.split_utterances(plan, np.random.default_rng(0))
    for speaker in ("spk00", "spk01", "spk02"):
        assert [sum(i.startswith(speaker) for i in splits[split]) for split in SPLITS] == [6, 1, 1]
    assert splits != module.split_utterances(plan, np.random.default_rng(1))  # the generator picks them


def test_verification_and_asr_splits_are_the_emotion_speaker_split(corpus):
    for split in SPLITS:
        emotion = (corpus / "emotion" / f"{split}.jsonl").read_bytes()
        assert (corpus / "speaker_verification" / f"{split}.jsonl").read_bytes() == emotion
        assert (corpus / "asr" / f"{split}.jsonl").read_bytes() == emotion


@pytest.mark.parametrize("split", ["valid", "test"])
def test_trials_pair_utterances_of_their_split_balanced_and_read_back(corpus, split):
    manifest = read_manifest(corpus / "speaker_verification" / f"{split}.jsonl")
    speaker = {e["id"]: e["speaker"] for e in manifest.entries}
    rows = [line.split() for line in (corpus / TRIALS[split]).read_text().splitlines()]
    assert {token for row in rows for token in row[1:]} <= set(speaker)
    assert all(row[0] == str(int(speaker[row[1]] == speaker[row[2]])) for row in rows)
    # 4 speakers x 4 utterances: every one of the 4 x 6 same-speaker pairs, and as many different-speaker pairs.
    assert [row[0] for row in rows].count("1") == 24 == [row[0] for row in rows].count("0")
    assert len({frozenset(row[1:]) for row in rows}) == len(rows) and all(row[1] != row[2] for row in rows)
    trials = read_trials(corpus / TRIALS[split], manifest.ids, manifest=manifest.path)
    assert len(trials) == 48 and int(trials.labels.sum()) == 24
    assert [manifest.ids[i] for i in trials.enroll.tolist()] == [row[1] for row in rows]


def test_every_speaker_speaks_every_emotion_equally_often(corpus):
    by_speaker: dict[str, list[str]] = {}
    for entry in lines(corpus / "all.jsonl"):
        by_speaker.setdefault(entry["speaker"], []).append(entry["emotion"])
    assert len(by_speaker) >= 24
    for emotions in by_speaker.values():
        assert sorted(emotions) == sorted(EMOTIONS)


def test_audio_is_mono_16k_pcm_not_silent_and_as_long_as_the_manifest_says(corpus):
    for entry in lines(corpus / "all.jsonl"):
        path = corpus / entry["audio"]
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert entry["duration"] == round(info.frames / 16000, 3)
        assert 1.0 < entry["duration"] < 5.0
        data, _ = soundfile.read(path, dtype="float32")
        assert data.std() > 0.01 and abs(data).max() < 1.0


def test_the_same_seed_gives_the_same_bytes_and_another_seed_a_different_corpus(corpus, tmp_path):
    again = generate(tmp_path / "again")
    for name in [*MANIFESTS, *TRIALS.values()]:
        assert (again / name).read_bytes() == (corpus / name).read_bytes()
    for entry in lines(corpus / "all.jsonl"):
        assert (again / entry["audio"]).read_bytes() == (corpus / entry["audio"]).read_bytes()
    other = generate(tmp_path / "other", seed=1)
    assert (other / "all.jsonl").read_text() != (corpus / "all.jsonl").read_text()
    shared = sorted({e["audio"] for e in lines(other / "all.jsonl")} & {e["audio"] for e in lines(again / "all.jsonl")})
    assert shared and (other / shared[0]).read_bytes() != (corpus / shared[0]).read_bytes()


def test_sad_is_slower_and_angry_faster_than_neutral(corpus):
    entries = lines(corpus / "all.jsonl")

    def seconds_per_word(emotion: str) -> float:
        return statistics.median(e["duration"] / len(e["text"].split()) for e in entries if e["emotion"] == emotion)

    # Angry is at 170% rate but stresses every word, which lengthens it again.
    assert seconds_per_word("sad") > 1.3 * seconds_per_word("neu") > 1.3 * 1.05 * seconds_per_word("ang")


def test_a_missing_espeak_ng_says_how_to_install_it(tmp_path, monkeypatch):
    module = load_script()
    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install espeak-ng.*brew install espeak-ng"):
        module.main(["--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("bad", [["--utterances-per-speaker", "6"], ["--num-speakers", "1000"]])
def test_arguments_it_cannot_honour_are_refused_before_any_work(tmp_path, bad):
    with pytest.raises(SystemExit):
        load_script().main(["--out", str(tmp_path / "none"), *bad])
    assert not (tmp_path / "none").exists()
