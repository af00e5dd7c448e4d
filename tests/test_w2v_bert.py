"""w2v-BERT 2.0 as an upstream: the SeamlessM4T extractor's stacked fbank in torch, every state the model's own,
n_fbank // 2 frames, padding that changes no valid frame, top:K, and a cached fit."""

import re
from pathlib import Path

import pytest
import torch
from training import first_step_loss
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

from recipes.cache import extract
from recipes.cli import main
from recipes.data import read_manifest, write_jsonl
from upstream import PRESETS, build_upstream
from upstream.w2v_bert import StackedFbank, W2vBertUpstream, tiny_w2v_bert_model


@pytest.fixture(scope="module")
def w2v_bert_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("w2v_bert")
    tiny_w2v_bert_model(seed=1).save_pretrained(path)
    SeamlessM4TFeatureExtractor().save_pretrained(path)
    return str(path)


def clips(*lengths: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor(lengths)
    wavs = 0.1 * torch.randn(len(lengths), int(lengths.max()), generator=generator)
    return wavs * (torch.arange(wavs.size(1))[None] < lengths[:, None]), lengths


def extractor_inputs(wavs: torch.Tensor, lengths: torch.Tensor):
    extractor = SeamlessM4TFeatureExtractor()
    audio = [w[:n].numpy() for w, n in zip(wavs, lengths.tolist(), strict=True)]
    return extractor(audio, sampling_rate=16000, return_tensors="pt")


def test_stacked_fbank_is_the_feature_extractors():
    # 12345 samples: 75 fbank frames (odd, the last one is dropped by the stacking); 8001: 49; 160000: 998.
    wavs, lengths = clips(12345, 8001, 160000)
    theirs = extractor_inputs(wavs, lengths)
    ours, frames = StackedFbank()(wavs, lengths)
    assert frames.tolist() == theirs.attention_mask.sum(-1).tolist() == [37, 24, 499]
    assert ours.shape == theirs.input_features.shape == (3, 499, 160) and ours.dtype == torch.float32
    odd, _ = StackedFbank()(wavs[:1, :12345], lengths[:1])
    assert odd.shape == (1, 37, 160)  # the extractor's masked 38th frame, an incomplete stack, is left out
    for i, n in enumerate(frames.tolist()):
        assert (ours[i, :n] - theirs.input_features[i, :n]).abs().max() < 1e-4


def test_every_state_is_the_models_own(w2v_bert_dir):
    wavs, lengths = clips(12345, 8001)
    upstream = build_upstream(f"hf:{w2v_bert_dir}")
    assert isinstance(upstream, W2vBertUpstream)
    model = Wav2Vec2BertModel.from_pretrained(w2v_bert_dir).eval()
    inputs = extractor_inputs(wavs, lengths)
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True).hidden_states
    out = upstream(wavs, lengths)
    assert len(out.hidden_states) == len(expected) == upstream.num_layers == 5
    assert out.lengths.tolist() == inputs.attention_mask.sum(-1).tolist()
    for layer, (ours, theirs) in enumerate(zip(out.hidden_states, expected, strict=True)):
        for i, n in enumerate(out.lengths.tolist()):
            diff = (ours[i, :n] - theirs[i, :n]).abs().max().item()
            assert diff < 1e-4, f"layer {layer} of utterance {i} is off by {diff}"


def test_frames_are_half_the_fbank_frames_rounded_down(w2v_bert_dir):
    upstream = build_upstream(f"hf:{w2v_bert_dir}")
    lengths = [560, 719, 720, 879, 880, 16000, 16079, 16080, 16240]
    expected = [((n - 400) // 160 + 1) // 2 for n in lengths]
    assert upstream.frame_lengths(torch.tensor(lengths)).tolist() == expected == [1, 1, 1, 1, 2, 49, 49, 49, 50]
    for n, frames in zip(lengths, expected, strict=True):
        assert int(extractor_inputs(*clips(n)).attention_mask.sum()) == frames
    assert upstream.downsample_rate == 320 and upstream.min_samples == 560
    with pytest.raises(ValueError, match="fewer than 560 samples"):
        upstream(torch.zeros(1, 559))


def test_padding_does_not_change_valid_frames(w2v_bert_dir):
    wavs, lengths = clips(12345, 8001, 3000)
    upstream = build_upstream(f"hf:{w2v_bert_dir}")
    batched = upstream(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = upstream(wavs[i : i + 1, :n])
        frames = int(batched.lengths[i])
        assert frames == alone.hidden_states[0].size(1)
        for layer, (p, a) in enumerate(zip(batched.hidden_states, alone.hidden_states, strict=True)):
            diff = (p[i, :frames] - a[0]).abs().max().item()
            assert diff < 1e-4, f"layer {layer} of utterance {i} moved by {diff}"


def test_top_k_trains_exactly_the_top_k_layers(w2v_bert_dir):
    upstream = build_upstream(f"hf:{w2v_bert_dir}", trainable="top:1")
    trained = {name for name, p in upstream.named_parameters() if p.requires_grad}
    assert trained and all(name.startswith("model.encoder.layers.3.") for name in trained)
    assert trained == {f"model.encoder.layers.3.{n}" for n, _ in upstream.model.encoder.layers[3].named_parameters()}
    upstream.train()
    upstream(*clips(8000)).hidden_states[-1].sum().backward()
    assert all((p.grad is not None) == (name in trained) for name, p in upstream.named_parameters())
    everything = build_upstream(f"hf:{w2v_bert_dir}", trainable="all")
    assert all(p.requires_grad for name, p in everything.named_parameters() if name != "model.masked_spec_embed")


def test_preset_sizes():
    assert (PRESETS["w2v_bert_2"].num_layers, PRESETS["w2v_bert_2"].hidden_size) == (25, 1024)
    assert PRESETS["w2v_bert_2"].source == "hf:facebook/w2v-bert-2.0"
    upstream = build_upstream("tiny_w2v_bert")
    assert (upstream.num_layers, upstream.hidden_size) == (PRESETS["tiny_w2v_bert"].num_layers, 64)


def test_inspect_runs_a_w2v_bert_directory(w2v_bert_dir, capsys):
    assert main(["inspect", "--upstream", f"hf:{w2v_bert_dir}"]) == 0
    out = capsys.readouterr().out
    assert "5 hidden states of size 64, 50 frames/s" in out
    assert re.search(r"\| 4 +\| 49 +\|", out)  # a 1 s tone: 99 fbank frames, 49 stacked ones


def test_a_cached_fit_starts_where_a_fit_from_audio_does(mini_corpus, tmp_path):
    splits = {}
    for split, count in [("train", 16), ("valid", 4)]:
        manifest = read_manifest(mini_corpus / "emotion" / f"{split}.jsonl")
        entries = [{**e, "audio": str(Path(e["audio"]).resolve())} for e in manifest.entries[:count]]
        splits[split] = str(write_jsonl(tmp_path / f"{split}.jsonl", entries))
    extract("tiny_w2v_bert", list(splits.values()), tmp_path / "cache", dtype="float32", progress=False)
    live, cached = (
        first_step_loss(splits, None, upstream="tiny_w2v_bert"),
        first_step_loss(splits, str(tmp_path / "cache"), upstream="tiny_w2v_bert"),
    )
    assert cached == pytest.approx(live, rel=1e-4)
