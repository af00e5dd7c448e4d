"""Callbacks the tests pass by class path: the DDP test's record of the training ids each rank saw, and the resume
test's kill at a training step."""

import json
import os
import signal
from pathlib import Path

import lightning as L


class RecordTrainingIds(L.Callback):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids.extend(batch["ids"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        path = Path(os.environ["SEEN_DIR"]) / f"seen_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.ids))


class KillAtStep(L.Callback):
    """For the resume test: the process kills itself (SIGKILL: no cleanup, as a scheduler's kill) when training
    reaches `step`, after the checkpoints of the steps before it were written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
