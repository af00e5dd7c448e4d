"""torchaudio backend: its wav2vec 2.0 / HuBERT / WavLM builders and bundles, fairseq and transformers imports."""

from __future__ import annotations

import math
import os
from pathlib import Path

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


def load_state_dict_file(model: Wav2Vec2Model, path: str | os.PathLike) -> None:
    """Load a torchaudio state dict, or a fairseq checkpoint (its `model` entry, keys converted)."""
    path = Path(path)
    if not path.is_file():
        raise UpstreamLoadError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise UpstreamLoadError(
            f"could not read checkpoint {path} as a plain state dict ({type(error).__name__}); save "
            "`model.state_dict()` (or a fairseq checkpoint's ['model'] entry) with torch.save"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = compat.convert_fairseq_state_dict(state["model"])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UpstreamLoadError(
            f"checkpoint {path} does not fit the chosen builder ({first}); pick the builder of the same size"
        ) from None
    # CTC heads (aux) may be missing or extra; encoder weights may not.
    missing = [k for k in missing if not k.startswith("aux.")]
    unexpected = [k for k in unexpected if not k.startswith(("aux.", "mask_emb", "label_embs", "final_proj"))]
    if missing or unexpected:
        raise UpstreamLoadError(
            f"checkpoint {path} does not fit the chosen builder: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (pick the builder of the same size, e.g. torchaudio:hubert_large)"
        )


def build_torchaudio_upstream(
    source: str,
    checkpoint: str | os.PathLike | None = None,
    normalize: bool | None = None,
    attention_mask: bool | None = None,
) -> TorchaudioUpstream:
    """`source` is a bundle (`HUBERT_BASE`), a builder (`hubert_base`, optionally with `checkpoint`) or a
    transformers directory / hub id imported with torchaudio's converter."""
    if source in BUILDERS:
        model = getattr(torchaudio.models, source)()
        if checkpoint is not None:
            load_state_dict_file(model, checkpoint)
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
