"""`SplitEvaluation`: the one place where the data module's splits meet the model's evaluation.

SSLTaskModule evaluates with its task's `Evaluator`, which needs to know the split it scores (the manifest, the
verification trials) and, for some tasks, embeddings of a reference split (verification's training-set mean, anomaly
detection's normal training clips). Neither the module nor the data module reads the other: this callback reads the
data module's `split_data` and `reference_dataloader` and hands the module what it needs. SSLTaskModule adds it
itself (`configure_callbacks`), so any Trainer running the module with a ManifestDataModule evaluates the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from tqdm import tqdm

from .tasks import EmbeddingTable, Reduce

if TYPE_CHECKING:
    from .module import SSLTaskModule


class SplitEvaluation(L.Callback):
    """At the start of validation and test: `module.begin_evaluation(datamodule.split_data(split))`; at test, when
    the task names a `test_reference_split`, that split embedded by the module (every process's share gathered)
    and given to the evaluator with `set_reference`."""

    def on_validation_epoch_start(self, trainer: L.Trainer, module: SSLTaskModule) -> None:
        module.begin_evaluation(self._data(trainer).split_data("valid"))

    def on_test_epoch_start(self, trainer: L.Trainer, module: SSLTaskModule) -> None:
        data = self._data(trainer)
        module.begin_evaluation(data.split_data("test"))
        reference = module.task.test_reference_split
        if reference is not None:
            vectors = embed_split(module, data.reference_dataloader(reference), reference, module.reduce,
                                  progress=trainer.is_global_zero)  # fmt: skip
            module.evaluator.set_reference(vectors, data.split_data(reference).manifest)

    @staticmethod
    def _data(trainer: L.Trainer):
        data = getattr(trainer, "datamodule", None)
        if not (hasattr(data, "split_data") and hasattr(data, "reference_dataloader")):
            raise ValueError(
                "SSLTaskModule evaluates splits of a data module with split_data() and reference_dataloader() "
                "(recipes.datamodule.ManifestDataModule); pass one as trainer.fit(module, datamodule=...)"
            )
        return data


def embed_split(
    module: SSLTaskModule, loader: torch.utils.data.DataLoader, split: str, reduce: Reduce, progress: bool = True
) -> torch.Tensor:
    """`[N, E]` embeddings (the head's `embed`) of every utterance of a split, row = manifest index, summed over
    processes by `reduce` (each process embeds its shard). An utterance left out is an error."""
    table = EmbeddingTable(len(loader.dataset))
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"embedding {split}", unit="batch", disable=not progress):
            inputs = module.batch_inputs(move_data_to_device(batch, module.device))
            table.add(batch["indices"], module.head.embed(*inputs))
    table.gather(reduce, f"{split} utterances")
    if table.num_filled < table.size:
        raise ValueError(f"not every {split} utterance was embedded")
    return table.vectors
