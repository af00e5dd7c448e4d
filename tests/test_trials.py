"""recipes/trials.py: VoxCeleb-style trial lists mapped onto manifest entries, errors that name the line, and
balanced seeded trials from speaker labels."""

from itertools import combinations
from pathlib import Path

import pytest
import torch

from recipes.trials import Trials, TrialsError, make_trials, read_trials, write_trials

IDS = ["spk1_a", "spk1_b", "spk2_a", "spk2_b"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_exact_ids_become_manifest_indices(tmp_path):
    trials = read_trials(write(tmp_path / "trials.txt", "1 spk1_a spk1_b\n\n0 spk2_b spk1_a\n"), IDS)
    assert isinstance(trials, Trials) and len(trials) == 2
    assert trials.path == tmp_path / "trials.txt"
    assert trials.labels.tolist() == [1, 0]
    assert trials.enroll.tolist() == [0, 3]
    assert trials.test.tolist() == [1, 0]
    assert trials.labels.dtype == trials.enroll.dtype == trials.test.dtype == torch.long


@pytest.mark.parametrize(
    "ids",
    [
        ["id10270/5r0dWxy17C8/00001", "id10271/1gtz-CUIygI/00002"],  # the path without its extension
        ["id10270-5r0dWxy17C8-00001", "id10271-1gtz-CUIygI-00002"],  # Kaldi / ESPnet: / as -
        ["id10270_5r0dWxy17C8_00001", "id10271_1gtz-CUIygI_00002"],  # / as _
    ],
)
def test_voxceleb_paths_map_onto_ids_without_the_extension(tmp_path, ids):
    text = "0 id10270/5r0dWxy17C8/00001.wav id10271/1gtz-CUIygI/00002.wav\n1 id10271/1gtz-CUIygI/00002.wav " + ids[1]
    trials = read_trials(write(tmp_path / "veri_test.txt", text), ["other", *ids])
    assert trials.enroll.tolist() == [1, 2] and trials.test.tolist() == [2, 2]


def test_voxceleb_paths_map_onto_the_tail_of_audio_paths(tmp_path):
    ids = ["u0", "u1", "u2"]
    audio = [
        "/data/vox1/wav/id10270/5r0dWxy17C8/00001.wav",
        "/data/vox1/wav/id10271/1gtz-CUIygI/00001.wav",  # same file name, another speaker and video
        "/data/vox1/flac/id10271/1gtz-CUIygI/00002.flac",  # converted: the extension does not matter
    ]
    text = "1 id10271/1gtz-CUIygI/00001.wav id10271/1gtz-CUIygI/00002.wav\n0 id10270/5r0dWxy17C8/00001.wav u1\n"
    trials = read_trials(write(tmp_path / "trials.txt", text), ids, audio)
    assert trials.enroll.tolist() == [1, 0] and trials.test.tolist() == [2, 1]
    # Without the audio paths the same tokens name nothing; with one component, "00001" ends two paths.
    with pytest.raises(TrialsError, match="3 trial ids are not in the manifest"):
        read_trials(tmp_path / "trials.txt", ids)
    with pytest.raises(TrialsError, match=r"line 1: '00001.wav' matches the end of several audio paths"):
        read_trials(write(tmp_path / "short.txt", "1 00001.wav u2\n0 u0 u1\n"), ids, audio)


def test_missing_ids_are_one_error_with_their_count_the_first_few_and_the_manifest(tmp_path):
    lines = ["1 spk1_a spk1_b", "0 spk1_a spk2_a"] + [f"0 spk1_a gone{k}" for k in range(7)] + ["1 gone0 gone7"]
    path = write(tmp_path / "trials.txt", "\n".join(lines) + "\n")
    with pytest.raises(TrialsError) as error:
        read_trials(path, IDS, manifest="data/test.jsonl")
    message = str(error.value)
    assert message.startswith(f"{path}: 8 trial ids are not in manifest data/test.jsonl (4 utterances), first: ")
    assert "gone0 (line 3), gone1 (line 4), gone2 (line 5), gone3 (line 6), gone4 (line 7);" in message
    assert "gone5" not in message and "gone7" not in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 spk1_a spk1_b\n0 spk1_a\n", r"trials.txt line 2: expected 3 fields `<1\|0> <enroll> <test>`, got 2"),
        ("1 spk1_a spk1_b\n\n0 spk1_a spk2_a x\n", "trials.txt line 3: expected 3 fields .* got 4"),
        ("target spk1_a spk1_b\n", r"trials.txt line 1: label 'target' is not 1 \(target\) or 0 \(non-target\)"),
        ("1 spk1_a spk1_b\n-1 spk1_a spk2_a\n", "trials.txt line 2: label '-1' is not 1"),
        ("\n  \n", "trials.txt has no trials"),
        ("1 spk1_a spk1_b\n1 spk2_a spk2_b\n", r"has no non-target \(0\) trial among 2: the EER is undefined"),
        ("0 spk1_a spk2_b\n", r"has no target \(1\) trial among 1"),
    ],
)
def test_malformed_trials_are_errors_that_name_the_file_and_line(tmp_path, text, message):
    with pytest.raises(TrialsError, match=message):
        read_trials(write(tmp_path / "trials.txt", text), IDS)


def test_a_missing_trials_file_is_an_error(tmp_path):
    with pytest.raises(TrialsError, match=r"trials file .*nothing.txt does not exist"):
        read_trials(tmp_path / "nothing.txt", IDS)


SPEAKERS = ["a"] * 4 + ["b"] * 4 + ["c"] * 3 + ["d"]  # d has one utterance: no target of its own
UTTERANCES = [f"{speaker}{k}" for k, speaker in enumerate(SPEAKERS)]


def test_make_trials_is_balanced_with_every_same_speaker_pair_and_no_self_pair():
    trials = make_trials(UTTERANCES, SPEAKERS, seed=0)
    speaker = dict(zip(UTTERANCES, SPEAKERS, strict=True))
    targets = [(e, t) for label, e, t in trials if label == 1]
    nontargets = [(e, t) for label, e, t in trials if label == 0]
    # 4 + 4 + 3 utterances: 6 + 6 + 3 same-speaker pairs, each once with the earlier utterance enrolled.
    expected = {pair for pair in combinations(UTTERANCES, 2) if speaker[pair[0]] == speaker[pair[1]]}
    assert len(targets) == 15 and set(targets) == expected
    assert len(nontargets) == 15 == len(set(nontargets) | {(t, e) for e, t in nontargets}) / 2
    assert all(speaker[e] != speaker[t] for e, t in nontargets)
    assert all(e != t for _, e, t in trials)
    assert sorted(trials, key=lambda trial: (UTTERANCES.index(trial[1]), UTTERANCES.index(trial[2]))) == trials


def test_make_trials_is_deterministic_for_a_seed_and_subsamples_targets():
    assert make_trials(UTTERANCES, SPEAKERS, seed=3) == make_trials(UTTERANCES, SPEAKERS, seed=3)
    assert make_trials(UTTERANCES, SPEAKERS, seed=3) != make_trials(UTTERANCES, SPEAKERS, seed=4)
    few = make_trials(UTTERANCES, SPEAKERS, seed=3, max_targets=5)
    assert [label for label, _, _ in few].count(1) == 5 and len(few) == 10
    assert few == make_trials(UTTERANCES, SPEAKERS, seed=3, max_targets=5)
    full = {trial for trial in make_trials(UTTERANCES, SPEAKERS) if trial[0] == 1}
    assert {trial for trial in few if trial[0] == 1} < full


def test_make_trials_keeps_fewer_targets_when_different_speaker_pairs_run_short():
    # 3 utterances of x and one of y: 3 same-speaker pairs and only 3 different-speaker ones, all used.
    trials = make_trials(["x1", "x2", "x3", "y1"], ["x", "x", "x", "y"])
    assert sorted(trials) == [(0, "x1", "y1"), (0, "x2", "y1"), (0, "x3", "y1"), (1, "x1", "x2"), (1, "x1", "x3"),
                              (1, "x2", "x3")]  # fmt: skip
    trials = make_trials(["x1", "x2", "x3", "x4", "y1"], ["x", "x", "x", "x", "y"])
    assert [label for label, _, _ in trials].count(1) == 4 == [label for label, _, _ in trials].count(0)


@pytest.mark.parametrize(
    ("ids", "speakers", "kwargs", "message"),
    [
        (["u1", "u2"], ["a", "a"], {}, "at least 2 speakers; got 1"),
        (["u1", "u2"], ["a", "b"], {}, "need a speaker with 2 utterances; all 2 have one"),
        (["u1", "u2"], ["a"], {}, "1 speakers for 2 ids"),
        (["u1", "u1", "u2"], ["a", "a", "b"], {}, "ids must be unique .* repeated: u1"),
        (["u1", "u2", "u3"], ["a", "a", "b"], {"max_targets": 0}, "max_targets must be positive"),
    ],
)
def test_make_trials_refuses_what_cannot_make_both_kinds(ids, speakers, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_trials(ids, speakers, **kwargs)


def test_written_trials_read_back_the_same(tmp_path):
    trials = make_trials(UTTERANCES, SPEAKERS, seed=1)
    path = tmp_path / "sub" / "trials.txt"
    write_trials(path, trials)
    assert path.read_text().splitlines()[0] == " ".join(map(str, trials[0]))
    assert not list(path.parent.glob(".*partial"))
    back = read_trials(path, UTTERANCES)
    assert len(back) == len(trials)
    assert [(label, UTTERANCES[e], UTTERANCES[t]) for label, e, t in
            zip(back.labels.tolist(), back.enroll.tolist(), back.test.tolist(), strict=True)] == trials  # fmt: skip
    with pytest.raises(ValueError, match="trial 1: label 2 is not 1"):
        write_trials(path, [(2, "a", "b")])
    with pytest.raises(ValueError, match="trial 2: 'a b' cannot be a trials token"):
        write_trials(path, [(1, "a", "b"), (0, "a b", "c")])
    assert read_trials(path, UTTERANCES).labels.numel() == len(trials)  # a refused write leaves the old file
