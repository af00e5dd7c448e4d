"""A frozen module left out of a checkpoint: its weights are rebuilt from its source on load, so the checkpoint
keeps only the module's name and fingerprint (a base model's 361 MiB in every checkpoint otherwise), and loading puts
the rebuilt weights back once the fingerprint shows they are the ones the run used. The task module's frozen
upstream and the distillation teacher are both kept this way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def leave_out(checkpoint: dict[str, Any], prefix: str, key: str, name: str, fingerprint: str) -> None:
    """Drop the `prefix.*` weights from `checkpoint`'s state dict and record `name` and `fingerprint` under `key`."""
    state = checkpoint["state_dict"]
    for weight in [weight for weight in state if weight.startswith(f"{prefix}.")]:
        del state[weight]
    checkpoint[key] = {"name": name, "fingerprint": fingerprint}


def put_back(
    checkpoint: dict[str, Any], prefix: str, key: str, module: nn.Module, fingerprint: Callable[[], str],
    mismatch: Callable[[dict[str, str], str], str],
) -> None:  # fmt: skip
    """Restore `module`'s weights as `prefix.*` in a checkpoint `leave_out` wrote (others are left as they are);
    a ValueError with `mismatch(saved, current)` when the module's `fingerprint()` (asked only when needed: it reads
    every weight) is not the saved one."""
    saved = checkpoint.get(key)
    if saved is None:  # the weights are in the checkpoint
        return
    current = fingerprint()
    if saved["fingerprint"] != current:
        raise ValueError(mismatch(saved, current))
    checkpoint["state_dict"].update({f"{prefix}.{name}": value for name, value in module.state_dict().items()})
