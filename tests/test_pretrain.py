"""HuBERT-style pre-training: span masks as configured, k-means targets stable under reloading, the masked-prediction
loss falls on a tiny batch, and the saved directory loads through `hf:<dir>` with the trained model's outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.cli import main
from recipes.pretrain.masking import span_mask
from recipes.pretrain.module import EncoderSize, HubertPretrainModule
from recipes.pretrain.targets import Codebook, mfcc_frames
from upstream import build_upstream

ROOT = Path(__file__).resolve().parents[1]


def test_span_masks_start_mask_prob_over_length_of_the_frames_and_span_mask_length():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([500] * 200)
    mask = span_mask(lengths, 520, mask_prob=0.5, mask_length=10, generator=generator)
    assert not mask[:, 500:].any()  # never the padding
    starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]  # a masked frame after an unmasked one
    runs = [len(r) for row in mask.numpy() for r in "".join("1" if m else "0" for m in row).split("0") if r]
    assert min(runs) >= 10  # every span is at least mask_length long (overlapping spans merge)
    # The expected number of spans is 0.5 * 500 / 10 = 25; overlaps merge some, so count starts of runs <= 25.
    assert 15 < float(starts.sum(1).float().mean()) <= 25
    # Masked fraction: 25 spans of 10 frames over 491 start positions, overlaps included: 1 - (1 - 10/491)^25 ~ 0.40.
    assert float(mask[:, :500].float().mean()) == pytest.approx(1 - (1 - 10 / 491) ** 25, abs=0.03)
    short = span_mask(torch.tensor([5, 12]), 12, 0.8, 10, generator)
    assert not short[0].any() and short[1].sum() == 10  # too short for a span; one span at least otherwise
    with pytest.raises(ValueError, match="mask_prob"):
        span_mask(lengths, 500, 1.5, 10)


def test_codebook_targets_are_the_same_after_saving_and_reloading(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.concatenate([rng.normal(c, 0.1, size=(300, 39)) for c in (-2.0, 0.0, 2.0)])
    codebook = Codebook.fit(frames, 3, "mfcc", seed=0)
    ids = codebook.assign(frames)
    reloaded = Codebook.load(codebook.save(tmp_path / "codebook.npz"))
    assert np.array_equal(reloaded.assign(frames), ids) and reloaded.features == "mfcc"
    assert len(set(ids[:300])) == len(set(ids[300:600])) == 1 and len(set(ids)) == 3


def test_mfcc_frames_match_the_models_frame_count():
    module = HubertPretrainModule(size="tiny", num_clusters=8)
    for samples in (400, 16000, 23457):
        frames = int(module.frame_lengths(torch.tensor([samples]))[0])
        assert mfcc_frames(torch.randn(samples) * 0.1, 16000, frames).shape == (frames, 39)


def test_masked_prediction_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    module = HubertPretrainModule(size="tiny", num_clusters=8, mask_prob=0.5, mask_length=5, lr=2e-3, warmup_steps=0)
    # Four tones; each frame's target is its clip's tone (what masked frames must infer from their context).
    time = torch.arange(16000) / 16000
    wavs = torch.stack([0.1 * torch.sin(2 * torch.pi * f * time) for f in (200.0, 450.0, 900.0, 1700.0)])
    lengths = torch.tensor([16000, 14000, 12000, 16000])
    frames = module.frame_lengths(lengths)
    targets = torch.arange(4)[:, None].expand(4, int(frames.max())).clone()
    batch = {"wavs": wavs, "wav_lengths": lengths, "targets": targets, "ids": ["a", "b", "c", "d"]}
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    losses = []
    for _ in range(40):
        loss = module._step(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_strata_pretrain_writes_an_upstream_that_hf_loads_with_the_same_outputs(mini_corpus, tmp_path):
    run = tmp_path / "pretrain"
    assert main(["pretrain", "--config", str(ROOT / "recipes" / "configs" / "pretrain_tiny.yaml"),
                 "--data.train", str(mini_corpus / "emotion" / "valid.jsonl"), "--trainer.max_epochs", "2",
                 "--model.num_clusters", "20",
                 "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]) == 0  # fmt: skip
    record = json.loads((run / "upstream" / "pretrain.json").read_text())
    assert record["targets"]["features"] == "mfcc" and record["global_step"] > 0
    assert record["targets"]["num_clusters"] == 20  # the model's, linked to the data module
    upstream = build_upstream(f"hf:{run / 'upstream'}")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = HubertPretrainModule(size="tiny", num_clusters=20, final_dim=64)
    module.load_state_dict(checkpoint["state_dict"])
    wav = torch.randn(1, 12000) * 0.1
    with torch.no_grad():
        loaded = upstream(wav).hidden_states[-1]
        module.hubert.eval()
        trained = module.hubert(wav * 0 + (wav - wav.mean()) / wav.std(unbiased=False).clamp(min=1e-7),
                                attention_mask=torch.ones(1, 12000, dtype=torch.long)).last_hidden_state  # fmt: skip
    assert torch.allclose(loaded, trained, atol=1e-5)


def test_encoder_sizes_are_typed_overrides_and_a_misspelt_one_names_the_valid_ones(tmp_path, capsys):
    module = HubertPretrainModule(size="tiny", num_clusters=8, encoder=EncoderSize(num_hidden_layers=2))
    assert module.hubert.config.num_hidden_layers == 2 and module.hubert.config.hidden_size == 64  # rest: tiny's
    assert module.hparams["encoder"] == {"hidden_size": None, "num_hidden_layers": 2, "num_attention_heads": None,
                                         "intermediate_size": None}  # fmt: skip
    assert HubertPretrainModule(encoder={"intermediate_size": 32}).hubert.config.intermediate_size == 32
    with pytest.raises(ValueError, match=r"\['hiden_size'\] for pre-training 'encoder'; valid options: \['hidden"):
        HubertPretrainModule(encoder={"hiden_size": 32})
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", str(ROOT / "recipes" / "configs" / "pretrain_tiny.yaml"),
              "--model.encoder.hiden_size", "32", "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "error: unrecognized arguments: --model.encoder.hiden_size 32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pretrain_help_lists_the_encoder_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for size in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert f"--model.encoder.{size}" in out


def test_long_clips_are_cropped_as_hubert_does_with_their_targets(mini_corpus, tmp_path):
    from types import SimpleNamespace

    from recipes.audio import read_audio
    from recipes.data import read_manifest, write_jsonl
    from recipes.pretrain.data import HUBERT_CROP_SECONDS, PretrainDataModule

    test = read_manifest(mini_corpus / "emotion" / "test.jsonl")
    manifest = write_jsonl(tmp_path / "few.jsonl", [
        {**entry, "audio": str((mini_corpus / "emotion" / entry["audio"]).resolve())} for entry in test.entries[:3]
    ])  # fmt: skip
    module = HubertPretrainModule(size="tiny", num_clusters=4)
    assert module.frame_rate == 50 and HUBERT_CROP_SECONDS * 16000 == 250000
    data = PretrainDataModule(train=str(manifest), num_clusters=4, frame_lengths=module.frame_lengths,
                              frame_rate=module.frame_rate, max_seconds=1.0)  # fmt: skip
    data.trainer = SimpleNamespace(default_root_dir=str(tmp_path), is_global_zero=True)
    data.setup("fit")
    dataset = data.datasets["train"]
    assert dataset.durations == [1.0] * 3  # every mini clip is longer than a second
    torch.manual_seed(0)
    for index, entry in enumerate(dataset.manifest.entries):
        whole, targets = read_audio(entry["audio"], 16000), dataset.targets[index]
        item = dataset[index]
        start = next(s for s in range(whole.numel() - 16000 + 1) if torch.equal(whole[s : s + 16000], item["wav"]))
        assert start % 320 == 0
        assert torch.equal(item["target"], targets[start // 320 : start // 320 + 50])
        assert int(module.frame_lengths(torch.tensor([16000]))[0]) <= len(item["target"])  # a target per frame
