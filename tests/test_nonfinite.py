"""A NaN training loss stops the run naming its batch, with the weights and checkpoints of the last good step; or,
asked, the batch is skipped and listed."""

import json

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from recipes.datamodule import ManifestDataModule
from recipes.module import SSLTaskModule, UpstreamConfig
from recipes.nonfinite import SKIPPED, NonFiniteLossError
from recipes.tasks import EmotionTask

BATCH_SECONDS = 60
PER_EPOCH = 4  # training batches per epoch


class Snapshot(L.Callback):
    """Whether the poisoned batch left the weights as they were."""

    def __init__(self, poison: "PoisonedLoss") -> None:
        self.poison = poison

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        if self.poison.calls == self.poison.poisoned - 1:
            self.before = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        if self.poison.calls == self.poison.poisoned:
            after = list(module.parameters())
            self.poison.unchanged = all(torch.equal(a, b) for a, b in zip(self.before, after, strict=True))


class PoisonedLoss:
    """The head's loss, NaN on the `poisoned`-th training batch (whose ids it keeps)."""

    def __init__(self, module: SSLTaskModule, poisoned: int) -> None:
        self.module, self.loss, self.poisoned = module, module.head.loss, poisoned
        self.calls, self.ids, self.batch_ids, self.unchanged = 0, [], [], None

    def __call__(self, outputs, targets):
        value = self.loss(outputs, targets)
        if self.module.training:
            self.calls += 1
            if self.calls == self.poisoned:
                self.ids = list(self.batch_ids)
                return value * float("nan")
        return value


def poisoned_fit(mini_corpus, run, skip: bool, poisoned: int):
    """Two epochs of an fbank emotion fit whose loss is NaN on the `poisoned`-th training batch: the module, the
    poison (with the ids of that batch) and the error raised (None when the fit ended)."""
    L.seed_everything(0)
    module = SSLTaskModule(EmotionTask(), upstream=UpstreamConfig(name="fbank"), skip_nonfinite_loss=skip)
    splits = {split: str(mini_corpus / "emotion" / f"{split}.jsonl") for split in ("train", "valid")}
    data = ManifestDataModule(**splits, max_batch_seconds=BATCH_SECONDS, num_workers=0, seed=0,
                              spec=module.input_spec())  # fmt: skip
    poison = PoisonedLoss(module, poisoned)
    module.head.loss = poison
    step = module.training_step

    def step_keeping_ids(batch, batch_idx):  # the name Lightning looks for
        poison.batch_ids = batch["ids"]
        return step(batch, batch_idx)

    module.training_step = step_keeping_ids
    checkpoint = ModelCheckpoint(dirpath=run / "checkpoints", filename="last", enable_version_counter=False)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=PER_EPOCH, limit_val_batches=1, default_root_dir=run,
                        logger=False, accelerator="cpu", callbacks=[checkpoint, Snapshot(poison)],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False)  # fmt: skip
    try:
        trainer.fit(module, datamodule=data)
    except NonFiniteLossError as error:
        return module, poison, error
    return module, poison, None


def test_a_nan_loss_stops_the_run_naming_the_batch_and_keeps_the_last_good_state(mini_corpus, tmp_path):
    per_epoch = PER_EPOCH
    module, poison, error = poisoned_fit(mini_corpus, tmp_path / "run", skip=False, poisoned=per_epoch + 2)
    assert error is not None
    message = str(error)
    assert f"at step {per_epoch + 1} (epoch 1)" in message and "--model.skip_nonfinite_loss true" in message
    assert poison.ids and all(utterance in message for utterance in poison.ids)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(last) in message
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == per_epoch  # the first epoch's end, before the bad step
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no optimiser step on the NaN


def test_skipping_nonfinite_losses_trains_on_and_lists_the_batch(mini_corpus, tmp_path):
    per_epoch = PER_EPOCH
    module, poison, error = poisoned_fit(mini_corpus, tmp_path / "run", skip=True, poisoned=3)
    assert error is None
    assert module.global_step == 2 * per_epoch  # the step is counted (the schedule goes on) ...
    assert poison.unchanged  # ... but the weights did not move
    assert all(torch.isfinite(p).all() for p in module.parameters())
    (record,) = [json.loads(line) for line in (tmp_path / "run" / SKIPPED).read_text().splitlines()]
    assert record["ids"] == poison.ids and record["step"] == 2 and record["epoch"] == 0 and record["loss"] == "nan"
