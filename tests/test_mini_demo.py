"""egs/mini/run.sh --demo true (what `make demo` runs) and the full recipe, with a `strata` that logs its calls
(and answers `strata run-dir`, the run folders' names, as the real one does)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("emotion", "speaker_id", "speaker_verification", "asr", "asd")


def recorded_calls(tmp_path: Path, *options: str) -> list[list[str]]:
    data, exp, bin_dir, log = tmp_path / "data", tmp_path / "exp", tmp_path / "bin", tmp_path / "calls.txt"
    for task in TASKS:
        (data / task).mkdir(parents=True)
        (data / task / "train.jsonl").write_text("")
    (data / "speaker_verification" / "trials.txt").write_text("")
    (data / "all.jsonl").write_text("")
    bin_dir.mkdir()
    fake = bin_dir / "strata"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {log}\n[ "$1" != run-dir ] || exec {sys.executable} -m recipes.cli "$@"\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = ["bash", str(ROOT / "egs/mini/run.sh"), "--stage", "1", "--data_dir", str(data), "--exp_dir", str(exp)]
    result = subprocess.run([*command, *options], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return [line.split() for line in log.read_text().splitlines()]


def option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_demo_runs_every_task_with_fbank_one_probe_and_the_report(tmp_path):
    calls = recorded_calls(tmp_path, "--demo", "true")
    fits = [call for call in calls if call[0] == "fit"]
    assert [Path(option(call, "--config")).stem for call in fits] == list(TASKS)
    assert {option(call, "--model.upstream.name") for call in fits} == {"fbank"}
    assert sum(call[0] == "test" for call in calls) == len(TASKS)  # no FeatEx or frozen-feature ASD runs
    extracts = [call for call in calls if call[0] == "extract"]
    assert len(extracts) == 1 and option(extracts[0], "--upstream") == "tiny_hubert"
    probes = [call for call in calls if call[0] == "probe"]
    assert [option(call, "--task") for call in probes] == ["emotion"]
    assert not [call for call in calls if call[0] in ("analyze", "weights", "pretrain")]
    assert calls[-1][0] == "report"
    exp = tmp_path / "exp"
    assert [option(call, "--trainer.default_root_dir") for call in fits] == [
        str(exp / task / "fbank_weighted_sum") for task in TASKS
    ]


@pytest.mark.parametrize("demo", [[], ["--demo", "false"]])
def test_the_full_recipe_keeps_both_upstreams_every_analysis_and_pre_training(tmp_path, demo):
    calls = recorded_calls(tmp_path, *demo)
    fits = [call for call in calls if call[0] == "fit"]
    upstreams = [option(call, "--model.upstream.name") for call in fits]
    assert upstreams.count("fbank") == upstreams.count("tiny_hubert") == len(TASKS) + 1  # + the FeatEx ASD run
    embeddings = [option(call, "--model.task.init_args.embedding") for call in calls
                  if "--model.task.init_args.embedding" in call]  # fmt: skip
    assert sorted(embeddings) == ["featex"] * 4 + ["frozen"] * 2  # per upstream: FeatEx fit and test, frozen test
    assert {option(call, "--task") for call in calls if call[0] == "probe"} == {"emotion", "speaker_id"}
    assert {call[1] for call in calls if call[0] == "analyze"} == {"cca", "mi"}
    pretrained = [Path(option(call, "--trainer.default_root_dir")).name for call in calls if call[0] == "pretrain"]
    assert pretrained == ["tiny_hubert_it1", "tiny_hubert_random", "tera_tiny"]  # HuBERT, its random twin, TERA
    distills = [call for call in calls if call[0] == "distill"]
    assert len(distills) == 1 and option(distills[0], "--model.teacher").endswith("tiny_hubert_it1/upstream")
    assert option(distills[0], "--data.teacher_cache").endswith("tiny_hubert_it1/cache")  # stage 7's extraction
    extracted = [option(call, "--upstream") for call in calls if call[0] == "extract"]
    assert [Path(source).parent.name for source in extracted[-4:]] == [
        "tiny_hubert_it1", "tiny_hubert_random", "tera_tiny", "distilled_tiny_hubert"
    ]  # fmt: skip
    assert extracted[-2].startswith("tera:") and extracted[-1].startswith("hf:")
    compares = [call for call in calls if call[0] == "compare"]
    assert [Path(folder).name for folder in compares[0][1:5]] == [
        "tiny_hubert_random", "tiny_hubert_it1", "tera_tiny", "distilled_tiny_hubert"
    ]  # fmt: skip
    assert [call[1:3] for call in calls if call[0] == "speed"] == [[extracted[-1], extracted[-4]]]  # student, teacher
    assert calls[-1][0] == "report"
    asd_tests = {Path(option(call, "--trainer.default_root_dir")).name: call for call in calls
                 if call[0] == "test" and option(call, "--config") == "conf/asd.yaml"}  # fmt: skip
    assert sorted(asd_tests) == sorted(f"{up}_weighted_sum{variant}" for up in ("fbank", "tiny_hubert")
                                       for variant in ("", "_featex", "_frozen"))  # fmt: skip
    frozen = asd_tests["fbank_weighted_sum_frozen"]  # pooled features scored directly: no fit, no checkpoint
    assert option(frozen, "--model.task.init_args.embedding") == "frozen" and "--ckpt_path" not in frozen
    assert not [call for call in fits if "asd/fbank_weighted_sum_frozen" in option(call, "--trainer.default_root_dir")]
    trials = [call[0] for call in calls if "--data.trials" in call]
    assert trials == ["test", "test"]  # speaker verification's trials score the test set only


def test_stage_8_exports_each_tested_run_and_predicts_its_test_set(tmp_path):
    tested = ("emotion", "asr")  # the others have no results.json: nothing to export
    for task in tested:
        (tmp_path / "exp" / task / "fbank_weighted_sum").mkdir(parents=True)
        (tmp_path / "exp" / task / "fbank_weighted_sum" / "results.json").write_text("{}")
    calls = recorded_calls(tmp_path, "--demo", "true", "--stage", "8", "--stop_stage", "8")
    exports = [call for call in calls if call[0] == "export"]
    predicts = [call for call in calls if call[0] == "predict"]
    assert [call[1] for call in exports] == [str(tmp_path / "exp" / task / "fbank_weighted_sum") for task in tested]
    assert [call[1] for call in predicts] == [option(call, "--out") for call in exports]
    manifests = [str(tmp_path / "data" / task / "test.jsonl") for task in tested]
    assert [option(call, "--manifest") for call in predicts] == manifests


def test_a_trained_upstream_and_a_tag_name_their_own_run_folders(tmp_path):
    calls = recorded_calls(tmp_path, "--demo", "true", "--stop_stage", "1", "--trainable", "top:2", "--tag", "lr3")
    fit, test = (call for call in calls if call[0] in ("fit", "test"))
    assert option(fit, "--model.upstream.trainable") == "top:2"
    run = str(tmp_path / "exp" / "emotion" / "fbank_weighted_sum_top2_lr3")
    assert option(fit, "--trainer.default_root_dir") == option(test, "--trainer.default_root_dir") == run
