"""A callback for the DDP test: each rank writes the training ids it saw (imported by class path)."""

import json
import os
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
