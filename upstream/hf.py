"""transformers backend: the raw-waveform encoders (HuBERT, wav2vec 2.0 and its conformer, WavLM, data2vec-audio,
UniSpeech, UniSpeech-SAT, SEW, SEW-D) from a hub id or a local directory."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, Wav2Vec2FeatureExtractor

from . import compat
from .base import (
    Upstream,
    UpstreamLoadError,
    lengths_to_mask,
    prepare_waveforms,
    receptive_field,
    split_feature_extractor,
)
from .names import Registry

T = TypeVar("T")

# transformers' WavLM attention mixes a bool padding mask with a float bias; torch warns on every call.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask", category=UserWarning)


@dataclass(frozen=True)
class Family:
    """How to read one transformers model_type: a CNN `feature_extractor` on the waveform, then transformer layers.

    `layers`: where the transformer layers are. `final_norm`: a norm after the last layer, always (the conformer's)
    or, when None, only in the pre-LN ("stable layer norm") variants. `squeeze`: SEW and SEW-D average-pool the CNN
    frames by `config.squeeze_factor` before the layers and upsample after them; their layers run at the pooled rate.
    `unused`: modules that make no returned state, left frozen under trainable='all' (DDP refuses weights without
    gradients).
    """

    layers: str = "encoder.layers"
    final_norm: bool | None = None
    squeeze: bool = False
    unused: tuple[str, ...] = ()


# model_type values of the transformers configs this backend knows how to read every layer from.
FAMILIES: dict[str, Family] = {
    "hubert": Family(),
    "wav2vec2": Family(),
    "wavlm": Family(),
    "data2vec-audio": Family(),
    "unispeech": Family(),
    "unispeech-sat": Family(),
    # transformers builds the conformer's positional convolution but, as fairseq, never runs it (rel-pos and rotary).
    "wav2vec2-conformer": Family(final_norm=True, unused=("encoder.pos_conv_embed",)),
    "sew": Family(final_norm=False, squeeze=True, unused=("encoder.upsample",)),
    "sew-d": Family(layers="encoder.encoder.layer", final_norm=False, squeeze=True, unused=("encoder.upsample",)),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

# model_type -> builder(source, config, local_files_only=..., **options) of every family `hf:` reads: HFUpstream's
# raw-waveform ones (registered below) and the feature-input encoders in their own files (whisper.py, w2v_bert.py),
# which register themselves when imported (upstream/registry.py imports them).
MODEL_TYPES: Registry[Upstream] = Registry("transformers model type")


class HFUpstream(Upstream):
    """Every hidden layer of a transformers speech encoder.

    `normalize`: per-utterance zero mean / unit variance on the waveform (the checkpoint's `do_normalize`).
    `use_attention_mask`: pass the padding mask to the model. Checkpoints whose CNN starts with group norm
    (wav2vec 2.0 / HuBERT / WavLM base) were trained without one, and transformers advises not to pass it; for
    those, padding changes the features of the shorter utterances in a batch.

    SEW / SEW-D: every layer is at the pooled rate (`squeeze_factor` CNN frames a frame, 25 Hz for the published
    checkpoints) and the last state is the last layer's output, before the upsampling back to the CNN rate. With a
    padding mask the model reads the first `squeeze_factor * floor(F / squeeze_factor)` of an utterance's F CNN
    frames (fewer than `squeeze_factor` dropped), so that a padded batch and the utterance alone pool the same
    frames: transformers would otherwise count a half-padded pooled frame as valid in the batch only.
    """

    def __init__(self, model: PreTrainedModel, normalize: bool, use_attention_mask: bool, name: str = "") -> None:
        super().__init__()
        config = model.config
        check_supported(config, name or "model")
        if getattr(config, "add_adapter", False):
            raise ValueError(
                f"{name or 'model'} has a wav2vec 2.0 adapter, which shortens only the last layer; load the encoder "
                "without it (add_adapter=False)"
            )
        # Representations must not depend on the training step: no LayerDrop, no SpecAugment masking.
        config.layerdrop = 0.0
        config.apply_spec_augment = False
        self.model = model
        self.name = name
        self.family = FAMILIES[config.model_type]
        self.normalize = normalize
        self.use_attention_mask = use_attention_mask
        self._frame_mask: torch.Tensor | None = None
        # data2vec-audio stacks several positional convolutions and every conformer layer has a depthwise one;
        # transformers zeroes the padding only before the first layer, so these smear padding into the last valid
        # frames. Zeroing it before each keeps every valid frame equal to running the utterance alone.
        pos_convs = compat.positional_conv_layers(model)
        padded_convs = (pos_convs if len(pos_convs) > 1 else []) + compat.conformer_depthwise_convs(model)
        for layer in padded_convs:
            layer.register_forward_pre_hook(self._zero_padded_frames)
        self._masks_convs = use_attention_mask and bool(padded_convs)
        self.num_layers = config.num_hidden_layers + 1
        self.hidden_size = config.hidden_size
        self.squeeze = config.squeeze_factor if self.family.squeeze else 1
        self.cnn_hop = math.prod(config.conv_stride)
        self.cnn_field = receptive_field(list(zip(config.conv_kernel, config.conv_stride, strict=True)))
        self.downsample_rate = self.cnn_hop * self.squeeze
        # The shortest input that makes one frame: one CNN frame, or a pooled frame's worth of them.
        self.min_samples = self.cnn_field + (self.squeeze - 1) * self.cnn_hop
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        # SEW / SEW-D: the average pool keeps whole groups of squeeze_factor CNN frames.
        return torch.div(self._cnn_frames(wav_lengths), self.squeeze, rounding_mode="floor")

    def _cnn_frames(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return compat.feat_extract_output_lengths(self.model, wav_lengths)

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        wavs = prepare_waveforms(wavs, wav_lengths, self.normalize)
        mask_lengths = wav_lengths
        if self.squeeze > 1:
            # The samples whose CNN frames fill whole pooled frames (the CNN's frame count is affine in samples).
            mask_lengths = self.cnn_field + (self.frame_lengths(wav_lengths) * self.squeeze - 1) * self.cnn_hop
        mask = lengths_to_mask(mask_lengths, wavs.size(1))
        if self._masks_convs:
            padded_frames = int(self._cnn_frames(wav_lengths.new_tensor([wavs.size(1)]))[0])
            self._frame_mask = lengths_to_mask(self._cnn_frames(wav_lengths), padded_frames)
        try:
            out = self.model(
                wavs,
                attention_mask=mask.long() if self.use_attention_mask else None,
                output_hidden_states=True,
            )
        finally:
            self._frame_mask = None
        if self.squeeze > 1:
            # Post-LN, and the encoder's output is upsampled: the layers' own states are the ones at the pooled rate.
            return list(out.hidden_states)
        # The last state is the encoder's output, after the final norm of pre-LN encoders, as fairseq and S3PRL
        # report it.
        return compat.encoder_output_states(out)

    def _zero_padded_frames(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
        if self._frame_mask is None:
            return None
        x = args[0]  # [B, D, T]
        return (x * self._frame_mask[:, None, :].to(x.dtype), *args[1:])

    def layer_groups(self):
        cnn, rest = split_feature_extractor(self.model)
        for path in self.family.unused:
            parent_path, _, unused = path.rpartition(".")
            parent = self.model.get_submodule(parent_path)
            rest = [m for m in rest if m is not parent] + [m for n, m in parent.named_children() if n != unused]
        return cnn, rest

    def transformer_layers(self):
        return list(self.model.get_submodule(self.family.layers))

    def final_norm(self):
        # Pre-LN ("stable layer norm") encoders normalise after the last layer; the others before the first.
        encoder = self.model.encoder
        after_last = self.family.final_norm
        if after_last is None:
            after_last = compat.is_pre_layer_norm_encoder(encoder)
        return encoder.layer_norm if after_last else None

    def set_trainable(self, trainable: str = "frozen", train_cnn: bool = False) -> HFUpstream:
        super().set_trainable(trainable, train_cnn)
        # transformers' CNN marks its output as needing grad whenever its own flag says so (in train mode), which
        # would build a graph through the frozen CNN and every frozen layer above it (about twice the step time).
        cnn = self.model.feature_extractor
        compat.set_feature_encoder_grad(cnn, any(p.requires_grad for p in cnn.parameters()))
        return self


def check_supported(config: PretrainedConfig, name: str, model_types: Collection[str] = SUPPORTED_MODEL_TYPES) -> None:
    if config.model_type not in model_types:
        raise ValueError(
            f"{name} is a {config.model_type!r} model; the transformers backend reads {', '.join(model_types)}"
        )


def expects_attention_mask(config: PretrainedConfig) -> bool:
    """Layer-norm CNNs (large models, data2vec-audio) were trained with padding masks; group-norm ones were not."""
    return getattr(config, "feat_extract_norm", "layer") == "layer"


def saved_feature_extractor(cls: type[T], source: str, local_files_only: bool = False) -> T | None:
    """The checkpoint's own feature-extractor settings (`preprocessor_config.json`) as `cls`, or None when it has
    none: each family then falls back to what its config implies."""
    try:
        return cls.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError):
        return None


def readable_load_error(source: str, error: Exception) -> UpstreamLoadError:
    if Path(source).exists():
        return UpstreamLoadError(f"could not read a transformers model from {source}: {error}")
    if source.startswith(("/", "./", "../", "~")):
        return UpstreamLoadError(f"directory {source} does not exist")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(Path.home(), ".cache", "huggingface")), "hub"
    )
    return UpstreamLoadError(
        f"could not load {source!r}: it is not a local directory, not in the Hugging Face cache ({cache}) and the "
        f"hub could not be reached or has no such model. Where there is internet, run "
        f"`hf download {source} --local-dir DIR`, then use hf:DIR (or set HF_HOME to a cache that has it)."
    )


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hide huggingface_hub's per-retry warnings: a failure ends in one readable error instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_config(source: str, local_files_only: bool = False) -> PretrainedConfig:
    try:
        with _quiet_hub():
            return AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise readable_load_error(source, error) from None


def load_pretrained(
    source: str, local_files_only: bool = False, config: PretrainedConfig | None = None
) -> tuple[PreTrainedModel, bool, bool]:
    """(model, do_normalize, return_attention_mask) for a hub id or local directory.

    The two flags come from the checkpoint's feature-extractor config; without one, from what its CNN type
    implies.
    """
    config = load_config(source, local_files_only) if config is None else config
    check_supported(config, source)  # before fetching any weights
    try:
        model = AutoModel.from_pretrained(source, config=config, dtype=torch.float32, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise readable_load_error(source, error) from None
    extractor = saved_feature_extractor(Wav2Vec2FeatureExtractor, source, local_files_only)
    if extractor is None:
        return model.eval(), expects_attention_mask(config), expects_attention_mask(config)
    return model.eval(), extractor.do_normalize, extractor.return_attention_mask


def build_hf_upstream(source: str, local_files_only: bool = False, **options) -> Upstream:
    """Load `source` (hub id or local directory) with its pretrained weights, by the builder `MODEL_TYPES` has for
    its config's model_type; `options` go to that builder (`normalize=`, `attention_mask=` for HFUpstream's)."""
    config = load_config(source, local_files_only)
    check_supported(config, source, MODEL_TYPES)  # before fetching any weights
    return MODEL_TYPES.build(config.model_type, source, config, local_files_only=local_files_only, **options)


def build_waveform_upstream(
    source: str,
    config: PretrainedConfig,
    local_files_only: bool = False,
    normalize: bool | None = None,
    attention_mask: bool | None = None,
) -> HFUpstream:
    """HFUpstream for `source`; `normalize` / `attention_mask` override the checkpoint's own settings."""
    model, do_normalize, wants_mask = load_pretrained(source, local_files_only, config)
    return HFUpstream(
        model,
        normalize=do_normalize if normalize is None else normalize,
        use_attention_mask=wants_mask if attention_mask is None else attention_mask,
        name=source,
    )


for _model_type in SUPPORTED_MODEL_TYPES:
    MODEL_TYPES.register(_model_type)(build_waveform_upstream)


# Small random-initialised encoders for tests and offline demos: the real architectures at toy width.
TINY_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    conv_dim=(32, 32, 32, 32, 32, 32, 32),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    # Layer-norm CNN and pre-LN encoder, as in the large checkpoints: they take a padding mask, so a tiny model's
    # features do not depend on what it was batched with.
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)


# data2vec-audio reads num_conv_pos_embeddings as the number of positional conv layers, not their width. SEW's CNN
# has 13 layers (stride-1 ones between the wav2vec 2.0 ones).
_SEW_CNN = dict(conv_dim=(32,) * 13)
TINY_TYPE_CONFIG = {
    "data2vec-audio": dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=5),
    "sew": _SEW_CNN,
    "sew-d": _SEW_CNN,
}


def tiny_model(model_type: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A 4-layer, 64-wide model of `model_type`, the same weights for the same seed."""
    config = AutoConfig.for_model(model_type, **{**TINY_CONFIG, **TINY_TYPE_CONFIG.get(model_type, {}), **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModel.from_config(config).eval()


def build_tiny_upstream(model_type: str, seed: int = 0, **overrides) -> HFUpstream:
    model = tiny_model(model_type, seed=seed, **overrides)
    mask = expects_attention_mask(model.config)
    return HFUpstream(model, normalize=mask, use_attention_mask=mask, name=f"tiny {model_type}")
