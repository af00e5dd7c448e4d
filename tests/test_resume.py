"""A fit killed inside an epoch resumes where it stopped: the sampler skips the batches already trained on, the random
generators go on as they were, and the result equals that of a fit that was never killed."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from recipes.cli import main
from recipes.data import BucketBatchSampler
from recipes.results import Results

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, EVERY, KILL_AT = 3, 5, 18  # 12 batches an epoch: the kill is inside the second epoch, 3 steps after a save


def test_a_resumed_sampler_skips_the_batches_already_trained_on():
    durations = [1.0 + 0.01 * i for i in range(40)]
    fresh = BucketBatchSampler(durations, 4.0, seed=3)
    fresh.set_epoch(2)
    order = list(fresh)
    resumed = BucketBatchSampler(durations, 4.0, seed=3)
    resumed.resume(epoch=2, processed=4)
    resumed.set_epoch(2)  # as Lightning does at the epoch's start
    assert list(resumed) == order[4:]
    assert list(resumed) == order  # only the resumed iteration skips
    finished = BucketBatchSampler(durations, 4.0, seed=3)
    finished.resume(epoch=2, processed=len(finished))  # saved at the epoch's end: the next epoch, whole
    assert finished.epoch == 3 and len(list(finished)) == len(finished)


def fit_args(mini_corpus, run: Path) -> list[str]:
    emotion = mini_corpus / "emotion"
    return ["fit", "--config", str(ROOT / "egs/mini/conf/emotion.yaml"), "--data.train", str(emotion / "train.jsonl"),
            "--data.valid", str(emotion / "valid.jsonl"), "--data.max_batch_seconds", "60",
            "--trainer.max_epochs", str(EPOCHS), "--trainer.default_root_dir", str(run),
            "--trainer.enable_progress_bar", "false", "--checkpoint_every_n_steps", str(EVERY),
            "--model.task.init_args.hidden_sizes", "[64]", "--model.task.init_args.dropout", "0.3"]  # fmt: skip


def test_a_fit_killed_mid_epoch_resumes_to_the_same_results(mini_corpus, tmp_path):
    emotion = mini_corpus / "emotion"
    test_args = ["--data.test", str(emotion / "test.jsonl"), "--ckpt_path", "last"]
    whole = tmp_path / "whole"
    assert main(fit_args(mini_corpus, whole)) == 0
    assert main(["test", "--config", str(whole / "config.yaml"), *test_args]) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    kill = f"{{'class_path': 'recording.KillAtStep', 'init_args': {{'step': {KILL_AT}}}}}"
    command = [sys.executable, "-m", "recipes.cli", *fit_args(mini_corpus, killed), f"--trainer.callbacks+={kill}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # SIGKILL
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == KILL_AT // EVERY * EVERY and saved["epoch"] == 1  # mid second epoch
    assert main([*fit_args(mini_corpus, killed), "--ckpt_path", "last"]) == 0
    assert main(["test", "--config", str(killed / "config.yaml"), *test_args]) == 0

    ends = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (whole, killed)]
    assert ends[0]["global_step"] == ends[1]["global_step"]
    for name, value in ends[0]["state_dict"].items():
        assert torch.equal(value, ends[1]["state_dict"][name]), name
    results = [Results.read(run / "results.json") for run in (whole, killed)]
    assert results[0].metrics == results[1].metrics and results[0].details == results[1].details
