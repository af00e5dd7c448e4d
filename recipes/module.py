"""SSLTaskModule: upstream + interface + the task's head, trained and evaluated by Lightning."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from downstream.normalization import FeatureNorm
from upstream import Upstream, build_upstream
from upstream.interfaces import build_interface
from upstream.names import as_config

from . import runs
from .cache import indexed_upstream, upstream_fingerprint
from .evaluation import SplitEvaluation
from .frozen import leave_out, put_back
from .nonfinite import checked_loss
from .optim import with_linear_warmup
from .results import Results
from .spec import InputSpec
from .tasks import Evaluator, SplitData, Task, task_from_config
from .tasks.base import Calibration
from .trust import check_trusted

# Where a checkpoint names the frozen upstream whose weights it leaves out: {"name": source, "fingerprint": hash}.
FROZEN_UPSTREAM_KEY = "strata_frozen_upstream"


@dataclass(frozen=True)
class UpstreamConfig:
    """Which upstream and how much of it trains (`frozen`, `all` or `top:K`; the CNN only with `train_cnn`)."""

    name: str = "fbank"
    trainable: str = "frozen"
    train_cnn: bool = False


@dataclass(frozen=True)
class InterfaceConfig:
    """How hidden layers are combined: an interface name and its options.

    `name` is one of `upstream.interfaces.INTERFACES`; each option is passed only when set (`layer` for `layer`,
    `normalize` for `weighted_sum`, `output_size` for any), and one the interface does not take is a `ValueError`
    naming those it does."""

    name: str = "weighted_sum"
    layer: int | None = None  # `layer`: which hidden state (negative counts from the end)
    normalize: bool | None = None  # `weighted_sum`, `grouped_weighted_sum`: layer-norm each hidden state first
    groups: int | None = None  # `grouped_weighted_sum`: contiguous groups of hidden states (default 2)
    attention_size: int | None = None  # `layer_attention`: the encoder's width (default 128)
    attention_layers: int | None = None  # `layer_attention`: transformer layers over the layer axis (default 1)
    output_size: int | None = None  # any: a linear map to this width (default: the upstream's hidden size)

    @property
    def options(self) -> dict[str, Any]:
        """The options that are set, for `build_interface`."""
        return {key: value for key, value in asdict(self).items() if key != "name" and value is not None}


# Task options that name files (ASR's tokenizer, language model and lexicon).
TASK_FILES = ("tokenizer", "lm", "lexicon")


def relocate_task_files(task: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`task` (a `Task.config()`) with each file it names that does not exist replaced by the file of the same name
    in `folder`, when there is one."""
    init_args = dict(task.get("init_args") or {})
    for key, value in init_args.items():
        if key in TASK_FILES and isinstance(value, str) and not Path(value).is_file():
            moved = folder / Path(value).name
            if moved.is_file():
                init_args[key] = str(moved)
    return {**task, "init_args": init_args}


def build_task_upstream(config: UpstreamConfig, features: str | None = None) -> Upstream:
    """The upstream `config` names; for a frozen one that the feature cache `features` was extracted from, the
    cache's description of it (`IndexedUpstream`), which builds the model only if something asks for it. Either
    way torch's random state is left as it was (loading a model may draw from it), so the head starts from the same
    weights whether the run trains from audio or from the cache."""
    if features is not None and config.trainable == "frozen" and not config.train_cnn:
        described = indexed_upstream(config.name, features)
        if described is not None:
            return described
    with torch.random.fork_rng(devices=[]):
        return build_upstream(config.name, trainable=config.trainable, train_cnn=config.train_cnn)


class SSLTaskModule(L.LightningModule):
    """One module for every task: the `Task` supplies labels, the head (which owns its loss) and metrics.

    `lr` trains the interface and head; `upstream_lr` the upstream's trainable part (SSL models need a much
    smaller rate than a fresh head). `warmup_steps` ramps both linearly from zero. `feature_norm` standardises
    the interface output with running training-set statistics before the head (global MVN, as Kaldi and ESPnet
    do for filterbanks; off in the SUPERB configs). A non-finite training loss stops the run naming its batch;
    `skip_nonfinite_loss` skips such batches instead and lists them in `<run>/nonfinite_batches.jsonl`.

    `features`: the feature cache this run trains from (`strata fit` passes `--data.features`): a frozen upstream the
    cache was extracted from is then described by the cache's index (`recipes.cache.IndexedUpstream`) instead of
    built, since the run never reads its weights; checkpoints are the same either way.
    """

    def __init__(
        self,
        task: Task,
        upstream: UpstreamConfig = UpstreamConfig(),  # noqa: B008 -- frozen, so one shared default is safe
        interface: InterfaceConfig = InterfaceConfig(),  # noqa: B008
        lr: float = 1e-3,
        upstream_lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        feature_norm: bool = False,
        skip_nonfinite_loss: bool = False,
        features: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["features"])  # where this run's data comes from, not part of the model
        # Outside LightningCLI the hyper-parameters are the objects themselves; keep them plain so checkpoints
        # load with torch.load(weights_only=True), as Lightning does when resuming.
        for key, value in list(self.hparams.items()):
            if isinstance(value, Task):
                self.hparams[key] = value.config()
            elif is_dataclass(value):
                self.hparams[key] = asdict(value)
        self.task = task
        self.upstream_config = upstream
        self.interface_config = interface
        self.lr, self.upstream_lr = lr, upstream_lr
        self.weight_decay, self.warmup_steps = weight_decay, warmup_steps
        self.skip_nonfinite_loss = skip_nonfinite_loss
        self.upstream = build_task_upstream(upstream, features)
        self.interface = build_interface(
            interface.name, self.upstream.num_layers, self.upstream.hidden_size, **interface.options
        )
        self.feature_norm = FeatureNorm(self.interface.output_size) if feature_norm else None
        self.head = task.build_head(self.interface.output_size)
        self.evaluator: Evaluator | None = None
        self.evaluation_split: SplitData | None = None
        self._upstream_fingerprint: str | None = None

    @property
    def run_name(self) -> str:
        return runs.run_name(self.upstream_config.name, self.interface_config.name, self.upstream_config.trainable)

    @classmethod
    def from_config(cls, hparams: dict[str, Any], where: str, trust_code: bool = False) -> SSLTaskModule:
        """A module built from its hyper-parameters as checkpoints and run configs keep them (plain dicts: `task`,
        `upstream`, `interface`, `lr`, ...); one naming code outside strata is refused unless `trust_code`
        (see recipes.trust)."""
        hparams = {key: value for key, value in hparams.items() if not key.startswith("_")}
        if "task" not in hparams:
            raise ValueError(f"{where} is not a strata model (no task in its hyper-parameters)")
        check_trusted(hparams, where, trust_code)
        return cls(
            task=task_from_config(hparams.pop("task")),
            upstream=as_config(UpstreamConfig, hparams.pop("upstream", None), "upstream", "config"),
            interface=as_config(InterfaceConfig, hparams.pop("interface", None), "interface", "config"),
            **hparams,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        trust_code: bool = False,
        files_from: Path | None = None,
    ) -> SSLTaskModule:
        """The trained module a `strata fit` checkpoint holds, rebuilt from its hyper-parameters (plain config
        dicts, so the file loads with `weights_only=True`). A file the task names (the ASR tokenizer) that is not
        where it was recorded (a path relative to where `strata fit` ran) is taken from `files_from`, the run
        folder, when it is there."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        if files_from is not None and isinstance(hparams.get("task"), dict):
            hparams["task"] = relocate_task_files(hparams["task"], files_from)
        module = cls.from_config(hparams, str(path), trust_code)
        module.on_load_checkpoint(checkpoint, where=str(path))
        module.load_state_dict(checkpoint["state_dict"])
        return module.eval()

    @property
    def upstream_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.upstream.parameters())

    @property
    def upstream_fingerprint(self) -> str:
        """The frozen upstream's `recipes.cache.upstream_fingerprint`, computed once (its weights never change)."""
        if self._upstream_fingerprint is None or not self.upstream_frozen:
            self._upstream_fingerprint = upstream_fingerprint(self.upstream)
        return self._upstream_fingerprint

    def input_spec(self) -> InputSpec:
        """What the data module needs to know of this model (see recipes.spec); `strata fit` links it."""
        upstream = self.upstream
        return InputSpec(
            task=self.task,
            upstream=self.upstream_config.name,
            sample_rate=upstream.sample_rate,
            frame_rate=upstream.frame_rate,
            frame_lengths=upstream.frame_lengths,
            fingerprint=lambda: self.upstream_fingerprint,
            min_samples=getattr(upstream, "min_samples", 0),
            trainable=upstream.trainable,
            reads_audio=getattr(self.head, "reads_audio", False),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A frozen upstream is rebuilt from its source on load: the checkpoint keeps its name and fingerprint, not
        its weights (361 MiB of every checkpoint of a base model). A trainable upstream's weights stay in."""
        if self.upstream_frozen:
            leave_out(checkpoint, "upstream", FROZEN_UPSTREAM_KEY, self.upstream_config.name, self.upstream_fingerprint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any], where: str = "the checkpoint") -> None:
        """Put the rebuilt frozen upstream's weights back into a checkpoint that left them out, once its
        fingerprint shows it is the model the checkpoint was trained on (Lightning loads the state dict next)."""

        def mismatch(saved: dict[str, str], current: str) -> str:
            return (
                f"{where} was trained on the frozen upstream {saved['name']!r} (weights {saved['fingerprint']}), "
                f"which it does not store; {self.upstream_config.name!r} now loads other weights ({current}). "
                "Load it with the same upstream source and files it was trained with"
            )

        put_back(
            checkpoint, "upstream", FROZEN_UPSTREAM_KEY, self.upstream, lambda: self.upstream_fingerprint, mismatch
        )

    def features(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`wavs [B, S]`, `wav_lengths [B]` -> what the head reads: `features [B, T, D]` and `lengths [B]`."""
        out = self.upstream(wavs, wav_lengths)
        features = self.interface(out.hidden_states, out.lengths)
        if self.feature_norm is not None:
            features = self.feature_norm(features, out.lengths)
        return features, out.lengths

    def head_inputs(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the head is called with: `(features, lengths)`, followed by `(wavs, wav_lengths)` for a head that
        also reads the audio (`reads_audio`, e.g. FeatEx's spectrum branch)."""
        audio = (wavs, wav_lengths) if getattr(self.head, "reads_audio", False) else ()
        return (*self.features(wavs, wav_lengths), *audio)

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Any:
        """`wavs [B, S]`, `wav_lengths [B]` -> the head's outputs (logits for classification tasks)."""
        return self.head(*self.head_inputs(wavs, wav_lengths))

    def embed(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """`wavs [B, S]`, `wav_lengths [B]` -> one vector per utterance `[B, E]` (the head's `embed`)."""
        if not hasattr(self.head, "embed"):
            raise ValueError(f"the {self.task.name} head makes no utterance embedding")
        return self.head.embed(*self.head_inputs(wavs, wav_lengths))

    def batch_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """What the head is called with for a batch: from its audio (`wavs`), or from cached hidden states
        (`hidden_states`, `lengths`; see recipes.cache), which skip the upstream."""
        if "hidden_states" not in batch:
            return self.head_inputs(batch["wavs"], batch["wav_lengths"])
        features = self.interface(batch["hidden_states"], batch["lengths"])
        if self.feature_norm is not None:
            features = self.feature_norm(features, batch["lengths"])
        return features, batch["lengths"]

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor | None:
        outputs = self.head(*self.batch_inputs(batch))
        loss = checked_loss(self, self.head.loss(outputs, batch["targets"]), batch["ids"], self.skip_nonfinite_loss,
                            "--model.skip_nonfinite_loss true")  # fmt: skip
        if loss is None:
            return None
        batch_size = len(batch["ids"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        # A head may measure more of its training (the speaker adversary's accuracy): `training_metrics`.
        if hasattr(self.head, "training_metrics"):
            for name, value in self.head.training_metrics(outputs, batch["targets"]).items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    def _evaluate_step(self, batch: dict[str, Any], stage: str) -> None:
        outputs = self.head(*self.batch_inputs(batch))
        if "targets" in batch:  # verification scores held-out speakers through trials, without a loss
            loss = self.head.loss(outputs, batch["targets"])
            batch_size = len(batch["ids"])
            self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.evaluator.update(outputs, batch)

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over processes under distributed evaluation; itself on one process."""
        if self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor.to(self.device), reduce_op="sum").cpu()

    def _finish_evaluation(self, stage: str) -> dict[str, float]:
        metrics = self.evaluator.compute(self.reduce)
        # Already summed over processes by the evaluator, so no further sync.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, prog_bar=True)
        return metrics

    def configure_callbacks(self) -> list[L.Callback]:
        """`SplitEvaluation` gives each evaluation the data of its split (and the test its reference embeddings)."""
        return [SplitEvaluation()]

    def begin_evaluation(self, split: SplitData) -> None:
        """A fresh evaluator of the task for `split` (its manifest and trials), before its first batch."""
        self.evaluation_split = split
        self.evaluator = self.task.evaluator(split)

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        self._evaluate_step(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        # The sanity check sees a couple of batches: enough to catch a crash, too few for a metric (verification
        # needs every utterance its trials name).
        if not self.trainer.sanity_checking:
            self._finish_evaluation("valid")

    def test_step(self, batch: dict[str, Any], batch_index: int) -> None:
        self._evaluate_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        metrics = self._finish_evaluation("test")
        if not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        results = Results(
            task=self.task.name,
            upstream=self.upstream_config.name,
            interface=self.interface_config.name,
            trainable=self.upstream_config.trainable,
            metrics=metrics,
            dataset=str(self.evaluation_split.manifest.path),
            seed=int(os.environ.get("PL_GLOBAL_SEED", -1)),
            num_utterances=self.evaluator.num_utterances,
            details=self.evaluator.details(),
        )
        path = results.write(run_dir)
        written = self.evaluator.write(run_dir, title=f"{self.task.name}: {self.run_name}")
        # What `strata predict` and `strata export` decide with (thresholds, reference embeddings).
        written.append(self.evaluator.calibration().save(run_dir / Calibration.FILENAME))
        summary = ", ".join(f"{k} {v:.4f}" for k, v in results.metrics.items())
        print(f"{self.task.name} test ({results.num_utterances} utterances): {summary}")
        print("wrote " + ", ".join(str(p) for p in [path, *written]))

    def configure_optimizers(self) -> dict[str, Any]:
        upstream_params = [p for p in self.upstream.parameters() if p.requires_grad]
        rest = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("upstream.")]
        groups = [{"params": rest, "lr": self.lr}]
        if upstream_params:
            groups.append({"params": upstream_params, "lr": self.upstream_lr})
        return with_linear_warmup(torch.optim.AdamW(groups, weight_decay=self.weight_decay), self.warmup_steps)
