"""Every private API and version-dependent behaviour of our dependencies that strata relies on, in one place.

Each function here wraps one such use and has a test in tests/test_compat.py that pins the behaviour, so an
upgrade that changes it fails in one named test instead of deep inside a run. It lives in `upstream` because that
is the lowest package: every other package may import it, and it imports none of Lightning (the trainer helper only
reads attributes of the object it is given).
"""

from __future__ import annotations

from typing import Any

import torch


# transformers ------------------------------------------------------------------------------------------------------
def feat_extract_output_lengths(model: torch.nn.Module, wav_lengths: torch.Tensor) -> torch.Tensor:
    """Frames the CNN front-end of a transformers speech model makes from `wav_lengths [B]` samples.

    transformers' own rule (`_get_feat_extract_output_lengths`, with the adapter if the config has one), so our
    lengths match the frames the model computes.
    """
    return model._get_feat_extract_output_lengths(wav_lengths).long()


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention kernel a transformers model runs: "sdpa" (torch's scaled_dot_product_attention, transformers'
    default for the families that support it) or "eager"; kept on the config's private `_attn_implementation`."""
    return str(model.config._attn_implementation)


def set_feature_encoder_grad(cnn: torch.nn.Module, requires_grad: bool) -> None:
    """Tell a transformers CNN front-end whether its output needs a gradient.

    transformers marks the CNN's output `requires_grad` whenever its private `_requires_grad` flag is set (in train
    mode), which would build a graph through a frozen CNN and every frozen layer above it.
    """
    cnn._requires_grad = requires_grad


def is_pre_layer_norm_encoder(encoder: torch.nn.Module) -> bool:
    """Whether a transformers wav2vec 2.0-family encoder normalises after its last layer ("stable layer norm").

    transformers has no flag on the encoder for it; the pre-LN variants are separate classes named
    `*EncoderStableLayerNorm`.
    """
    return "StableLayerNorm" in type(encoder).__name__


def positional_conv_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The stacked positional convolutions of data2vec-audio (`pos_conv_embed.layers`); [] for the one-conv families."""
    return list(getattr(model.encoder.pos_conv_embed, "layers", []))


def conformer_depthwise_convs(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The depthwise time convolution of every wav2vec 2.0-conformer layer (`conv_module.depthwise_conv`), whose
    input transformers does not zero on padded frames; [] for the other families."""
    layers = getattr(model.encoder, "layers", [])
    return [layer.conv_module.depthwise_conv for layer in layers if hasattr(layer, "conv_module")]


def encoder_output_states(output: Any) -> list[torch.Tensor]:
    """All hidden states of a transformers encoder call, the last one being the encoder's output.

    transformers 5 puts the value before a pre-LN encoder's final layer norm in `hidden_states[-1]` (transformers 4,
    fairseq and S3PRL report the normalised one); `last_hidden_state` is the normalised output in both.
    """
    return [*output.hidden_states[:-1], output.last_hidden_state]


def load_whisper_encoder(source: str, local_files_only: bool = False) -> torch.nn.Module:
    """The `WhisperEncoder` of a Whisper checkpoint (hub id or directory), without loading its decoder.

    Checkpoints are saved from `WhisperForConditionalGeneration` (`model.encoder.*` keys, the hub's) or
    `WhisperModel` (`encoder.*`); `key_mapping` (a from_pretrained argument of transformers >= 4.51) renames either
    to the encoder's own keys, and transformers skips the decoder's as unexpected (its load report, silenced here).
    `WhisperEncoder` is not in transformers' exports (`__all__`), hence here.
    """
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder, info = WhisperEncoder.from_pretrained(
            source,
            key_mapping={r"^(model\.)?encoder\.": ""},
            dtype=torch.float32,
            local_files_only=local_files_only,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise ValueError(f"{source} has no Whisper encoder weights for {sorted(info['missing_keys'])[:5]} ...")
    return encoder


# torchaudio --------------------------------------------------------------------------------------------------------
def torchaudio_encoder_input(
    encoder: torch.nn.Module, features: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torchaudio `Encoder._preprocess`: feature projection, padded frames zeroed, additive attention mask."""
    return encoder._preprocess(features, lengths)


def torchaudio_transformer_input(transformer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchaudio `Transformer._preprocess`: positional convolution added, the layer norm of post-LN encoders."""
    return transformer._preprocess(x)


def convert_fairseq_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fairseq wav2vec 2.0 / HuBERT checkpoint's `model` entry with its keys renamed to torchaudio's."""
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    return _convert_state_dict(state)


def bundle_weights_file(bundle: Any) -> str:
    """The file name a torchaudio `Wav2Vec2Bundle` downloads its weights to (under torch.hub's checkpoints)."""
    return bundle._path


def bundle_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The `Wav2Vec2Model` inside what `Wav2Vec2Bundle.get_model()` returns.

    Normalising bundles wrap it in torchaudio's private `_Wav2Vec2Model` (a whole-batch layer norm first), which keeps
    the encoder as `.model`.
    """
    from torchaudio.models import Wav2Vec2Model

    return model if isinstance(model, Wav2Vec2Model) else model.model


def bundle_normalizes_waveform(bundle: Any) -> bool:
    """Whether a torchaudio bundle's model was trained on normalised waveforms (its layer-norm wrapper)."""
    return bool(bundle._normalize_waveform)


# Lightning ---------------------------------------------------------------------------------------------------------
def batches_processed_in_epoch(trainer: Any) -> int:
    """Training batches of the current epoch the trainer has run (their step done), from the fit loop's progress
    counters, which Lightning keeps on its private loop objects."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def trainer_uses_distributed_sampler(trainer: Any) -> bool:
    """`Trainer(use_distributed_sampler=...)`, which the trainer keeps only on its private accelerator connector."""
    return bool(trainer._accelerator_connector.use_distributed_sampler)
