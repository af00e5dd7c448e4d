"""Checkpoint averaging (recipes.averaging): the mean of the K best checkpoints, and `--average_best K` /
`--ckpt_path averaged` end to end on the mini corpus."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipes.averaging import (
    AVERAGED_KEY,
    TOP_CALLBACK,
    average_checkpoints,
    averaged_checkpoint,
    top_checkpoints,
)
from recipes.cli import main
from recipes.inference import load_run_model, run_checkpoint
from recipes.module import FROZEN_UPSTREAM_KEY

CONFIG = str(Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "emotion.yaml")


def fake_checkpoint(path: Path, seed: int, score: float | None = None, **changes) -> Path:
    """A Lightning-like checkpoint of a head with a BatchNorm, a frozen upstream left out (as strata saves it)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        "head.weight": torch.randn(4, 3, generator=generator),
        "head.bias": torch.randn(4, generator=generator),
        "norm.running_mean": torch.randn(3, generator=generator),
        "norm.running_var": torch.rand(3, generator=generator) + 0.5,
        "norm.num_batches_tracked": torch.tensor(100 + seed),
    }
    state.update(changes)
    checkpoint = {
        "state_dict": {key: value for key, value in state.items() if value is not None},
        "hyper_parameters": {"lr": 0.001 * seed},
        FROZEN_UPSTREAM_KEY: {"name": "fbank", "fingerprint": f"f{seed}"},
        "epoch": seed,
    }
    if score is not None:
        checkpoint["callbacks"] = {
            "ModelCheckpoint{'monitor': 'valid/UA'}": {"current_score": torch.tensor(0.0)},
            f"{TOP_CALLBACK}{{'monitor': 'valid/UA'}}": {"current_score": torch.tensor(score), "mode": "max"},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_averaged_weights_are_exactly_the_mean_of_the_checkpoints(tmp_path):
    paths = [fake_checkpoint(tmp_path / f"{seed}.ckpt", seed) for seed in (3, 1, 2)]
    out = average_checkpoints(paths, tmp_path / "averaged.ckpt")
    averaged = load(out)["state_dict"]
    states = [load(path)["state_dict"] for path in paths]
    for key in ("head.weight", "head.bias", "norm.running_mean", "norm.running_var"):
        expected = torch.stack([state[key].double() for state in states]).mean(dim=0).float()
        assert averaged[key].dtype == torch.float32
        assert torch.equal(averaged[key], expected), key
    assert not torch.equal(averaged["head.weight"], states[0]["head.weight"])


def test_integer_buffers_and_the_rest_of_the_dict_are_the_best_checkpoints(tmp_path):
    paths = [fake_checkpoint(tmp_path / f"{seed}.ckpt", seed) for seed in (3, 1, 2)]
    averaged = load(average_checkpoints(paths, tmp_path / "averaged.ckpt"))
    assert averaged["state_dict"]["norm.num_batches_tracked"].item() == 103  # the first path is the best
    assert averaged["hyper_parameters"] == {"lr": 0.003}
    assert averaged[FROZEN_UPSTREAM_KEY] == {"name": "fbank", "fingerprint": "f3"}
    assert averaged["epoch"] == 3
    assert averaged[AVERAGED_KEY] == {"files": ["3.ckpt", "1.ckpt", "2.ckpt"], "best": "3.ckpt"}
    assert not list(tmp_path.glob(".*partial"))  # written under a temporary name, then renamed


def test_checkpoints_with_other_keys_are_a_clear_error(tmp_path):
    best = fake_checkpoint(tmp_path / "best.ckpt", 1)
    other = fake_checkpoint(tmp_path / "other.ckpt", 2, **{"head.bias": None, "head.extra": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"cannot average .*other.ckpt with .*best.ckpt: their state_dict keys differ "
                                         r"\(missing \['head.bias'\], extra \['head.extra'\]\)"):  # fmt: skip
        average_checkpoints([best, other], tmp_path / "averaged.ckpt")
    assert not (tmp_path / "averaged.ckpt").exists()


def test_checkpoints_with_other_shapes_are_a_clear_error(tmp_path):
    best = fake_checkpoint(tmp_path / "best.ckpt", 1)
    other = fake_checkpoint(tmp_path / "other.ckpt", 2, **{"head.weight": torch.zeros(5, 3)})
    with pytest.raises(ValueError, match=r"head.weight is float32 \[5, 3\] there, float32 \[4, 3\] in the best"):
        average_checkpoints([best, other], tmp_path / "averaged.ckpt")


def test_top_checkpoints_are_ranked_best_first_by_their_recorded_score(tmp_path):
    top = tmp_path / "checkpoints" / "top"
    for epoch, score in [(0, 0.5), (1, 0.7), (2, 0.6), (3, 0.7)]:
        fake_checkpoint(top / f"epoch{epoch:03d}.ckpt", epoch, score=score)
    ranked = [path.name for path in top_checkpoints(tmp_path / "checkpoints")]
    assert ranked == ["epoch001.ckpt", "epoch003.ckpt", "epoch002.ckpt", "epoch000.ckpt"]  # a tie: the earlier


def test_averaged_checkpoint_is_computed_once_and_again_when_the_top_files_change(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for epoch, score in [(0, 0.5), (1, 0.7)]:
        fake_checkpoint(checkpoints / "top" / f"epoch{epoch:03d}.ckpt", epoch, score=score)
    out = averaged_checkpoint(checkpoints)
    assert out == checkpoints / "averaged.ckpt"
    assert load(out)[AVERAGED_KEY]["files"] == ["epoch001.ckpt", "epoch000.ckpt"]
    written = out.stat().st_mtime_ns
    os.utime(out, ns=(written + 10**9, written + 10**9))  # clearly newer than the top files
    averaged_checkpoint(checkpoints)
    assert out.stat().st_mtime_ns == written + 10**9  # up to date: not rewritten
    fake_checkpoint(checkpoints / "top" / "epoch002.ckpt", 2, score=0.9)
    os.utime(checkpoints / "top" / "epoch002.ckpt", ns=(written + 2 * 10**9, written + 2 * 10**9))
    assert load(averaged_checkpoint(checkpoints))[AVERAGED_KEY]["files"] == [
        "epoch002.ckpt", "epoch001.ckpt", "epoch000.ckpt"
    ]  # fmt: skip


def test_averaged_without_top_checkpoints_says_to_fit_with_average_best(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoints to average in .*top: run `strata fit` with "
                                                r"`--average_best K`"):  # fmt: skip
        averaged_checkpoint(tmp_path / "checkpoints")


def test_top_checkpoints_state_key_is_the_one_averaging_reads():
    from recipes.lightning_cli import TopCheckpoints

    callback = TopCheckpoints(monitor="valid/UA", mode="max", save_top_k=2)
    assert callback.state_key.startswith(TOP_CALLBACK)
    assert callback.state_dict()["mode"] == "max"


def test_fit_keeps_the_best_two_and_test_scores_their_average(mini_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    emotion = mini_corpus / "emotion"
    common = ["--config", CONFIG, "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar",
              "false", "--trainer.max_epochs", "3"]  # fmt: skip
    test = ["test", *common, "--data.test", str(emotion / "test.jsonl"), "--ckpt_path", "averaged"]
    assert main(test) == 2  # nothing fitted yet
    assert "run `strata fit` with `--average_best K`" in capsys.readouterr().err

    fit = ["--data.train", str(emotion / "train.jsonl"), "--data.valid", str(emotion / "valid.jsonl")]
    assert main(["fit", *common, *fit, "--average_best", "2"]) == 0
    top = sorted((run_dir / "checkpoints" / "top").glob("*.ckpt"))
    assert [path.name for path in top] == sorted(path.name for path in top) and len(top) == 2
    assert all(path.name.startswith("epoch") for path in top)
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()

    assert main(test) == 0
    averaged = load(run_dir / "checkpoints" / "averaged.ckpt")
    assert (run_dir / "results.json").is_file()
    assert "averaged.ckpt" in (run_dir / "config_test.yaml").read_text()
    best = load(run_dir / "checkpoints" / "best.ckpt")
    assert averaged[AVERAGED_KEY]["best"] == Path(averaged[AVERAGED_KEY]["files"][0]).name
    assert averaged["epoch"] == best["epoch"]  # the best of the top two is the best checkpoint
    states = [load(path)["state_dict"] for path in top]
    for key, value in averaged["state_dict"].items():
        if value.is_floating_point():
            assert torch.equal(value, torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)), key
    assert not any(key.startswith("upstream.") for key in averaged["state_dict"])  # fbank is frozen: left out
    assert averaged[FROZEN_UPSTREAM_KEY]["name"] == "fbank"

    # `strata export RUN --ckpt averaged` takes the same file (up to date: not recomputed) and its weights.
    written = (run_dir / "checkpoints" / "averaged.ckpt").stat().st_mtime_ns
    assert run_checkpoint(run_dir, "averaged") == run_dir / "checkpoints" / "averaged.ckpt"
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export"), "--ckpt", "averaged"]) == 0
    assert (run_dir / "checkpoints" / "averaged.ckpt").stat().st_mtime_ns == written
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    head = [key for key in averaged["state_dict"] if key.startswith("head.") and key in exported]
    assert head and all(torch.equal(exported[key], averaged["state_dict"][key]) for key in head)
    assert load_run_model(top[0]).run_dir == run_dir  # a top checkpoint given as a file belongs to its run


def test_a_fresh_fit_removes_an_earlier_fits_top_checkpoints_and_a_resumed_one_keeps_its_own(tmp_path):
    from types import SimpleNamespace

    from recipes.lightning_cli import TopCheckpoints

    top = tmp_path / "top"
    for epoch in range(3):
        fake_checkpoint(top / f"epoch{epoch:03d}.ckpt", epoch, score=0.1 * epoch)
    callback = TopCheckpoints(dirpath=top, monitor="valid/UA", mode="max", save_top_k=2)
    callback.best_k_models = {str(top / "epoch001.ckpt"): torch.tensor(0.1)}  # as restored from last.ckpt
    callback.on_train_start(SimpleNamespace(is_global_zero=True), None)
    assert [path.name for path in top.glob("*.ckpt")] == ["epoch001.ckpt"]
    callback.best_k_models = {}  # a fresh fit
    callback.on_train_start(SimpleNamespace(is_global_zero=True), None)
    assert not list(top.glob("*.ckpt"))


def test_a_resumed_fit_keeps_its_top_checkpoints_and_a_fresh_one_replaces_them(mini_corpus, tmp_path):
    run_dir = tmp_path / "run"
    emotion = mini_corpus / "emotion"
    fit = ["fit", "--config", CONFIG, "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar",
           "false", "--data.train", str(emotion / "train.jsonl"), "--data.valid", str(emotion / "valid.jsonl"),
           "--average_best", "3"]  # fmt: skip
    top = run_dir / "checkpoints" / "top"
    assert main([*fit, "--trainer.max_epochs", "2"]) == 0
    assert sorted(path.name for path in top.glob("*.ckpt")) == ["epoch000.ckpt", "epoch001.ckpt"]
    assert main([*fit, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    assert sorted(path.name for path in top.glob("*.ckpt")) == ["epoch000.ckpt", "epoch001.ckpt", "epoch002.ckpt"]
    first = (top / "epoch000.ckpt").stat().st_mtime_ns
    assert main([*fit, "--trainer.max_epochs", "1"]) == 0
    assert sorted(path.name for path in top.glob("*.ckpt")) == ["epoch000.ckpt"]
    assert (top / "epoch000.ckpt").stat().st_mtime_ns != first  # this fit's own
