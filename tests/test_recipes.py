"""`strata fit / test / report` on the mini corpus: run directory, results.json, resume, DDP, errors."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from downstream.speaker import EcapaConfig
from recipes.cli import main
from recipes.module import FROZEN_UPSTREAM_KEY, InterfaceConfig, SSLTaskModule, UpstreamConfig
from recipes.runs import run_dir
from recipes.tasks import TASKS, EmotionTask, task_class

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "egs" / "mini" / "conf" / "emotion.yaml")


def fit_args(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", CONFIG, "--trainer.default_root_dir", str(run_dir),
        "--data.train", str(corpus / "emotion" / "train.jsonl"),
        "--data.valid", str(corpus / "emotion" / "valid.jsonl"),
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def test_a_config_names_a_task_by_class_path_and_an_unknown_one_lists_them():
    assert task_class("recipes.tasks.EmotionTask") is EmotionTask
    assert task_class("recipes.tasks.classification.EmotionTask") is EmotionTask
    with pytest.raises(ValueError, match=r"unknown task class 'recipes.tasks.Emotion'; choose from .*EmotionTask"):
        task_class("recipes.tasks.Emotion")
    with pytest.raises(ValueError, match="is not a recipes.tasks.Task"):
        task_class("recipes.module.SSLTaskModule")
    assert set(TASKS) == {"emotion", "speaker_id", "speaker_verification", "asr", "asd"}


def test_optimizer_gives_a_trainable_upstream_its_own_learning_rate():
    module = SSLTaskModule(
        EmotionTask(), UpstreamConfig("tiny_hubert", trainable="top:1"), InterfaceConfig("weighted_sum"),
        lr=1e-3, upstream_lr=1e-5,
    )  # fmt: skip
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    upstream_ids = {id(p) for p in groups[1]["params"]}
    assert upstream_ids == {id(p) for p in module.upstream.parameters() if p.requires_grad}
    assert all(id(p) not in upstream_ids for p in groups[0]["params"])
    frozen = SSLTaskModule(EmotionTask(), UpstreamConfig("tiny_hubert"))
    assert len(frozen.configure_optimizers()["optimizer"].param_groups) == 1


def test_hyperparameters_stay_plain_so_checkpoints_load_weights_only():
    module = SSLTaskModule(EmotionTask(classes=["x", "y"]), UpstreamConfig("fbank"), InterfaceConfig("last"))
    assert module.hparams["task"] == {
        "class_path": "recipes.tasks.EmotionTask",
        "init_args": {"classes": ["x", "y"], "projection_size": 256, "pooling": "mean", "hidden_sizes": [],
                      "dropout": 0.0, "ecapa": asdict(EcapaConfig()), "speaker_adversary": None},
    }  # fmt: skip
    assert module.hparams["upstream"] == {"name": "fbank", "trainable": "frozen", "train_cnn": False}


def test_interface_config_passes_the_new_interfaces_options():
    assert InterfaceConfig(name="grouped_weighted_sum", groups=3).options == {"groups": 3}
    assert InterfaceConfig("layer_attention", attention_size=64, attention_layers=2).options == {
        "attention_size": 64,
        "attention_layers": 2,
    }
    with pytest.raises(ValueError, match=r"\['groups'\] for interface 'layer_attention'; valid options"):
        SSLTaskModule(EmotionTask(), UpstreamConfig("fbank"), InterfaceConfig("layer_attention", groups=2))


@pytest.mark.parametrize(
    "interface,width",
    [
        (InterfaceConfig("layer_attention"), 80),
        (InterfaceConfig("concat_projection"), 80),
        (InterfaceConfig("grouped_weighted_sum", groups=1), 80),  # fbank is one hidden state: one group
    ],
)
def test_the_new_interfaces_build_a_module_on_fbank(interface, width):
    module = SSLTaskModule(EmotionTask(classes=["a", "b"]), UpstreamConfig("fbank"), interface)
    assert module.interface.output_size == width
    assert module(torch.randn(2, 8000), torch.tensor([8000, 5000])).shape == (2, 2)
    assert module.hparams["interface"]["name"] == interface.name


def test_grouped_weighted_sum_on_fbank_says_to_set_groups():
    with pytest.raises(ValueError, match=r"groups must be between 1 and the number of hidden states \(1\); got 2"):
        SSLTaskModule(EmotionTask(), UpstreamConfig("fbank"), InterfaceConfig("grouped_weighted_sum"))


@pytest.mark.parametrize("name", ["grouped_weighted_sum", "concat_projection", "layer_attention"])
def test_the_new_interfaces_build_a_module_on_tiny_hubert(name):
    module = SSLTaskModule(EmotionTask(classes=["a", "b"]), UpstreamConfig("tiny_hubert"), InterfaceConfig(name))
    hidden = module.upstream.hidden_size
    assert module.interface.output_size == (2 * hidden if name == "grouped_weighted_sum" else hidden)
    logits = module(torch.randn(2, 8000), torch.tensor([8000, 5000]))
    logits.sum().backward()
    assert all(p.grad is not None for p in module.interface.parameters())


def test_fit_then_test_writes_checkpoints_logs_config_and_results(mini_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "2")) == 0
    for name in ["checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml"]:
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("logs/version_0/metrics.csv"))
    assert list(run_dir.glob("tensorboard/version_0/events.out.tfevents.*"))
    test = ["test", "--config", CONFIG, "--trainer.default_root_dir", str(run_dir),
            "--data.test", str(mini_corpus / "emotion" / "test.jsonl"),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert main(test) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"UA", "WA", "task", "upstream", "interface", "seed", "num_utterances"}
    assert results["task"] == "emotion" and results["upstream"] == "fbank" and results["seed"] == 0
    expected = sum(1 for _ in open(mini_corpus / "emotion" / "test.jsonl"))
    assert results["num_utterances"] == expected
    assert 0.0 <= results["UA"] <= 1.0 and 0.0 <= results["WA"] <= 1.0
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "## emotion" in table and f"{100 * results['UA']:.2f}" in table and "fbank" in table


def test_fit_resumes_from_last_and_continues_the_epoch_count(mini_corpus, tmp_path):
    run_dir = tmp_path / "run"
    assert main(fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "1")) == 0
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0
    assert main(fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "3", "--ckpt_path", "last")) == 0
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2
    # The resumed run logged epochs 1 and 2 only: it continued rather than starting over.
    with open(run_dir / "logs" / "version_1" / "metrics.csv") as handle:
        epochs = {int(row["epoch"]) for row in csv.DictReader(handle) if row.get("epoch")}
    assert epochs == {1, 2}


def test_test_without_a_checkpoint_is_a_one_line_error(mini_corpus, tmp_path, capsys):
    args = ["test", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path / "none"),
            "--data.test", str(mini_corpus / "emotion" / "test.jsonl")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("strata test: error: no best checkpoint at") and "\n" not in err


def test_the_default_run_dir_is_named_by_recipes_runs_with_the_trainable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["test", "--config", CONFIG, "--model.upstream.trainable", "top:1", "--data.test", "test.jsonl"]
    assert main(args) == 2  # no checkpoint yet: the error names where the run would be
    expected = run_dir("emotion", "fbank", "weighted_sum", "top:1") / "checkpoints" / "best.ckpt"
    assert str(expected) == "exp/emotion/fbank_weighted_sum_top1/checkpoints/best.ckpt"
    assert f"no best checkpoint at {expected}:" in capsys.readouterr().err


def test_the_module_titles_its_plots_with_the_run_folder_name():
    module = SSLTaskModule(EmotionTask(classes=["a", "b"]), UpstreamConfig("tiny_hubert", trainable="top:1"))
    assert module.run_name == run_dir("emotion", "tiny_hubert", "weighted_sum", "top:1").name
    assert module.run_name == "tiny_hubert_weighted_sum_top1"


def test_fit_without_a_valid_manifest_says_which_option_is_missing(mini_corpus, tmp_path, capsys):
    args = fit_args(mini_corpus, tmp_path / "run")
    del args[args.index("--data.valid") : args.index("--data.valid") + 2]
    assert main(args) == 2
    assert "strata fit: error: `strata fit` needs a valid manifest: pass --data.valid PATH" in capsys.readouterr().err


def test_unknown_emotion_label_fails_at_load_naming_the_line(mini_corpus, tmp_path, capsys):
    entries = [json.loads(line) for line in (mini_corpus / "emotion" / "train.jsonl").read_text().splitlines()[:3]]
    for entry in entries:
        entry["audio"] = str(mini_corpus / "emotion" / entry["audio"])
    entries[2]["emotion"] = "fru"
    bad = tmp_path / "train.jsonl"
    bad.write_text("".join(json.dumps(e) + "\n" for e in entries))
    args = fit_args(mini_corpus, tmp_path / "run")
    args[args.index("--data.train") + 1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"emotion label 'fru' in {bad} line 3 is not one of neu, hap, ang, sad" in err


@pytest.mark.parametrize("cached", [False, True], ids=["audio", "feature-cache"])
def test_ddp_on_two_cpu_processes_sees_each_training_sample_once(mini_corpus, tmp_path, cached):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "SEEN_DIR": str(tmp_path)}
    features = []
    if cached:  # the mini emotion config's upstream (fbank), extracted once and read by both processes
        from recipes.cache import extract

        manifests = [mini_corpus / "emotion" / f"{split}.jsonl" for split in ("train", "valid")]
        extract("fbank", manifests, tmp_path / "cache", progress=False)
        features = ["--data.features", str(tmp_path / "cache")]
    command = [sys.executable, "-m", "recipes.cli",
               *fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "1", *features)]  # fmt: skip
    command += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                "--trainer.callbacks+=recording.RecordTrainingIds", "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen_rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    train_ids = [json.loads(line)["id"] for line in open(mini_corpus / "emotion" / "train.jsonl")]
    assert sorted(seen[0] + seen[1]) == sorted(train_ids)


def test_only_a_trainable_upstream_keeps_its_weights_in_a_checkpoint():
    for trainable, kept in [("frozen", False), ("top:1", True)]:
        module = SSLTaskModule(EmotionTask(classes=["a", "b"]), UpstreamConfig("tiny_hubert", trainable=trainable))
        checkpoint = {"state_dict": module.state_dict()}
        module.on_save_checkpoint(checkpoint)
        upstream_keys = [key for key in checkpoint["state_dict"] if key.startswith("upstream.")]
        assert bool(upstream_keys) is kept, trainable
        assert any(key.startswith("head.") for key in checkpoint["state_dict"])
        assert (FROZEN_UPSTREAM_KEY in checkpoint) is not kept


def test_a_frozen_upstream_is_rebuilt_on_load_and_a_different_one_refused(mini_corpus, tmp_path):
    run_dir = tmp_path / "run"
    upstream = ["--model.upstream.name", "tiny_hubert"]
    assert main(fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "1", *upstream)) == 0
    path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert not [key for key in checkpoint["state_dict"] if key.startswith("upstream.")]
    assert checkpoint[FROZEN_UPSTREAM_KEY]["name"] == "tiny_hubert"
    module = SSLTaskModule.from_checkpoint(path)
    fresh = SSLTaskModule(EmotionTask(classes=module.task.classes), UpstreamConfig("tiny_hubert"))
    pairs = zip(module.upstream.state_dict().items(), fresh.upstream.state_dict().values(), strict=True)
    for (name, value), reference in pairs:
        assert torch.equal(value, reference), name
    head = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith("head.")}
    assert head and all(torch.equal(module.state_dict()[key], value) for key, value in head.items())
    # Resuming and testing go through Lightning's own loading path.
    assert main(fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "2", "--ckpt_path", "last", *upstream)) == 0
    assert torch.load(path, weights_only=True)["epoch"] > checkpoint["epoch"]
    checkpoint[FROZEN_UPSTREAM_KEY]["fingerprint"] = "0" * 16
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="trained on the frozen upstream 'tiny_hubert' .* does not store"):
        SSLTaskModule.from_checkpoint(tmp_path / "other.ckpt")


def test_the_same_config_and_seed_give_the_same_results(mini_corpus, tmp_path):
    results = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        assert main(fit_args(mini_corpus, run_dir, "--trainer.max_epochs", "2")) == 0
        test = ["test", "--config", CONFIG, "--trainer.default_root_dir", str(run_dir),
                "--data.test", str(mini_corpus / "emotion" / "test.jsonl"),
                "--trainer.enable_progress_bar", "false"]  # fmt: skip
        assert main(test) == 0
        results.append(json.loads((run_dir / "results.json").read_text()))
    assert {"UA", "WA", "seed"} <= set(results[0]) and results[0] == results[1]
