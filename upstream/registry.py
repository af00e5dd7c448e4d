"""Names -> builders: presets (`hubert_base`, `whisper_small`, `fbank`, ...), source prefixes (`hf:`, `torchaudio:`),
`package.module:factory` for a model of one's own, and presets that installed packages add through the
`strata.upstreams` entry-point group."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from importlib import metadata
from pathlib import Path

from torch import nn

from .base import Upstream, UpstreamLoadError

# The modules that add transformers model types to `hf.MODEL_TYPES` when imported: `hf:` dispatches over them all.
MODEL_TYPE_MODULES = ("hf", "whisper", "w2v_bert")


def _deferred(module: str, name: str, model_types: bool = False) -> Callable[..., Upstream]:
    """The builder `upstream.<module>.<name>`, imported when first called (with every `MODEL_TYPE_MODULES` first if
    `model_types`): the backends import transformers and torchaudio (2 s), which listing presets, checking a config
    or a fit from a feature cache never need."""

    def build(*args, **options) -> Upstream:
        for registering in MODEL_TYPE_MODULES if model_types else ():
            importlib.import_module(f"{__package__}.{registering}")
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args, **options)

    build.__name__ = build.__qualname__ = name
    return build


build_hf_upstream = _deferred("hf", "build_hf_upstream", model_types=True)
build_tiny_upstream = _deferred("hf", "build_tiny_upstream")
build_tera_upstream = _deferred("tera", "build_tera_upstream")
build_torchaudio_upstream = _deferred("torchaudio_backend", "build_torchaudio_upstream")
build_fairseq_upstream = _deferred("torchaudio_backend", "build_fairseq_upstream")
build_tiny_w2v_bert = _deferred("w2v_bert", "build_tiny_w2v_bert")
build_tiny_whisper = _deferred("whisper", "build_tiny_whisper")
Fbank, Mfcc, LogMel = (_deferred("surface", name) for name in ("Fbank", "Mfcc", "LogMel"))


@dataclass(frozen=True)
class Preset:
    """A named upstream and what it is, known without loading it (for listings and plans)."""

    build: Callable[..., Upstream]
    source: str
    num_layers: int  # hidden states returned: transformer layers + 1
    hidden_size: int
    frame_rate: float  # frames per second
    # What `strata upstreams` groups by; when empty, register_preset derives it from the name (see `preset_family`).
    family: str = ""


PRESETS: dict[str, Preset] = {}

# `<prefix>:<rest>` sources; each builder takes the rest and keyword options.
SOURCES: dict[str, Callable[..., Upstream]] = {
    "hf": build_hf_upstream,
    "torchaudio": build_torchaudio_upstream,
    "fairseq": build_fairseq_upstream,
    "tera": build_tera_upstream,
}


# Checked in order against the preset's name, then its source; otherwise the name's first word is the family.
FAMILY_KEYWORDS = ("wavlm", "hubert", "data2vec", "wav2vec2", "w2v_bert", "whisper")


def preset_family(name: str, preset: Preset) -> str:
    """`preset.family` if set, else a known family named in the preset's name or source (`hubert_large`,
    `tiny_hubert` -> hubert), else the name's first word (`whisper_base` -> whisper)."""
    if preset.family:
        return preset.family
    for text in (name, preset.source):
        text = text.lower().replace("-", "_")
        for keyword in FAMILY_KEYWORDS:
            if keyword in text:
                return keyword
    return name.removeprefix("tiny_").split("_")[0]


def register_preset(name: str, preset: Preset) -> None:
    if name in PRESETS:
        raise ValueError(f"upstream preset {name!r} is registered twice")
    PRESETS[name] = replace(preset, family=preset_family(name, preset))


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
    # Feature-input encoders (hf: dispatches on the model_type): Whisper's encoder only, 30 s windows (whisper.py);
    # large-v3 reads 128 mel bins, the others 80.
    ("whisper_tiny", "openai/whisper-tiny", 4, 384),
    ("whisper_base", "openai/whisper-base", 6, 512),
    ("whisper_small", "openai/whisper-small", 12, 768),
    ("whisper_medium", "openai/whisper-medium", 24, 1024),
    ("whisper_large_v3", "openai/whisper-large-v3", 32, 1280),
    ("w2v_bert_2", "facebook/w2v-bert-2.0", 24, 1024),
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

register_preset("tiny_whisper", Preset(build_tiny_whisper, "random init (whisper encoder, 4x64)", 5, 64, 50.0))
register_preset("tiny_w2v_bert", Preset(build_tiny_w2v_bert, "random init (wav2vec2-bert, 4x64)", 5, 64, 50.0))
register_preset("fbank", Preset(Fbank, "80 Kaldi fbank, 25 ms / 10 ms", 1, 80, 100.0, family="surface"))
register_preset("mfcc", Preset(Mfcc, "13 Kaldi MFCC + deltas, 25 ms / 10 ms", 1, 39, 100.0, family="surface"))
register_preset("logmel", Preset(LogMel, "80 log-mel, Hann 25 ms / 10 ms", 1, 80, 100.0, family="surface"))


# Presets of installed packages ---------------------------------------------------------------------------------------
ENTRY_POINT_GROUP = "strata.upstreams"
# Entry points that could not be added: name -> why (shown by `strata upstreams`, raised by build_upstream).
ENTRY_POINT_ERRORS: dict[str, str] = {}
_entry_points_loaded = False


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_entry_points() -> dict[str, str]:
    """Add the presets of the `strata.upstreams` entry points, once; returns the ones that failed (name -> why).

    Each entry point is named after its preset and points to a `Preset` or to a factory (called with
    build_upstream's options; its sizes are listed as `?` until built). A broken one is recorded, never raised, so
    one bad package cannot hide the others.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return ENTRY_POINT_ERRORS
    _entry_points_loaded = True
    for point in _entry_points():
        package = getattr(point.dist, "name", None)
        where = f"entry point {point.name!r} = {point.value!r}" + (f" of package {package}" if package else "")
        if point.name in PRESETS:
            ENTRY_POINT_ERRORS[point.name] = f"{where} is not added: a preset of that name exists"
            continue
        try:
            target = point.load()
        except Exception as error:  # noqa: BLE001 - whatever a third-party import raises, report it and go on
            ENTRY_POINT_ERRORS[point.name] = f"{where} could not be loaded: {_one_line(error)}"
            continue
        if isinstance(target, Preset):
            preset = target
        elif callable(target):
            preset = Preset(target, point.value, 0, 0, 0.0)  # sizes unknown until built
        else:
            ENTRY_POINT_ERRORS[point.name] = f"{where} is a {type(target).__name__}, not a Preset or a factory"
            continue
        register_preset(point.name, preset)
    return ENTRY_POINT_ERRORS


def presets() -> dict[str, Preset]:
    """Every preset, those of installed packages' entry points included."""
    load_entry_points()
    return PRESETS


def list_upstreams() -> list[str]:
    return sorted(presets())


# package.module:factory ---------------------------------------------------------------------------------------------
_IDENTIFIERS = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
FACTORY_SOURCE = re.compile(rf"({_IDENTIFIERS}):({_IDENTIFIERS})")


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def imports_code(name: str) -> bool:
    """Whether building the upstream `name` imports a module the name itself chooses (`package.module:factory`
    that is no preset): what a model from someone else must not do unasked (see recipes.inference)."""
    prefix, sep, _ = name.partition(":")
    if sep and prefix in SOURCES:
        return False
    return name not in presets() and FACTORY_SOURCE.fullmatch(name) is not None


def build_from_factory(source: str, **options) -> Upstream:
    """Import `package.module` and call its `factory(**options)` (an attribute path: `module:Class.create` works)."""
    module_name, _, attribute = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a user's module may raise anything on import
        raise UpstreamLoadError(
            f"upstream {source}: cannot import module {module_name} ({_one_line(error)}); install its package or "
            "put its folder on PYTHONPATH"
        ) from None
    target = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UpstreamLoadError(
                f"upstream {source}: module {module_name} ({getattr(module, '__file__', None) or 'no file'}) has no "
                f"attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ValueError(f"upstream {source}: {attribute} is a {type(target).__name__}, not a factory to call")
    return target(**options)


def _checked(name: str, built: object) -> Upstream:
    if isinstance(built, Upstream):
        return built
    if isinstance(built, nn.Module):
        raise ValueError(
            f"upstream {name} returned a {type(built).__name__}, an nn.Module but not an upstream.Upstream: wrap a "
            "module that returns per-layer states in upstream.custom.LayerwiseAdapter(module, sample_rate, ...)"
        )
    raise ValueError(f"upstream {name} returned a {type(built).__name__}, not an upstream.Upstream")


def build_upstream(name: str, trainable: str = "frozen", train_cnn: bool = False, **options) -> Upstream:
    """Build an upstream from a preset name, `hf:<hub id or dir>`, `torchaudio:<bundle, builder or dir>`,
    `fairseq:<checkpoint.pt>`, `tera:<folder>` (a TERA that `strata pretrain` wrote), `package.module:factory` (your
    own model: the factory returns an `Upstream`) or a local transformers directory. A source prefix in `SOURCES`
    wins over a module of the same name.

    `trainable`: 'frozen' (no gradients, eval mode), 'all' or 'top:K'; the CNN is trained only with
    `train_cnn=True`. `options` go to the builder (e.g. `checkpoint=` for a torchaudio builder,
    `local_files_only=True` for a hub id).
    """
    prefix, sep, rest = name.partition(":")
    if name not in PRESETS and not (sep and prefix in SOURCES):
        load_entry_points()
    if name in PRESETS:
        builder = PRESETS[name].build
    elif name in ENTRY_POINT_ERRORS:
        raise UpstreamLoadError(f"upstream {name}: {ENTRY_POINT_ERRORS[name]}")
    elif sep and prefix in SOURCES:
        builder = partial(SOURCES[prefix], rest)
    elif FACTORY_SOURCE.fullmatch(name):
        builder = partial(build_from_factory, name)
    elif Path(name).is_dir():
        builder = partial(build_hf_upstream, name)
    else:
        raise ValueError(
            f"unknown upstream {name!r}: use a preset ({', '.join(list_upstreams())}), hf:<hub id or directory>, "
            "torchaudio:<bundle or builder>, fairseq:<checkpoint.pt>, tera:<folder>, package.module:factory, or a "
            "local transformers directory"
        )
    upstream = _checked(name, builder(**options))
    # Built in eval mode, as from_pretrained does; a trainer's .train() switches the trainable part on.
    return upstream.set_trainable(trainable, train_cnn=train_cnn).eval()
