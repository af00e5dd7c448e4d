"""The learned weighted-sum layer weights of trained runs (SUPERB's view of which layers a task uses)."""

from __future__ import annotations

from pathlib import Path

import torch


def checkpoint_of(run: str | Path) -> Path:
    """A run folder's best checkpoint (else its last), or the checkpoint file given."""
    run = Path(run)
    if run.is_file():
        return run
    for name in ("best.ckpt", "last.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise FileNotFoundError(f"no checkpoints/best.ckpt or last.ckpt in {run}: is it a `strata fit` run folder?")


def layer_weights(run: str | Path) -> tuple[list[float], dict]:
    """`(weights [L+1] summing to one, hyper-parameters)` of a trained run with the weighted-sum interface."""
    path = checkpoint_of(run)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    logits = checkpoint.get("state_dict", {}).get("interface.weight_logits")
    if logits is None:
        interface = (hparams.get("interface") or {}).get("name", "?")
        raise ValueError(f"{path} was trained with the {interface!r} interface; only weighted_sum learns layer weights")
    return torch.softmax(logits.float(), dim=0).tolist(), hparams
