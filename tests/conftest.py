"""Tiny models saved by the tests themselves: the same loading path as a downloaded checkpoint, offline."""

from pathlib import Path

import pytest
import torch
from egs_scripts import load_script
from transformers import Wav2Vec2FeatureExtractor

from upstream.hf import tiny_model

# model_type -> config overrides; wav2vec2 keeps the group-norm CNN of the base checkpoints (no padding mask).
TINY_DIRS = {
    "hubert": {},
    "wav2vec2": {"feat_extract_norm": "group", "do_stable_layer_norm": False},
    "wavlm": {},
    "data2vec-audio": {},
}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """model_type -> a directory written by save_pretrained, with a preprocessor config as on the hub."""
    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for model_type, overrides in TINY_DIRS.items():
        model = tiny_model(model_type, seed=1, **overrides)
        path = root / model_type
        model.save_pretrained(path)
        layer_norm_cnn = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=layer_norm_cnn).save_pretrained(path)
        dirs[model_type] = str(path)
    return dirs


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances of odd lengths, zero-padded: [2, S] waveforms and their lengths."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([12345, 8001])
    wavs = torch.randn(2, 12345, generator=generator) * 0.1
    wavs[1, 8001:] = 0
    return wavs, lengths


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    """The egs/mini corpus (espeak-ng speech), generated once per test session: the folder with its manifests."""
    out = tmp_path_factory.mktemp("mini") / "data"
    load_script("make_corpus").main(
        ["--out", str(out), "--seed", "0", "--num-speakers", "48", "--utterances-per-speaker", "8"]
    )
    return out
