"""Random-initialised HuBERTs of the published sizes, saved once and loaded as `hf:<dir>` like any checkpoint: the
benchmarks' stand-ins for hubert_base / hubert_large (same shapes and compute; this machine cannot download weights).

`random_upstream(name, workdir)` maps `base_random` and `large_random` to such a folder under `workdir`; any other
name is returned as it is (a strata upstream).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel

BASE, LARGE = "base_random", "large_random"
CONFIGS = {
    BASE: {},  # transformers' defaults: hubert_base's 12 x 768, group-norm CNN, no attention mask
    LARGE: {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },  # hubert_large's shape  # fmt: skip
}
LABELS = {BASE: "base-sized random HuBERT (12 x 768)", LARGE: "large-sized random HuBERT (24 x 1024)"}


def random_upstream(name: str, workdir: Path) -> str:
    """The strata upstream name for `name`: `hf:<workdir>/<name>` for the random sizes (saved on first use)."""
    if name not in CONFIGS:
        return name
    folder = Path(workdir) / name
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        HubertModel(HubertConfig(**CONFIGS[name])).save_pretrained(folder)
    return f"hf:{folder}"
