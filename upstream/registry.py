"""Names -> builders: presets (`hubert_base`, `tiny_wavlm`, `fbank`, ...) and source prefixes (`hf:`, `torchaudio:`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .base import Upstream
from .hf import build_hf_upstream, build_tiny_upstream
from .surface import Fbank, LogMel, Mfcc
from .torchaudio_backend import build_torchaudio_upstream


@dataclass(frozen=True)
class Preset:
    """A named upstream and what it is, known without loading it (for listings and plans)."""

    build: Callable[..., Upstream]
    source: str
    num_layers: int  # hidden states returned: transformer layers + 1
    hidden_size: int
    frame_rate: float  # frames per second


PRESETS: dict[str, Preset] = {}

# `<prefix>:<rest>` sources; each builder takes the rest and keyword options.
SOURCES: dict[str, Callable[..., Upstream]] = {
    "hf": build_hf_upstream,
    "torchaudio": build_torchaudio_upstream,
}


def register_preset(name: str, preset: Preset) -> None:
    if name in PRESETS:
        raise ValueError(f"upstream preset {name!r} is registered twice")
    PRESETS[name] = preset


def _hub(hub_id: str, layers: int, hidden: int) -> Preset:
    return Preset(partial(build_hf_upstream, hub_id), f"hf:{hub_id}", layers + 1, hidden, 50.0)


for _name, _hub_id, _layers, _hidden in [
    ("hubert_base", "facebook/hubert-base-ls960", 12, 768),
    ("hubert_large", "facebook/hubert-large-ll60k", 24, 1024),
    ("wav2vec2_base", "facebook/wav2vec2-base", 12, 768),
    ("wav2vec2_large", "facebook/wav2vec2-large-lv60", 24, 1024),
    ("wavlm_base", "microsoft/wavlm-base", 12, 768),
    ("wavlm_base_plus", "microsoft/wavlm-base-plus", 12, 768),
    ("wavlm_large", "microsoft/wavlm-large", 24, 1024),
    ("data2vec_audio_base", "facebook/data2vec-audio-base", 12, 768),
    # S3PRL's names for the same checkpoints, and the rest of what SUPERB-style comparisons run.
    ("hubert_large_ll60k", "facebook/hubert-large-ll60k", 24, 1024),
    ("wav2vec2_large_lv60", "facebook/wav2vec2-large-lv60", 24, 1024),
    ("xls_r_300m", "facebook/wav2vec2-xls-r-300m", 24, 1024),
    ("xls_r_1b", "facebook/wav2vec2-xls-r-1b", 48, 1280),
    ("xls_r_2b", "facebook/wav2vec2-xls-r-2b", 48, 1920),
    ("mms_300m", "facebook/mms-300m", 24, 1024),
    ("mms_1b", "facebook/mms-1b", 48, 1280),
    ("data2vec_audio_large", "facebook/data2vec-audio-large", 24, 1024),
    ("distilhubert", "ntu-spml/distilhubert", 2, 768),
    ("unispeech_large_1500h_cv", "microsoft/unispeech-large-1500h-cv", 24, 1024),
    ("unispeech_sat_base", "microsoft/unispeech-sat-base", 12, 768),
    ("unispeech_sat_base_plus", "microsoft/unispeech-sat-base-plus", 12, 768),
    ("unispeech_sat_large", "microsoft/unispeech-sat-large", 24, 1024),
    ("wav2vec2_conformer_relpos", "facebook/wav2vec2-conformer-rel-pos-large", 24, 1024),
    ("wav2vec2_conformer_rope", "facebook/wav2vec2-conformer-rope-large", 24, 1024),
]:
    register_preset(_name, _hub(_hub_id, _layers, _hidden))

for _name, _model_type, _frame_rate in [
    ("tiny_hubert", "hubert", 50.0),
    ("tiny_wav2vec2", "wav2vec2", 50.0),
    ("tiny_wavlm", "wavlm", 50.0),
    ("tiny_unispeech", "unispeech", 50.0),
    ("tiny_unispeech_sat", "unispeech-sat", 50.0),
    ("tiny_wav2vec2_conformer", "wav2vec2-conformer", 50.0),
    ("tiny_sew", "sew", 25.0),  # layers on pairs of CNN frames (squeeze_factor 2)
    ("tiny_sew_d", "sew-d", 25.0),
]:
    register_preset(
        _name,
        Preset(partial(build_tiny_upstream, _model_type), f"random init ({_model_type}, 4x64)", 5, 64, _frame_rate),
    )

register_preset("fbank", Preset(Fbank, "80 Kaldi fbank, 25 ms / 10 ms", 1, 80, 100.0))
register_preset("mfcc", Preset(Mfcc, "13 Kaldi MFCC + deltas, 25 ms / 10 ms", 1, 39, 100.0))
register_preset("logmel", Preset(LogMel, "80 log-mel, Hann 25 ms / 10 ms", 1, 80, 100.0))


def list_upstreams() -> list[str]:
    return sorted(PRESETS)


def build_upstream(name: str, trainable: str = "frozen", train_cnn: bool = False, **options) -> Upstream:
    """Build an upstream from a preset name, `hf:<hub id or dir>`, `torchaudio:<bundle, builder or dir>` or a
    local transformers directory.

    `trainable`: 'frozen' (no gradients, eval mode), 'all' or 'top:K'; the CNN is trained only with
    `train_cnn=True`. `options` go to the builder (e.g. `checkpoint=` for a torchaudio builder,
    `local_files_only=True` for a hub id).
    """
    prefix, sep, rest = name.partition(":")
    if name in PRESETS:
        builder = PRESETS[name].build
    elif sep and prefix in SOURCES:
        builder = partial(SOURCES[prefix], rest)
    elif Path(name).is_dir():
        builder = partial(build_hf_upstream, name)
    else:
        raise ValueError(
            f"unknown upstream {name!r}: use a preset ({', '.join(list_upstreams())}), hf:<hub id or directory>, "
            "torchaudio:<bundle or builder>, or a local transformers directory"
        )
    # Built in eval mode, as from_pretrained does; a trainer's .train() switches the trainable part on.
    return builder(**options).set_trainable(trainable, train_cnn=train_cnn).eval()
