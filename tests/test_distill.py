"""DistilHuBERT-style distillation: the target-layer rule, a student that starts as the teacher's first layers, the
loss by hand, a loss that falls, a teacher cache that stands in for the teacher, and `strata distill` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipes.audio import read_audio
from recipes.cache import FeatureCache, extract
from recipes.cli import main
from recipes.pretrain.distill import (
    DistillDataModule,
    DistillModule,
    default_target_layers,
    distillation_loss,
    pad_teacher_targets,
)
from upstream import build_upstream

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def few(mini_corpus, tmp_path):
    """A manifest of the first `count` utterances of the mini corpus's emotion test split (audio paths absolute)."""

    def write(count: int, name: str = "few") -> Path:
        folder = mini_corpus / "emotion"
        lines = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()[:count]]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({**e, "audio": str((folder / e["audio"]).resolve())}) + "\n" for e in lines))
        return path

    return write


def tones(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded sums of two tones, one pair per clip: `[B, S]` and the lengths."""
    time = torch.arange(max(lengths)) / 16000
    wavs = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        f = 150.0 * (row + 1)
        wavs[row, :length] = (0.1 * torch.sin(2 * torch.pi * f * time) + 0.05 * torch.sin(2 * torch.pi * 3 * f * time))[
            :length
        ]
    return wavs, torch.tensor(lengths)


def test_target_layers_are_a_third_two_thirds_and_all_of_the_teachers_depth():
    assert default_target_layers(12) == [4, 8, 12]  # DistilHuBERT's choice for HuBERT Base
    assert default_target_layers(4) == [1, 3, 4]
    assert default_target_layers(24) == [8, 16, 24]
    assert default_target_layers(2) == [1, 2] and default_target_layers(1) == [1]


def test_the_student_starts_as_the_teachers_cnn_and_first_layer(tiny_dirs):
    module = DistillModule(f"hf:{tiny_dirs['hubert']}", student_layers=2).eval()
    wavs, lengths = tones([16000, 11000])
    with torch.no_grad():
        student = module.student(wavs, lengths).hidden_states
        teacher = module.teacher(wavs, lengths).hidden_states
    assert len(student) == 3 and len(teacher) == 5
    for index in (0, 1):  # the CNN's projected output and the first layer's
        assert torch.allclose(student[index], teacher[index], atol=1e-5)
    # The tiny model is pre-LN: the student's last state is its layer 2 through the teacher's final norm.
    assert not torch.allclose(student[2], teacher[2], atol=1e-3)
    assert module.target_layers == [1, 3, 4] and len(module.heads) == 3
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_the_loss_is_l1_minus_log_sigmoid_of_the_cosine_over_valid_frames():
    # One head, two utterances of 2 and 1 valid frames of 2 dims; the padding frame holds garbage.
    predictions = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]], [[[3.0, 4.0], [100.0, -100.0]]]])
    targets = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]], [[[3.0, 4.0], [0.0, 0.0]]]])
    loss = distillation_loss(predictions, targets, torch.tensor([2, 1]), cosine_weight=0.5)
    l1 = (0.5 + 0.5 + 0.0) / 3  # per frame: mean |difference| over the two dims
    cosines = torch.tensor([1 / np.sqrt(2), 1.0, 1.0])
    expected = l1 - 0.5 * float(F.logsigmoid(cosines).mean())
    assert float(loss.total) == pytest.approx(expected, abs=1e-6)
    assert float(loss.l1[0]) == pytest.approx(l1) and float(loss.cosine[0]) == pytest.approx(float(cosines.mean()))


def test_the_loss_falls_as_the_heads_learn_the_teacher_layers():
    torch.manual_seed(0)
    module = DistillModule("tiny_hubert", student_layers=1, train_cnn=False, lr=3e-3)
    wavs, lengths = tones([6000, 5000, 4000, 6000])
    batch = {"wavs": wavs, "wav_lengths": lengths, "ids": ["a", "b", "c", "d"]}
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    losses, cosines = [], []
    for _ in range(20):
        loss = module.losses(batch)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(float(loss.total.detach()))
        cosines.append(loss.cosine.detach())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert bool((cosines[-1] > 0.8).all()) and bool((cosines[-1] > cosines[0]).all())


def test_a_teacher_cache_stands_in_for_the_teacher_with_the_same_loss(tiny_dirs, few, tmp_path):
    teacher = f"hf:{tiny_dirs['hubert']}"
    manifest = few(3)
    extract(teacher, [manifest], tmp_path / "cache", layers="1,3,4", dtype="float32", progress=False)
    module = DistillModule(teacher, student_layers=2).eval()  # eval: no dropout, the same student output twice
    data = DistillDataModule(train=str(manifest), teacher_cache=str(tmp_path / "cache"), teacher=module.teacher_spec())
    data.setup("fit")
    items = [data.datasets["train"][index] for index in range(3)]
    batch = data.collate()(items)
    assert batch["targets"]["hidden"].shape[:2] == (3, 3)
    with torch.no_grad():
        live = module.losses({key: value for key, value in batch.items() if key != "targets"})

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran although its targets were cached")

    module.teacher.forward = refuse
    with torch.no_grad():
        cached = module.losses(batch)
    assert float(cached.total) == pytest.approx(float(live.total), abs=1e-4)


def test_long_clips_are_cropped_on_the_teachers_frames_with_their_cached_targets(tiny_dirs, few, tmp_path):
    teacher = f"hf:{tiny_dirs['hubert']}"
    manifest = few(2)
    extract(teacher, [manifest], tmp_path / "cache", layers="1,3,4", dtype="float32", progress=False)
    module = DistillModule(teacher, student_layers=2)
    data = DistillDataModule(train=str(manifest), teacher_cache=str(tmp_path / "cache"), max_seconds=1.0,
                             teacher=module.teacher_spec())  # fmt: skip
    data.setup("fit")
    dataset, cache = data.datasets["train"], FeatureCache(tmp_path / "cache")
    for index, entry in enumerate(dataset.manifest.entries):
        whole = read_audio(entry["audio"], 16000)
        cached = cache.hidden(entry["id"])
        item = dataset[index]
        assert item["wav"].numel() == 16000 < whole.numel()  # the mini clips are longer than a second
        start = next(s for s in range(whole.numel() - 16000 + 1) if torch.equal(whole[s : s + 16000], item["wav"]))
        assert start % 320 == 0  # on the teacher's 20 ms frames
        assert torch.equal(item["target"], cached[:, start // 320 : start // 320 + 50])  # the crop's own frames


def test_a_cache_without_the_target_layers_names_them_and_the_command(tiny_dirs, few, tmp_path):
    teacher = f"hf:{tiny_dirs['hubert']}"
    manifest = few(1)
    extract(teacher, [manifest], tmp_path / "cache", layers="0,4", progress=False)
    module = DistillModule(teacher)
    data = DistillDataModule(train=str(manifest), teacher_cache=str(tmp_path / "cache"), teacher=module.teacher_spec())
    with pytest.raises(ValueError, match=r"not the target layers \[1, 3\].*strata extract .*--layers 1,3,4"):
        data.setup("fit")


def test_a_checkpoint_leaves_the_teacher_out_and_refuses_another_teacher_on_load(tiny_dirs):
    module = DistillModule(f"hf:{tiny_dirs['hubert']}", student_layers=1)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(key.startswith("teacher.") for key in checkpoint["state_dict"])
    assert any(key.startswith("student.") for key in checkpoint["state_dict"])
    same = DistillModule(f"hf:{tiny_dirs['hubert']}", student_layers=1)
    same.on_load_checkpoint(checkpoint)
    same.load_state_dict(checkpoint["state_dict"])  # strict: the teacher's weights were put back
    other = DistillModule("tiny_hubert", student_layers=1)  # the same sizes, other weights
    with pytest.raises(ValueError, match="distilled the teacher .* now loads other weights"):
        other.on_load_checkpoint(checkpoint)


def test_padded_teacher_targets_keep_each_utterances_frames():
    batch = pad_teacher_targets([torch.ones(3, 5, 2), torch.full((3, 2, 2), 2.0)])
    assert batch["hidden"].shape == (2, 3, 5, 2) and batch["lengths"].tolist() == [5, 2]
    assert float(batch["hidden"][1, :, 2:].abs().sum()) == 0.0


def test_a_teacher_that_is_not_a_transformers_encoder_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"cannot distill 'fbank'.*transformers encoder of the families hubert"):
        DistillModule("fbank")
    run = tmp_path / "run"
    assert main(["distill", "--model.teacher", "fbank", "--data.train", "x.jsonl",
                 "--trainer.default_root_dir", str(run)]) == 2  # fmt: skip
    assert "strata distill: error:" in capsys.readouterr().err and not (run / "checkpoints").exists()


def test_strata_distill_writes_a_loadable_student_and_resumes_from_last(tiny_dirs, few, tmp_path):
    run = tmp_path / "distill"
    args = ["distill", "--config", str(ROOT / "recipes" / "configs" / "distill_tiny.yaml"),
            "--model.teacher", f"hf:{tiny_dirs['hubert']}", "--data.train", str(few(6)),
            "--data.valid", str(few(2, "valid")), "--trainer.default_root_dir", str(run),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "1"]  # fmt: skip
    assert main([*args, "--trainer.max_epochs", "1"]) == 0
    first = json.loads((run / "upstream" / "distill.json").read_text())
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(key.startswith("teacher.") for key in checkpoint["state_dict"])  # rebuilt from its name
    assert main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    second = json.loads((run / "upstream" / "distill.json").read_text())
    assert second["global_step"] == 2 * first["global_step"] > 0
    assert second["target_layers"] == [1, 3, 4] and second["teacher"] == f"hf:{tiny_dirs['hubert']}"
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == second["global_step"]
    student = build_upstream(f"hf:{run / 'upstream'}")
    wavs, lengths = tones([16000, 9000])
    with torch.no_grad():
        out = student(wavs, lengths)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape[-1] == 64
    assert (run / "config.yaml").is_file()
