"""Resuming a run killed inside an epoch where it stopped, not at the epoch's start.

Three pieces, which every strata LightningCLI fit uses (`RunFolderCLI`):
- `step_checkpoint`: `last.ckpt` every N training steps as well as at each epoch's end, so a kill inside a long epoch
  loses at most N steps;
- `ResumableLoader`: the training DataLoader as Lightning's stateful loaders are (`state_dict` / `load_state_dict`):
  its state is the epoch and the batches the trainer has finished in it, and restored, its `BucketBatchSampler`
  skips those batches, so the resumed epoch goes on with the batches it had not seen, in the same order;
- `RandomState`: the torch, numpy and Python random states saved in each checkpoint and restored when training
  resumes, so dropout and other draws continue as in a run that was never killed.

With all three, a fit killed mid-epoch and resumed with `--ckpt_path last` ends with the weights, and the results, of
an uninterrupted fit with the same seed on the CPU. Draws made while loading data (random crops) are the exception:
the batch prefetched before the kill is drawn again, so crops after a resume differ from the uninterrupted run's
(the same distribution, other windows).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from upstream import compat

from .data import BucketBatchSampler

DEFAULT_EVERY_N_STEPS = 500


class ResumableLoader(DataLoader):
    """A DataLoader over a `BucketBatchSampler` that Lightning checkpoints and restores mid-epoch. `processed` says
    how many batches of the current epoch the trainer has finished (read when a checkpoint is written)."""

    def __init__(self, *args: Any, processed: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, BucketBatchSampler):
            raise TypeError(f"ResumableLoader needs a BucketBatchSampler, not {type(self.batch_sampler).__name__}")
        self.processed = processed

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "processed": int(self.processed())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume(int(state["epoch"]), int(state["processed"]))


def training_loader(module: L.LightningDataModule, *args: Any, **kwargs: Any) -> DataLoader:
    """The training DataLoader of a data module run by a trainer: resumable mid-epoch."""
    trainer = module.trainer
    if trainer is None:
        return DataLoader(*args, **kwargs)
    return ResumableLoader(*args, processed=lambda: compat.batches_processed_in_epoch(trainer), **kwargs)


class RandomState(L.Callback):
    """The random generators' states in every checkpoint, restored when a fit resumes (at the start of training,
    after everything that draws while building the run)."""

    def __init__(self) -> None:
        self.restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                "position": int(numpy_state[2]),
                "has_gauss": int(numpy_state[3]),
                "gauss": float(numpy_state[4]),
            },  # fmt: skip
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        state, self.restored = self.restored, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                             numpy_state["has_gauss"], numpy_state["gauss"]))  # fmt: skip
        random.setstate(_as_tuples(state["python"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """`random.setstate` wants the nested tuples `getstate` gave; a checkpoint may hand back lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, list | tuple) else value


def step_checkpoint(dirpath: Any, every_n_steps: int) -> ModelCheckpoint:
    """`last.ckpt` every `every_n_steps` training steps (the epoch-end callbacks still write it at each epoch's
    end: the newest state is always there)."""
    return ModelCheckpoint(dirpath=dirpath, filename="last", every_n_train_steps=every_n_steps,
                           enable_version_counter=False, save_on_train_epoch_end=False)  # fmt: skip
