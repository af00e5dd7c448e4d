"""Checkpoint averaging: the parameter mean of a run's K best validation checkpoints, as Morais et al. (ICASSP 2022)
average their 5 best. `strata fit --average_best K` keeps them in `<run>/checkpoints/top/`; `--ckpt_path averaged`
(and `strata export RUN --ckpt averaged`) uses `<run>/checkpoints/averaged.ckpt`, computed here once.

What is averaged: every floating-point tensor of `state_dict`, BatchNorm's running mean and variance included.
Integer buffers (BatchNorm's `num_batches_tracked`) and everything outside `state_dict` (hyper-parameters, callback
and loop states, `strata_frozen_upstream`) are the best checkpoint's. A frozen upstream is not in `state_dict`
(recipes.module leaves it out), so it is not averaged: it is the same model in every checkpoint.

Plain torch: no Lightning import, so `strata export` and tests use it as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

TOP_DIR = "top"  # <run>/checkpoints/top/: the K best
AVERAGED_NAME = "averaged.ckpt"  # <run>/checkpoints/averaged.ckpt
AVERAGED_KEY = "strata_averaged"  # in averaged.ckpt: which files it averaged, to know when it is stale
# recipes.lightning_cli.TopCheckpoints: the prefix of its state key in a checkpoint's `callbacks`, whose state holds
# the checkpoint's own validation score (`current_score`) and the `mode` that ranks it.
TOP_CALLBACK = "TopCheckpoints"


def _load(path: Path, mmap: bool = False) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 -- truncated, not a torch file, unsafe pickle: one message for all
        raise ValueError(f"could not read the checkpoint {path}: {' '.join(str(error).split())[:300]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return type(value).__name__


def _check_compatible(best: dict[str, Any], other: dict[str, Any], best_path: Path, path: Path) -> None:
    """Same keys, and the same kind, dtype and shape under each: else the checkpoints are not one model's."""
    missing, extra = sorted(best.keys() - other.keys()), sorted(other.keys() - best.keys())
    if missing or extra:
        raise ValueError(
            f"cannot average {path} with {best_path}: their state_dict keys differ (missing {missing[:3]}, "
            f"extra {extra[:3]}{', ...' if len(missing) > 3 or len(extra) > 3 else ''}); are they from one run?"
        )
    for key, value in best.items():
        if _describe(value) != _describe(other[key]):
            raise ValueError(
                f"cannot average {path} with {best_path}: {key} is {_describe(other[key])} there, "
                f"{_describe(value)} in the best"
            )


def _averaged(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def average_checkpoints(paths: Sequence[Path], out: Path) -> Path:
    """Write the average of the checkpoints `paths` (the best first) to `out`: the best's dict with each floating-point
    tensor of `state_dict` replaced by the mean over all, and `AVERAGED_KEY` naming the files. The sums are float64
    (exact for a few float32 values), rounded once to each tensor's dtype. Written under a temporary name, then
    renamed: `out` is never half a file, also when several processes write it at once."""
    if not paths:
        raise ValueError("no checkpoints to average")
    paths = [Path(path) for path in paths]
    best = _load(paths[0])
    state = best["state_dict"]
    sums = {key: value.double() for key, value in state.items() if _averaged(value)}
    for path in paths[1:]:  # one at a time: memory for the best, the sums and one more
        other = _load(path)["state_dict"]
        _check_compatible(state, other, paths[0], path)
        for key, total in sums.items():
            total += other[key].double()
    for key, total in sums.items():
        state[key] = (total / len(paths)).to(state[key].dtype)
    best[AVERAGED_KEY] = {"files": [path.name for path in paths], "best": paths[0].name}
    with atomic_path(out) as partial:
        torch.save(best, partial)
    return out


def checkpoint_score(path: Path) -> tuple[float, str]:
    """The validation score a top checkpoint was saved with and its mode (`max` or `min`), from the state that
    `TopCheckpoints` keeps in it."""
    for key, state in (_load(path, mmap=True).get("callbacks") or {}).items():
        if key.startswith(TOP_CALLBACK) and isinstance(state, dict) and state.get("current_score") is not None:
            return float(state["current_score"]), str(state.get("mode", "max"))
    raise ValueError(f"{path} records no validation score: it was not written by `strata fit --average_best K`")


def top_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The run's K best checkpoints (`<checkpoints_dir>/top/*.ckpt`), best first; on a tie the earlier file (name
    order: the epoch), as Lightning's best checkpoint keeps the first to reach a score."""
    top = Path(checkpoints_dir) / TOP_DIR
    paths = sorted(top.glob("*.ckpt")) if top.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"no checkpoints to average in {top}: run `strata fit` with `--average_best K` (e.g. 5) first"
        )
    scored = [(checkpoint_score(path), path) for path in paths]
    modes = {mode for (_, mode), _ in scored}
    if len(modes) != 1:
        raise ValueError(f"the checkpoints in {top} rank their scores by different modes {sorted(modes)}")
    ranked = sorted(scored, key=lambda item: item[0][0], reverse=modes.pop() == "max")  # stable on ties
    return [path for _, path in ranked]


def _up_to_date(out: Path, paths: Sequence[Path]) -> bool:
    """`out` averaged exactly `paths` (by name, best first) and none of them changed since."""
    if not out.is_file() or out.stat().st_mtime < max(path.stat().st_mtime for path in paths):
        return False
    record = _load(out, mmap=True).get(AVERAGED_KEY) or {}
    return record.get("files") == [path.name for path in paths]


def averaged_checkpoint(checkpoints_dir: Path) -> Path:
    """`<checkpoints_dir>/averaged.ckpt`, the average of `top/`'s checkpoints: computed when missing, recomputed when
    `top/` holds other files than it averaged or newer ones."""
    checkpoints_dir = Path(checkpoints_dir)
    paths = top_checkpoints(checkpoints_dir)
    out = checkpoints_dir / AVERAGED_NAME
    if _up_to_date(out, paths):
        print(f"using {out}, the average of {len(paths)} checkpoints in {out.parent / TOP_DIR}")
        return out
    average_checkpoints(paths, out)
    print(f"averaged {len(paths)} checkpoints of {out.parent / TOP_DIR} (best {paths[0].name}) into {out}")
    return out
