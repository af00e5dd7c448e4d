"""fairseq checkpoints (wav2vec 2.0, HuBERT, unilm WavLM) load by `fairseq:PATH` with their own config and give the
states of the torchaudio model whose weights they hold. No fairseq checkpoint can be downloaded here, so the tests
write them: a tiny torchaudio model's weights under fairseq's names (torchaudio's import map read backwards)."""

import argparse
import fractions
import re

import pytest
import torch
import torchaudio

from upstream import UpstreamLoadError, build_upstream, compat
from upstream.torchaudio_backend import TorchaudioUpstream

TINY_FAIRSEQ = {
    "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 2 + [(32, 2, 2)]",
    "conv_bias": False,
    "encoder_embed_dim": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_embed_dim": 128,
    "conv_pos": 16,
    "conv_pos_groups": 4,
}


def torchaudio_twin(cfg: dict, wavlm: bool):
    """The torchaudio model a tiny fairseq config describes, every weight random (so a misplaced one shows)."""
    sizes = dict(
        extractor_mode="layer_norm" if cfg.get("extractor_mode") == "layer_norm" else "group_norm",
        extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 2, 2)],
        extractor_conv_bias=False,
        encoder_embed_dim=64,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=2,
        encoder_num_heads=4,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=128,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=bool(cfg.get("layer_norm_first", False)),
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    torch.manual_seed(0)
    if wavlm:
        model = torchaudio.models.wavlm_model(**sizes, encoder_num_buckets=32, encoder_max_distance=64)
    else:
        model = torchaudio.models.wav2vec2_model(**sizes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


# torchaudio's names -> fairseq's: the rules of torchaudio's `_map_key`, read right to left.
TO_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(.+)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"encoder\.feature_projection\.projection\.(.+)", r"post_extract_proj.\1"),
    (r"encoder\.feature_projection\.layer_norm\.(.+)", r"layer_norm.\1"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.bias", r"encoder.pos_conv.0.bias"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.transformer\.layer_norm\.(.+)", r"encoder.layer_norm.\1"),
    (
        r"encoder\.transformer\.layers\.(\d+)\.attention\.(?:attention\.)?((?:k_|v_|q_|out_)proj\..+)",
        r"encoder.layers.\1.self_attn.\2",
    ),  # fmt: skip
    (
        r"encoder\.transformer\.layers\.(\d+)\.attention\.rel_attn_embed\.(.+)",
        r"encoder.layers.\1.self_attn.relative_attention_bias.\2",
    ),  # fmt: skip
    (
        r"encoder\.transformer\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(.+)",
        r"encoder.layers.\1.self_attn.grep_linear.\2",
    ),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.gru_rel_pos_const", r"encoder.layers.\1.self_attn.grep_a"),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.(.+)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(.+)", r"encoder.layers.\1.fc1.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.(.+)", r"encoder.layers.\1.fc2.\2"),
    (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.(.+)", r"encoder.layers.\1.final_layer_norm.\2"),
]


def fairseq_state_dict(model, layer_norm_cnn: bool) -> dict[str, torch.Tensor]:
    """A torchaudio model's weights under fairseq's names (WavLM's fused q/k/v split into three projections)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("attention.attention.in_proj_weight") or key.endswith("attention.attention.in_proj_bias"):
            kind = key.rsplit("_", 1)[-1]
            for name, part in zip("qkv", value.chunk(3), strict=True):
                state[key.replace(f"attention.in_proj_{kind}", f"{name}_proj.{kind}")] = part
            continue
        state[key] = value
    renamed = {}
    for key, value in state.items():
        norm = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(.+)", key)
        if norm:  # a group norm is module 2 of the first conv block; a layer norm module 1 of module 2 of each
            new = f"feature_extractor.conv_layers.{norm[1]}.2.{'1.' if layer_norm_cnn else ''}{norm[2]}"
        else:
            new = next(re.sub(p, r, key) for p, r in TO_FAIRSEQ if re.fullmatch(p, key))
        renamed[new] = value
    return renamed


def hubert_checkpoint(model):
    """A fairseq >= 0.10 (hydra) HuBERT checkpoint: cfg.model, cfg.task, and pre-training-only weights."""
    weights = fairseq_state_dict(model, layer_norm_cnn=False)
    weights |= {"mask_emb": torch.randn(64), "label_embs_concat": torch.randn(10, 16),
                "final_proj.weight": torch.randn(16, 64), "final_proj.bias": torch.randn(16)}  # fmt: skip
    cfg = {"model": {"_name": "hubert", "extractor_mode": "default", **TINY_FAIRSEQ}, "task": {"normalize": False}}
    return {"cfg": cfg, "args": None, "model": weights}


CHECKPOINTS = {
    # name: (fairseq config, wavlm?, normalize, checkpoint from model)
    "hubert (hydra cfg)": ({}, False, False, hubert_checkpoint),
    "wav2vec2 large-style (args Namespace)": (
        {"extractor_mode": "layer_norm", "layer_norm_first": True},
        False,
        True,
        lambda model: {
            "args": argparse.Namespace(
                arch="wav2vec2", extractor_mode="layer_norm", layer_norm_first=True, normalize=True, **TINY_FAIRSEQ
            ),  # fmt: skip
            "model": fairseq_state_dict(model, layer_norm_cnn=True),
        },
    ),
    "wavlm (unilm flat cfg)": (
        {},
        True,
        False,
        lambda model: {
            "cfg": {
                "extractor_mode": "default",
                "relative_position_embedding": True,
                "num_buckets": 32,
                "max_distance": 64,
                "gru_rel_pos": True,
                "normalize": False,
                **TINY_FAIRSEQ,
            },  # fmt: skip
            "model": fairseq_state_dict(model, layer_norm_cnn=False),
        },
    ),
}


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_a_fairseq_checkpoint_loads_with_its_own_config_and_gives_the_torchaudio_models_states(tmp_path, kind, batch):
    cfg, wavlm, normalize, make = CHECKPOINTS[kind]
    model = torchaudio_twin(cfg, wavlm)
    checkpoint = make(model)
    assert {"encoder.layers.0.self_attn.k_proj.weight", "feature_extractor.conv_layers.0.0.weight",
            "post_extract_proj.weight", "encoder.pos_conv.0.weight_g"} <= set(checkpoint["model"])  # fmt: skip
    if not wavlm:  # the test's renaming is the inverse of torchaudio's (WavLM's attention is ours, not torchaudio's)
        back = compat.convert_fairseq_state_dict(checkpoint["model"])
        own = {k: v for k, v in model.state_dict().items() if "parametrizations" not in k}
        assert all(torch.equal(back[k], v) for k, v in own.items())
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)

    upstream = build_upstream(f"fairseq:{path}")
    assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (3, 64, 5 * 2 * 2 * 2)
    assert upstream.is_wavlm == wavlm and upstream.normalize == normalize
    reference = TorchaudioUpstream(model, normalize=normalize)
    wavs, lengths = batch
    got, expected = upstream(wavs, lengths), reference(wavs, lengths)
    assert torch.equal(got.lengths, expected.lengths)
    for layer, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
        assert torch.allclose(a, b, atol=1e-6), f"layer {layer}: {(a - b).abs().max()}"


def test_a_fairseq_wavlm_checkpoint_also_loads_into_the_named_torchaudio_builder(tmp_path):
    model = torchaudio.models.wavlm_base()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / "WavLM-Base.pt"
    torch.save({"cfg": {}, "model": fairseq_state_dict(model, layer_norm_cnn=False)}, path)
    upstream = build_upstream("torchaudio:wavlm_base", checkpoint=path)
    for key, value in model.state_dict().items():
        assert torch.equal(upstream.model.state_dict()[key], value), key


def test_a_checkpoint_that_is_not_a_usable_fairseq_one_says_why(tmp_path):
    model = torchaudio_twin({}, wavlm=False)
    cases = {
        "plain.pt": (model.state_dict(), "is not a fairseq checkpoint"),
        "bare.pt": ({"model": fairseq_state_dict(model, False)}, "has no fairseq config ('cfg' or 'args')"),
        "d2v.pt": ({"cfg": {"model": {"_name": "data2vec_audio"}}, "model": {}}, "fairseq 'data2vec_audio' model"),
        "wrong.pt": (
            {
                "cfg": {"model": {"_name": "hubert", **TINY_FAIRSEQ, "encoder_layers": 3}},
                "model": fairseq_state_dict(model, False),
            },
            "its config does not describe its weights",
        ),  # fmt: skip
    }
    for name, (content, says) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(UpstreamLoadError, match=re.escape(says)):
            build_upstream(f"fairseq:{tmp_path / name}")


def test_a_fairseq_config_of_other_python_objects_needs_weights_only_false(tmp_path):
    checkpoint = hubert_checkpoint(torchaudio_twin({}, wavlm=False))
    checkpoint["cfg"]["common"] = {"fraction": fractions.Fraction(1, 3)}  # not a tensor or a plain container
    torch.save(checkpoint, tmp_path / "objects.pt")
    with pytest.raises(UpstreamLoadError, match="pass weights_only=False") as info:
        build_upstream(f"fairseq:{tmp_path / 'objects.pt'}")
    assert "\n" not in str(info.value)
    assert build_upstream(f"fairseq:{tmp_path / 'objects.pt'}", weights_only=False).num_layers == 3


def test_a_fine_tuned_fairseq_checkpoint_loads_its_encoder_from_the_pre_training_config_inside(tmp_path, batch):
    model = torchaudio_twin({}, wavlm=False)
    weights = {f"w2v_encoder.w2v_model.{k}": v for k, v in fairseq_state_dict(model, False).items()}
    weights |= {"w2v_encoder.w2v_model.mask_emb": torch.randn(64), "w2v_encoder.proj.weight": torch.randn(5, 64),
                "w2v_encoder.proj.bias": torch.randn(5)}  # fmt: skip
    inner = {"model": {"_name": "wav2vec2", **TINY_FAIRSEQ}, "task": {"normalize": False}}
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_path": "/gone/wav2vec_small.pt", "w2v_args": inner}}
    torch.save({"cfg": cfg, "model": weights}, tmp_path / "ctc.pt")
    upstream = build_upstream(f"fairseq:{tmp_path / 'ctc.pt'}")
    assert torch.equal(upstream.model.aux.weight, weights["w2v_encoder.proj.weight"])  # the CTC layer, unused
    got, expected = upstream(*batch), TorchaudioUpstream(model, normalize=False)(*batch)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got.hidden_states, expected.hidden_states, strict=True))
