"""A training loss that is NaN or infinite stops the run, naming the batch, before the optimiser step poisons the
weights; or, when asked, the batch is skipped and listed. Shared by every LightningModule of strata.

The check runs before `backward`, so the weights and the checkpoints on disk are still those of the last good step.
Under several processes the decision is taken together (any process's bad loss stops or skips the step on all), so
no process waits forever in a gradient all-reduce the others never join.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

SKIPPED = "nonfinite_batches.jsonl"


class NonFiniteLossError(ValueError):
    """A training loss that is not a finite number; the message names the step, the batch's ids and what to do."""


def latest_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file the trainer's checkpoint callbacks have written, if any."""
    paths = [path for callback in trainer.checkpoint_callbacks for path in (callback.last_model_path,
                                                                            callback.best_model_path)]  # fmt: skip
    written = [path for path in paths if path and Path(path).is_file()]
    return max(written, key=lambda path: Path(path).stat().st_mtime) if written else None


def checked_loss(
    module: L.LightningModule, loss: torch.Tensor, ids: Sequence[str], skip: bool, option: str
) -> torch.Tensor | None:
    """`loss`, or None (Lightning then skips the step) when it is not finite and `skip`; otherwise an error.
    `option` is how the user turns skipping on (e.g. `--model.skip_nonfinite_loss true`)."""
    bad = not bool(torch.isfinite(loss.detach()).all())
    trainer = module.trainer
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return loss
    where = f"step {module.global_step} (epoch {module.current_epoch})"
    run = Path(trainer.default_root_dir)
    if not skip:
        last = latest_checkpoint(trainer) or "none written yet"
        raise NonFiniteLossError(
            f"training loss {float(loss.detach().float().flatten()[0])} at {where} on the batch of ids "
            f"{', '.join(map(str, ids))}; the weights were not updated and the last checkpoint ({last}) is from "
            f"before it. Find what is wrong with those utterances (or lower the learning rate) and resume with "
            f"--ckpt_path last, or pass {option} to skip such batches (listed in {run / SKIPPED})"
        )
    record = {"step": module.global_step, "epoch": module.current_epoch, "rank": trainer.global_rank,
              "loss": str(float(loss.detach().float().flatten()[0])), "ids": list(map(str, ids))}  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    with open(run / SKIPPED, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    module.print(f"skipped the batch at {where}: non-finite loss; ids in {run / SKIPPED}")
    return None
