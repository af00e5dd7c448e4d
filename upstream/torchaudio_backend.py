"""torchaudio backend: its wav2vec 2.0 / HuBERT / WavLM builders and bundles, fairseq and transformers imports."""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torchaudio.models import Wav2Vec2Model
from torchaudio.models.wav2vec2.wavlm_attention import WavLMSelfAttention

from . import compat
from .base import (
    Upstream,
    UpstreamLoadError,
    conv_output_lengths,
    lengths_to_mask,
    prepare_waveforms,
    receptive_field,
    split_feature_extractor,
)

# torchaudio.models builders that return a bare encoder (randomly initialised until a checkpoint is loaded).
BUILDERS = (
    "hubert_base",
    "hubert_large",
    "hubert_xlarge",
    "wav2vec2_base",
    "wav2vec2_large",
    "wav2vec2_large_lv60k",
    "wav2vec2_xlsr_300m",
    "wav2vec2_xlsr_1b",
    "wav2vec2_xlsr_2b",
    "wavlm_base",
    "wavlm_large",
)


def _has_layer_norm_cnn(model: Wav2Vec2Model) -> bool:
    return not isinstance(model.feature_extractor.conv_layers[0].layer_norm, torch.nn.GroupNorm)


class TorchaudioUpstream(Upstream):
    """Every hidden layer of a torchaudio `Wav2Vec2Model` (wav2vec 2.0, HuBERT, WavLM).

    Index 0 is what enters the first transformer layer and index i what leaves layer i, the same convention as
    the transformers backend, so both give the same states for the same weights. The padding mask follows the
    transformers rule (only layer-norm CNNs get one) for the same reason.
    """

    def __init__(
        self,
        model: Wav2Vec2Model,
        normalize: bool | None = None,
        use_attention_mask: bool | None = None,
        sample_rate: int = 16000,
        name: str = "",
    ) -> None:
        super().__init__()
        layer_norm_cnn = _has_layer_norm_cnn(model)
        self.model = model
        self.name = name
        self.normalize = layer_norm_cnn if normalize is None else normalize
        self.use_attention_mask = layer_norm_cnn if use_attention_mask is None else use_attention_mask
        self.kernels_strides = [
            (layer.conv.kernel_size[0], layer.conv.stride[0]) for layer in model.feature_extractor.conv_layers
        ]
        transformer = model.encoder.transformer
        transformer.layer_drop = 0.0
        self.is_wavlm = isinstance(transformer.layers[0].attention, WavLMSelfAttention)
        self.sample_rate = sample_rate
        self.num_layers = len(transformer.layers) + 1
        self.hidden_size = model.encoder.feature_projection.projection.out_features
        self.downsample_rate = math.prod(stride for _, stride in self.kernels_strides)
        self.min_samples = receptive_field(self.kernels_strides)
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(wav_lengths, self.kernels_strides)

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        wavs = prepare_waveforms(wavs, wav_lengths, self.normalize)
        features, lengths = self.model.feature_extractor(wavs, wav_lengths)
        if not self.use_attention_mask:
            lengths = None
        # Zeroes padded frames and builds the additive mask wav2vec 2.0 / HuBERT attention takes.
        x, attention_mask = compat.torchaudio_encoder_input(self.model.encoder, features, lengths)
        padding = None if lengths is None else ~lengths_to_mask(lengths, x.size(1))
        if self.is_wavlm:
            # torchaudio's WavLM attention takes the padding as key_padding_mask only (its own extract_features
            # cannot mask at all); the other attentions ignore key_padding_mask.
            attention_mask = None
        transformer = self.model.encoder.transformer
        x = compat.torchaudio_transformer_input(transformer, x)
        states, position_bias = [x], None
        for layer in transformer.layers:
            x, position_bias = layer(x, attention_mask, position_bias=position_bias, key_padding_mask=padding)
            states.append(x)
        final_norm = self.final_norm()
        if final_norm is not None:  # pre-LN: the encoder's output is normalised, as in the transformers backend
            states[-1] = final_norm(x)
        return states

    def layer_groups(self):
        return split_feature_extractor(self.model)

    def transformer_layers(self):
        return list(self.model.encoder.transformer.layers)

    def final_norm(self):
        # torchaudio's flag is True for post-LN encoders, which normalise before the first layer instead.
        transformer = self.model.encoder.transformer
        return None if transformer.layer_norm_first else transformer.layer_norm


def read_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> Any:
    """`torch.load` of a checkpoint file, on the CPU; by default only tensors, plain containers and an
    `argparse.Namespace` (the `args` of older fairseq checkpoints) are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise UpstreamLoadError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # noqa: BLE001 - any unpickling failure gets the same advice
        reason = " ".join(str(error).split())[:200]
        raise UpstreamLoadError(
            f"could not read checkpoint {path} with weights_only={weights_only} ({type(error).__name__}: {reason}); "
            "save `model.state_dict()` (or a fairseq checkpoint's 'model' and 'cfg' entries) with torch.save, or, "
            "for a file you trust, pass weights_only=False"
        ) from None


# fairseq WavLM (microsoft/unilm) names -> torchaudio's WavLMSelfAttention, whose q/k/v are one nn.MultiheadAttention.
_WAVLM_KEYS = {
    "relative_attention_bias.weight": "rel_attn_embed.weight",
    "grep_linear.weight": "gru_rel_pos_linear.weight",
    "grep_linear.bias": "gru_rel_pos_linear.bias",
    "grep_a": "gru_rel_pos_const",
}


def convert_fairseq_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fairseq (or unilm WavLM) checkpoint's `model` entry in torchaudio's names; a fine-tuned model's
    `w2v_encoder.` prefix is dropped and its output layer kept as `aux`."""
    state = {key.removeprefix("w2v_encoder."): value for key, value in state.items()}
    wavlm = {}
    for key in list(state):
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.(.+)", key)
        if match and match.group(2) in _WAVLM_KEYS:
            attention = f"encoder.transformer.layers.{match.group(1)}.attention"
            wavlm[f"{attention}.{_WAVLM_KEYS[match.group(2)]}"] = state.pop(key)
    converted = compat.convert_fairseq_state_dict(state)
    if wavlm:
        for key in [k for k in converted if k.endswith(".attention.q_proj.weight")]:
            attention = key.removesuffix(".q_proj.weight")
            for kind in ("weight", "bias"):
                parts = [converted.pop(f"{attention}.{p}_proj.{kind}") for p in "qkv"]
                converted[f"{attention}.attention.in_proj_{kind}"] = torch.cat(parts)
                converted[f"{attention}.attention.out_proj.{kind}"] = converted.pop(f"{attention}.out_proj.{kind}")
        converted.update(wavlm)
    return converted


def load_state_dict_file(model: Wav2Vec2Model, path: str | os.PathLike, weights_only: bool = True) -> None:
    """Load a torchaudio state dict, or a fairseq checkpoint (its `model` entry, keys converted)."""
    state = read_checkpoint(path, weights_only)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = convert_fairseq_weights(state["model"])
    load_weights(model, state, path)


def load_weights(
    model: Wav2Vec2Model,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    hint: str = "pick the builder of the same size, e.g. torchaudio:hubert_large",
) -> None:
    """`model.load_state_dict(state)` where every encoder weight must fit; CTC heads and pre-training-only
    parameters (HuBERT's label embeddings, masks, projections) may be missing or extra."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UpstreamLoadError(f"checkpoint {path} does not fit the chosen builder ({first}); {hint}") from None
    # CTC heads (aux) may be missing or extra; encoder weights may not.
    missing = [k for k in missing if not k.startswith("aux.")]
    unexpected = [k for k in unexpected if not k.startswith(("aux.", "mask_emb", "label_embs", "final_proj"))]
    if missing or unexpected:
        raise UpstreamLoadError(
            f"checkpoint {path} does not fit the chosen builder: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} ({hint})"
        )


# fairseq's defaults (Wav2Vec2Config / HubertConfig / WavLMConfig) for fields a checkpoint's config leaves out.
_FAIRSEQ_DEFAULTS = {
    "extractor_mode": "default",
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2",
    "conv_bias": False,
    "encoder_embed_dim": 768,
    "encoder_layers": 12,
    "encoder_attention_heads": 12,
    "encoder_ffn_embed_dim": 3072,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "layer_norm_first": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "dropout_input": 0.0,
    "encoder_layerdrop": 0.0,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "pos_conv_depth": 1,
    "activation_fn": "gelu",
}


def _layer_list(text: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers`, a Python expression of lists of (dim, kernel, stride) tuples joined by + and
    *, evaluated without eval()."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(item) for item in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported {type(node).__name__}")

    try:
        layers = value(ast.parse(text, mode="eval").body)
        return [(int(dim), int(kernel), int(stride)) for dim, kernel, stride in layers]
    except (SyntaxError, ValueError, TypeError) as error:
        raise ValueError(f"conv_feature_layers {text!r} is not a list of (dim, kernel, stride): {error}") from None


def _as_dict(value: Any) -> dict[str, Any] | None:
    """A config section as a dict: fairseq stores plain dicts (hydra configs saved as containers) or, in older
    checkpoints and in sections converted from them, an argparse.Namespace."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, argparse.Namespace):
        return vars(value)
    return None


def fairseq_config(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, task config) of a fairseq checkpoint: `cfg['model']` and `cfg['task']` (hydra, fairseq >= 0.10),
    `args` (an argparse.Namespace, older ones) or a flat `cfg` (unilm WavLM); a fine-tuned model's `w2v_args`."""
    cfg = _as_dict(checkpoint.get("cfg")) or _as_dict(checkpoint.get("args"))
    if cfg is None:
        return {}, {}
    model = _as_dict(cfg.get("model")) or cfg
    task = _as_dict(cfg.get("task")) or cfg
    inner = _as_dict(model.get("w2v_args"))
    if inner is not None:  # fine-tuned: the encoder's own pre-training config
        return fairseq_config({"cfg": inner})
    return model, task


def fairseq_model(checkpoint: Mapping[str, Any], weights: Mapping[str, torch.Tensor], path: str) -> Wav2Vec2Model:
    """The torchaudio model a fairseq checkpoint's config describes (wav2vec 2.0, HuBERT or WavLM)."""
    model_cfg, _ = fairseq_config(checkpoint)
    if not model_cfg:
        raise UpstreamLoadError(
            f"checkpoint {path} has no fairseq config ('cfg' or 'args'), so its sizes are unknown; load it with "
            "torchaudio:<builder of its size> and checkpoint=PATH"
        )
    name = str(model_cfg.get("_name") or model_cfg.get("arch") or "")
    wavlm = any(".rel_attn_embed." in key or ".gru_rel_pos_linear." in key for key in weights)
    if name and not wavlm and not name.startswith(("wav2vec2", "hubert")):
        raise UpstreamLoadError(
            f"checkpoint {path} is a fairseq {name!r} model; fairseq: loads wav2vec 2.0, HuBERT and WavLM"
        )
    cfg = {**_FAIRSEQ_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None}}
    if cfg["activation_fn"] != "gelu" or int(cfg["pos_conv_depth"]) != 1 or (wavlm and not cfg["gru_rel_pos"]):
        raise UpstreamLoadError(
            f"checkpoint {path}: torchaudio's encoder has gelu, one positional convolution and WavLM's gated "
            f"relative positions; this one has activation_fn={cfg['activation_fn']!r}, "
            f"pos_conv_depth={cfg['pos_conv_depth']}, gru_rel_pos={cfg['gru_rel_pos']}"
        )
    sizes = {
        "extractor_mode": "group_norm" if cfg["extractor_mode"] == "default" else cfg["extractor_mode"],
        "extractor_conv_layer_config": _layer_list(str(cfg["conv_feature_layers"])),
        "extractor_conv_bias": bool(cfg["conv_bias"]),
        "encoder_embed_dim": int(cfg["encoder_embed_dim"]),
        "encoder_projection_dropout": float(cfg["dropout_input"]),
        "encoder_pos_conv_kernel": int(cfg["conv_pos"]),
        "encoder_pos_conv_groups": int(cfg["conv_pos_groups"]),
        "encoder_num_layers": int(cfg["encoder_layers"]),
        "encoder_num_heads": int(cfg["encoder_attention_heads"]),
        "encoder_attention_dropout": float(cfg["attention_dropout"]),
        "encoder_ff_interm_features": int(cfg["encoder_ffn_embed_dim"]),
        "encoder_ff_interm_dropout": float(cfg["activation_dropout"]),
        "encoder_dropout": float(cfg["dropout"]),
        "encoder_layer_norm_first": bool(cfg["layer_norm_first"]),
        "encoder_layer_drop": float(cfg["encoder_layerdrop"]),
        "aux_num_out": weights["aux.weight"].size(0) if "aux.weight" in weights else None,
    }
    if wavlm:
        sizes.update(encoder_num_buckets=int(cfg["num_buckets"]), encoder_max_distance=int(cfg["max_distance"]))
        return torchaudio.models.wavlm_model(**sizes)
    return torchaudio.models.wav2vec2_model(**sizes)


def build_fairseq_upstream(
    path: str,
    normalize: bool | None = None,
    attention_mask: bool | None = None,
    weights_only: bool = True,
) -> TorchaudioUpstream:
    """`fairseq:<checkpoint.pt>`: a fairseq wav2vec 2.0 / HuBERT (pre-trained or fine-tuned) or unilm WavLM
    checkpoint, its sizes read from its `cfg` / `args`, its weights renamed by torchaudio's fairseq import.

    Waveforms are normalised when the checkpoint's task (or WavLM's config) says `normalize`; `weights_only=False`
    reads a trusted checkpoint whose config is a Python object other than a dict or `argparse.Namespace`.
    """
    checkpoint = read_checkpoint(path, weights_only)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise UpstreamLoadError(
            f"{path} is not a fairseq checkpoint (a dict with 'model' weights and a 'cfg' or 'args' config); for a "
            "torchaudio state dict use torchaudio:<builder> with checkpoint=PATH"
        )
    weights = convert_fairseq_weights(checkpoint["model"])
    model = fairseq_model(checkpoint, weights, path)
    load_weights(model, weights, path, "its config does not describe its weights")
    model_cfg, task_cfg = fairseq_config(checkpoint)
    if normalize is None and "normalize" in {**model_cfg, **task_cfg}:
        normalize = bool(task_cfg.get("normalize", model_cfg.get("normalize")))
    return TorchaudioUpstream(model.eval(), normalize, attention_mask, name=f"fairseq:{path}")


def build_torchaudio_upstream(
    source: str,
    checkpoint: str | os.PathLike | None = None,
    normalize: bool | None = None,
    attention_mask: bool | None = None,
    weights_only: bool = True,
) -> TorchaudioUpstream:
    """`source` is a bundle (`HUBERT_BASE`), a builder (`hubert_base`, optionally with `checkpoint`) or a
    transformers directory / hub id imported with torchaudio's converter."""
    if source in BUILDERS:
        model = getattr(torchaudio.models, source)()
        if checkpoint is not None:
            load_state_dict_file(model, checkpoint, weights_only)
        return TorchaudioUpstream(model, normalize, attention_mask, name=f"torchaudio:{source}")
    if checkpoint is not None:
        raise ValueError(f"checkpoint= goes with a torchaudio builder ({', '.join(BUILDERS)}), not {source!r}")
    bundle = getattr(torchaudio.pipelines, source, None)
    if isinstance(bundle, torchaudio.pipelines.Wav2Vec2Bundle):
        try:
            # Normalising bundles come wrapped (a whole-batch layer norm); take the encoder, normalise per utterance.
            model = compat.bundle_encoder(bundle.get_model())
        except OSError as error:
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
            weights = compat.bundle_weights_file(bundle)
            raise UpstreamLoadError(
                f"could not fetch the weights of torchaudio bundle {source} ({error}); put {weights} in "
                f"{hub_dir}, or use torchaudio:<builder> with checkpoint=PATH"
            ) from None
        if normalize is None:
            normalize = compat.bundle_normalizes_waveform(bundle)
        return TorchaudioUpstream(
            model, normalize, attention_mask, sample_rate=int(bundle.sample_rate), name=f"torchaudio:{source}"
        )
    if Path(source).is_dir() or "/" in source:
        from torchaudio.models.wav2vec2.utils import import_huggingface_model

        from .hf import load_pretrained

        hf_model, do_normalize, wants_mask = load_pretrained(source)
        model = import_huggingface_model(hf_model).eval()
        return TorchaudioUpstream(
            model,
            do_normalize if normalize is None else normalize,
            wants_mask if attention_mask is None else attention_mask,
            name=f"torchaudio:{source}",
        )
    bundles = sorted(
        n
        for n in dir(torchaudio.pipelines)
        if isinstance(getattr(torchaudio.pipelines, n), torchaudio.pipelines.Wav2Vec2Bundle)
    )
    raise ValueError(
        f"torchaudio:{source} is neither a builder ({', '.join(BUILDERS)}), a wav2vec2 bundle "
        f"({', '.join(bundles)}) nor a transformers directory"
    )
