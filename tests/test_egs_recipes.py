"""The dataset recipes' run.sh on trees with the real layouts (the prepare tests' fixtures): stage 0 writes the
manifests each later stage reads, and IEMOCAP's stages 1-2 train and test one fold through egs/utils/recipe.sh,
whose run folders are the ones recipes.runs names."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from egs_scripts import load_script
from test_prepare_dcase2023t2 import DEV, EVAL, write_set
from test_prepare_iemocap import make_tree as make_iemocap
from test_prepare_librispeech import write_tree as make_librispeech
from test_prepare_voxceleb1 import make_tree as make_voxceleb1

from recipes.data import read_manifest
from recipes.runs import run_dir

EGS = Path(__file__).resolve().parents[1] / "egs"


def run_sh(recipe: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(EGS / recipe / "run.sh"), *args], env=env, capture_output=True, text=True)


def test_iemocap_prepares_five_folds_then_trains_and_tests_one(tmp_path):
    root, data, exp = make_iemocap(tmp_path / "IEMOCAP_full_release"), tmp_path / "data", tmp_path / "exp"
    done = run_sh("iemocap", "--stage", "0", "--stop_stage", "2", "--iemocap_root", str(root), "--data_dir", str(data),
                  "--exp_dir", str(exp), "--valid_fraction", "0.25", "--folds", "1", "--upstream", "fbank",
                  "--", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for k in range(1, 6):
        assert {e["session"] for e in read_manifest(data / f"fold{k}" / "test.jsonl").entries} == {k}
    results = json.loads((exp / "emotion" / "fbank_weighted_sum" / "fold1" / "results.json").read_text())
    assert results["task"] == "emotion" and 0 <= results["UA"] <= 1
    again = run_sh("iemocap", "--stage", "1", "--stop_stage", "2", "--data_dir", str(data), "--exp_dir", str(exp),
                   "--folds", "1", "--upstream", "fbank")  # fmt: skip
    assert again.returncode == 0 and "already done" in again.stdout


def test_iemocap_mean_over_folds_averages_ua_and_wa_and_refuses_missing_folds(tmp_path, capsys):
    mean = load_script("mean_over_folds", "iemocap")
    run = tmp_path / "run"
    for k in range(1, 6):
        (run / f"fold{k}").mkdir(parents=True)
        results = {"task": "emotion", "upstream": "u", "UA": 0.1 * k, "WA": 0.5, "num_utterances": 10}
        (run / f"fold{k}" / "results.json").write_text(json.dumps(results))
    mean.main([str(run)])
    summary = json.loads((run / "results.json").read_text())
    assert summary["UA"] == pytest.approx(0.3) and summary["WA"] == pytest.approx(0.5)
    assert summary["UA/fold5"] == 0.5 and summary["num_utterances"] == 50 and summary["task"] == "emotion"
    assert "| mean | **30.00** | **50.00** |" in capsys.readouterr().out
    (run / "fold3" / "results.json").unlink()
    with pytest.raises(SystemExit, match="fold3"):
        mean.main([str(run)])


def test_voxceleb1_stage_0_writes_sid_sv_and_trials(tmp_path):
    root, data = make_voxceleb1(tmp_path / "VoxCeleb1"), tmp_path / "data"
    done = run_sh("voxceleb1", "--stage", "0", "--stop_stage", "0", "--voxceleb1_root", str(root),
                  "--data_dir", str(data), "--sv_valid_speakers", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    assert names == ["sid/test.jsonl", "sid/train.jsonl", "sid/valid.jsonl",
                     "sv/test.jsonl", "sv/train.jsonl", "sv/trials.txt", "sv/valid.jsonl"]  # fmt: skip


def test_librispeech_stage_0_writes_one_manifest_per_split(tmp_path):
    make_librispeech(tmp_path / "corpus" / "LibriSpeech")
    done = run_sh("librispeech", "--stage", "0", "--stop_stage", "0", "--librispeech_root", str(tmp_path / "corpus"),
                  "--data_dir", str(tmp_path / "data"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(read_manifest(path, fields={"text": str}) for path in (tmp_path / "data").glob("*.jsonl"))
    assert (tmp_path / "data" / "dev-clean.jsonl").is_file()


def test_dcase2023t2_stage_0_writes_dev_and_eval_manifests(tmp_path):
    root = tmp_path / "dcase"
    write_set(root / "dev_data" / "raw", DEV)
    write_set(root / "eval_data" / "raw", EVAL)
    done = run_sh("dcase2023t2", "--stage", "0", "--stop_stage", "0", "--dcase_root", str(root),
                  "--data_dir", str(tmp_path / "data"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "dev_test.jsonl", "dev_train.jsonl", "dev_valid.jsonl", "eval_test.jsonl", "eval_train.jsonl"]  # fmt: skip


@pytest.mark.parametrize("recipe", ["iemocap", "voxceleb1", "librispeech", "dcase2023t2"])
def test_stage_0_without_the_dataset_root_says_which_option(recipe, tmp_path):
    done = run_sh(recipe, "--stage", "0", "--stop_stage", "0", "--data_dir", str(tmp_path / "data"))
    assert done.returncode != 0 and "_root is required" in done.stderr


@pytest.mark.parametrize(
    ("upstream", "trainable", "tag", "variant"),
    [("hubert_base", "frozen", "", ""), ("hf:/models/my-hubert", "top:2", "lr3", ""), ("fbank", "all", "", "featex"),
     ("fbank", "frozen", "lr3", "frozen")],
)  # fmt: skip
def test_recipe_sh_names_run_folders_as_recipes_runs_does(tmp_path, upstream, trainable, tag, variant):
    script = (f'exp_dir={tmp_path} upstream={upstream} interface=hconv trainable={trainable} tag={tag}\n'
              f'. {EGS / "utils" / "recipe.sh"}\nrun_dir emotion {variant}\n')  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euc", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = run_dir("emotion", upstream, "hconv", trainable, "_".join(filter(None, [tag, variant])), tmp_path)
    assert done.stdout == f"{expected}\n"


def iemocap_calls(tmp_path: Path, *options: str) -> list[list[str]]:
    """The strata calls of IEMOCAP's stages 1-2 on fold 1 with `options`, through a `strata` that logs them (and
    answers `strata run-dir` as the real one does)."""
    data, bin_dir, log = tmp_path / "data", tmp_path / "bin", tmp_path / "calls.txt"
    (data / "fold1").mkdir(parents=True)
    (data / "fold1" / "train.jsonl").write_text("")
    bin_dir.mkdir()
    fake = bin_dir / "strata"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {log}\n'
                    f'[ "$1" != run-dir ] || exec {sys.executable} -m recipes.cli "$@"\n')  # fmt: skip
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = ["bash", str(EGS / "iemocap" / "run.sh"), "--stage", "1", "--stop_stage", "2", "--folds", "1",
               "--data_dir", str(data), "--exp_dir", str(tmp_path / "exp"), *options]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line.split(" ", 1) for line in log.read_text().splitlines() if not line.startswith("run-dir")]


def test_iemocap_system_morais_fine_tunes_and_tests_the_average_of_the_five_best(tmp_path):
    (_, fit), (_, test) = iemocap_calls(tmp_path, "--system", "morais")
    run = tmp_path / "exp" / "emotion" / "hubert_base_weighted_sum_all_morais" / "fold1"
    for call in (fit, test):
        assert "recipes/configs/emotion_morais.yaml" in call and "--model.upstream.trainable all" in call
        assert "--average_best 5" in call and str(run) in call
    assert "--ckpt_path averaged" in test and "--ckpt_path averaged" not in fit


def test_iemocap_adversary_and_pooling_options_reach_fit_and_test_and_name_the_run(tmp_path):
    (_, fit), (_, test) = iemocap_calls(tmp_path, "--adversary", "0.001", "--pooling", "ecapa")
    for call in (fit, test):
        assert '--model.task.init_args.speaker_adversary {"weight": 0.001}' in call
        assert "--model.task.init_args.pooling ecapa" in call and "weighted_sum_ecapa_adv0.001/fold1" in call
        assert "recipes/configs/emotion.yaml" in call and "--average_best" not in call
