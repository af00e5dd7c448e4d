"""The first training step's loss of a run, from audio or from a feature cache (imported by the cache tests)."""

import lightning as L

from recipes.datamodule import ManifestDataModule
from recipes.module import SSLTaskModule, UpstreamConfig
from recipes.tasks import EmotionTask, Task


class FirstLoss(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self.loss = float(outputs["loss"])


def first_step_loss(splits: dict[str, str], features: str | None, task: Task | None = None,
                    upstream: str = "fbank") -> float:  # fmt: skip
    """One seeded training step of `task` (emotion by default) on `splits` (train, valid manifests); `features` a
    `strata extract` folder to train from (given to the module too, as `strata fit` links it), or None for audio."""
    L.seed_everything(0)
    module = SSLTaskModule(task or EmotionTask(), upstream=UpstreamConfig(name=upstream), features=features)
    data = ManifestDataModule(**splits, max_batch_seconds=20, num_workers=0, seed=0, features=features,
                              spec=module.input_spec())  # fmt: skip
    callback = FirstLoss()
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, accelerator="cpu",
                        callbacks=[callback], enable_progress_bar=False, use_distributed_sampler=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=data)
    return callback.loss
