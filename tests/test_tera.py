"""TERA: the reconstruction loss falls on a tiny batch, a saved folder loads as `tera:<dir>` with every layer at 10 ms
and padding-invariant frames, bad folders fail by name, and `strata pretrain` trains, resumes and hands a frozen
upstream to a task."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.cli import main
from recipes.inference import load_model
from recipes.pretrain.objectives import requested_objective
from recipes.pretrain.tera import TeraPretrainModule
from upstream import UpstreamLoadError, build_upstream
from upstream.registry import imports_code
from upstream.tera import TeraConfig, TeraModel, TeraUpstream

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
TINY = TeraConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


def chirps(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded rising tones of different pitches: spectra with structure to reconstruct."""
    wavs = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        time = torch.arange(length) / 16000
        wavs[row, :length] = 0.1 * torch.sin(2 * torch.pi * (200.0 * (row + 1) + 300.0 * time) * time)
    return wavs, torch.tensor(lengths)


@pytest.fixture
def tera_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    return TeraModel(TINY).save(tmp_path / "tera")


def test_reconstruction_loss_falls_on_a_tiny_fixed_batch():
    torch.manual_seed(0)
    module = TeraPretrainModule(size="tiny", dropout=0.0)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    wavs, lengths = chirps([12000, 10000, 8000, 12000])
    batch = {"wavs": wavs, "wav_lengths": lengths}
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = module._step(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])  # about 0.81 -> 0.50


def test_tera_upstream_returns_every_layer_at_10_ms_and_padding_changes_no_valid_frame(tera_dir):
    upstream = build_upstream(f"tera:{tera_dir}")
    assert isinstance(upstream, TeraUpstream)
    assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (3, 32, 160)
    wavs, lengths = chirps([16000, 9000])
    batched = upstream(wavs, lengths)
    assert len(batched.hidden_states) == 3 and batched.lengths.tolist() == [98, 54]  # 1 + (S - 400) // 160
    assert all(state.shape == (2, 98, 32) for state in batched.hidden_states)
    alone = upstream(wavs[1:, :9000])
    for one, both in zip(alone.hidden_states, batched.hidden_states, strict=True):
        assert one.shape[1] == 54
        assert torch.allclose(one[0], both[1, :54], atol=1e-5)
        assert not both[1, 54:].any()  # padded frames are zero
    assert upstream(torch.zeros(1, upstream.min_samples)).lengths.tolist() == [1]
    with pytest.raises(ValueError, match="fewer than 400 samples"):
        upstream(torch.zeros(1, upstream.min_samples - 1))


def test_a_saved_tera_gives_the_trained_models_states_and_top_k_trains_only_the_top_layers(tera_dir):
    model = TeraModel.load(tera_dir, reconstruction_head=True).eval()
    upstream = build_upstream(f"tera:{tera_dir}", trainable="top:1")
    assert not hasattr(upstream.model.head, "parameters")  # the upstream leaves the head out
    wavs, lengths = chirps([12000])
    with torch.no_grad():
        expected = model.encode(*model.features(wavs, lengths))
    upstream.eval()
    states = upstream(wavs, lengths).hidden_states  # with gradients on: torch's slow path, so close, not equal
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(states, expected, strict=True))
    trained = {name.split(".")[1] + "." + name.split(".")[2] for name, p in upstream.named_parameters()
               if p.requires_grad}  # fmt: skip
    assert trained == {"layers.1"}


def test_a_missing_or_corrupt_tera_folder_is_an_error_naming_it(tera_dir, tmp_path):
    with pytest.raises(UpstreamLoadError, match=f"TERA folder {tmp_path / 'nope'} does not exist"):
        build_upstream(f"tera:{tmp_path / 'nope'}")
    (tera_dir / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UpstreamLoadError, match=f"{tera_dir / 'model.safetensors'} is not a readable safetensors"):
        build_upstream(f"tera:{tera_dir}")
    (tera_dir / "model.safetensors").unlink()
    with pytest.raises(UpstreamLoadError, match=f"TERA folder {tera_dir} has no model.safetensors"):
        build_upstream(f"tera:{tera_dir}")
    (tera_dir / "config.json").write_text('{"model_type": "hubert"}')
    with pytest.raises(UpstreamLoadError, match="model_type 'hubert', not 'strata-tera'"):
        build_upstream(f"tera:{tera_dir}")
    (tera_dir / "config.json").write_text('{"model_type": "strata-tera", "config": {"hiden_size": 8}}')
    with pytest.raises(UpstreamLoadError, match=r"bad TERA config .*'hiden_size'"):
        build_upstream(f"tera:{tera_dir}")
    small = TeraModel(TeraConfig(hidden_size=16, num_layers=2, num_heads=4, intermediate_size=64)).save(tmp_path / "s")
    (small / "config.json").write_text(json.dumps({"model_type": "strata-tera", "config": vars(TINY)}))
    with pytest.raises(UpstreamLoadError, match="does not fit its config.json: .*wrong shape"):
        build_upstream(f"tera:{small}")
    assert not imports_code(f"tera:{tera_dir}")  # a strata source: trusted in checkpoints and exports


def test_the_objective_comes_from_the_last_config_or_flag(capsys):
    assert requested_objective(["--config", str(CONFIGS / "pretrain_tiny.yaml")]) == "hubert"
    assert requested_objective(["--config", str(CONFIGS / "pretrain_tera_tiny.yaml")]) == "tera"
    assert requested_objective(["--config", str(CONFIGS / "pretrain_tera_tiny.yaml"), "--objective=hubert"]) == "hubert"
    assert requested_objective(["--objective", "tera", "--config", str(CONFIGS / "pretrain_tiny.yaml")]) == "tera"
    assert main(["pretrain", "--objective", "bert"]) == 2
    assert "unknown pre-training objective 'bert'; choose from ['hubert', 'tera']" in capsys.readouterr().err


def test_strata_pretrain_tera_writes_a_tera_upstream_resumes_and_serves_a_task(mini_corpus, tmp_path, capsys):
    run, manifest = tmp_path / "tera", str(mini_corpus / "emotion" / "valid.jsonl")
    common = ["--config", str(CONFIGS / "pretrain_tera_tiny.yaml"), "--data.train", manifest,
              "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
              "--trainer.limit_train_batches", "3", "--ckpt_path", "last"]  # fmt: skip
    assert main(["pretrain", *common, "--trainer.max_epochs", "1"]) == 0
    first = json.loads((run / "upstream" / "pretrain.json").read_text())
    assert f"use it as --upstream tera:{run / 'upstream'}" in capsys.readouterr().out
    assert main(["pretrain", *common, "--trainer.max_epochs", "2"]) == 0
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out
    second = json.loads((run / "upstream" / "pretrain.json").read_text())
    assert (first["global_step"], second["global_step"]) == (3, 6)  # the second epoch only, not two more
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert second["hyper_parameters"]["alteration"]["frequency_fraction"] == 0.2
    assert second["targets"]["train"] == manifest
    upstream = build_upstream(f"tera:{run / 'upstream'}")
    assert upstream.num_layers == 4 and upstream.hidden_size == 64
    # The frozen upstream in a task: one epoch of emotion recognition over its weighted layers.
    task_run = tmp_path / "emotion"
    fit = ["--config", str(CONFIGS / "emotion.yaml"), "--model.upstream.name", f"tera:{run / 'upstream'}",
           "--data.train", manifest, "--data.valid", manifest, "--data.num_workers", "0", "--trainer.max_epochs", "1",
           "--trainer.limit_train_batches", "2",
           "--trainer.default_root_dir", str(task_run), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert main(["fit", *fit]) == 0
    checkpoint = torch.load(task_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["upstream"]["name"] == f"tera:{run / 'upstream'}"
    # Exported, the frozen folder travels with the run and is read back as tera: (a trusted source).
    assert main(["test", *fit, "--data.test", manifest]) == 0
    assert main(["export", str(task_run), "--out", str(tmp_path / "export")]) == 0
    shutil.move(run / "upstream", tmp_path / "moved")
    model = load_model(tmp_path / "export")
    assert isinstance(model.module.upstream, TeraUpstream)
    assert model.module.upstream_config.name == f"tera:{tmp_path / 'export' / 'upstream'}"


def test_mockingjay_is_tera_with_the_time_alteration_alone(capsys):
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--config", str(CONFIGS / "pretrain_mockingjay_tiny.yaml"), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "objective: tera" in printed
    assert "frequency_fraction: 0.0" in printed and "noise_prob: 0.0" in printed
