"""`strata fit / validate / test`: LightningCLI over SSLTaskModule and ManifestDataModule.

On top of LightningCLI: a default run directory `exp/<task>/<run name>` (`recipes.runs.run_dir`), best and last
checkpoints under `<run>/checkpoints/`, CSV and TensorBoard logs, the resolved config in the run directory,
and `--ckpt_path best|last` meaning that run's checkpoints; with `--average_best K`, the K best in
`<run>/checkpoints/top/` and `--ckpt_path averaged` their parameter average (recipes.averaging). Every fit (tasks,
`strata pretrain`, `strata distill`) also writes `last.ckpt` every `--checkpoint_every_n_steps` and resumes
mid-epoch (recipes.resume).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from . import atomic
from .averaging import TOP_DIR, averaged_checkpoint
from .datamodule import ManifestDataModule
from .module import SSLTaskModule
from .resume import DEFAULT_EVERY_N_STEPS, RandomState, step_checkpoint
from .runs import run_dir as default_run_dir
from .tasks import task_class

# Lightning's notices that do not apply here: a frozen upstream is in eval mode on purpose, and the
# LeafSpec deprecation and the cloud-logger tip are Lightning's own business.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# jsonargparse 4.49 deprecations inside Lightning's own CLI code
for _deprecated in ["skip_none parameter", "``ArgumentParser.add_instantiator``", "``instantiate_classes``"]:
    warnings.filterwarnings("ignore", message=rf"\s*{re.escape(_deprecated)} was deprecated")
warnings.filterwarnings("ignore", message=r"\s*By default only one JsonargparseDeprecationWarning")
# Testing a checkpoint from another run directory: its checkpoint callback's state does not matter to a test.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
# Testing a checkpoint of a fit with --average_best: the top-K callback is the fit's business, not the test's.
warnings.filterwarnings(
    "ignore", message=r"Be aware that when using `ckpt_path`.*callbacks: \[\"TopCheckpoints\{[^\]]*\}\"\]\."
)
# `strata.main(argv)` passes its arguments explicitly by design (tests, scripts).
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.msg)


class RunFolderCLI(LightningCLI):
    """The run folder every strata LightningCLI command writes: the resolved config, checkpoints under
    `<run>/checkpoints/`, CSV and TensorBoard logs. Subclasses set `self.run_dir` before the trainer is built."""

    run_dir: Path

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=DEFAULT_EVERY_N_STEPS,
            help="fit: also write <run>/checkpoints/last.ckpt every N training steps, so a run killed inside a long "
            "epoch resumes there with --ckpt_path last; 0: only at each epoch's end",
        )

    def _trainer_with(self, *checkpoints: ModelCheckpoint, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        every = self.config[self.subcommand].get("checkpoint_every_n_steps") or 0
        if every < 0:
            raise ValueError(f"--checkpoint_every_n_steps must be 0 (off) or a number of steps, not {every}")
        if self.subcommand == "fit":  # resumable mid-epoch (recipes.resume)
            steps = [step_checkpoint(self.run_dir / "checkpoints", every)] if every else []
            checkpoints = (*checkpoints, *steps, RandomState())
        kwargs["callbacks"] = [*(trainer_config.get("callbacks") or []), *checkpoints]
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = [
                CSVLogger(self.run_dir, name="logs"),
                TensorBoardLogger(self.run_dir, name="tensorboard"),
            ]
        return super().instantiate_trainer(**kwargs)

    def _resume_from(self, ckpt_path: str | None) -> str | None:
        """A fit's `--ckpt_path`: `last` is this run's last checkpoint, or a fresh start when there is none yet
        (so a recipe can always pass it and a killed run picks up where it stopped); any other path as given."""
        if ckpt_path != "last":
            return ckpt_path
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            print(f"no {last} yet: starting a new run")
            return None
        print(f"resuming from {last}")
        return str(last)

    @rank_zero_only
    def _save_config(self, filename: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / filename
        atomic.write_text(path, self._parser(self.subcommand).dump(self.config[self.subcommand]))
        print(f"run directory {self.run_dir}; config in {path}")


class TopCheckpoints(ModelCheckpoint):
    """The K best validation checkpoints, kept to be averaged (recipes.averaging). A class of its own, so that its
    state key differs from the best checkpoint's (Lightning refuses two callbacks with one key) and starts with
    `averaging.TOP_CALLBACK`; that state also records the mode, which with each file's own score ranks the files."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mode": self.mode}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """A fit that starts afresh removes the top checkpoints of an earlier fit into the same folder: they would
        be averaged with this one's. A resumed fit keeps those its restored state tracks."""
        super().on_train_start(trainer, pl_module)
        if not trainer.is_global_zero or self.dirpath is None:
            return
        kept = {Path(path).resolve() for path in self.best_k_models}
        for stale in sorted(Path(self.dirpath).glob("*.ckpt")):
            if stale.resolve() not in kept:
                print(f"removing {stale}, a top checkpoint of an earlier fit")
                stale.unlink()


class StrataCLI(RunFolderCLI):
    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            SSLTaskModule,
            ManifestDataModule,
            save_config_callback=None,  # written by before_fit/before_test into the run directory instead
            seed_everything_default=0,
            trainer_defaults={"use_distributed_sampler": False},  # the bucket sampler shards by rank itself
            parser_kwargs={"prog": "strata"},
            args=args,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        # The data module learns the task and the upstream's input contract from the built model, once.
        parser.link_arguments("model", "data.spec", compute_fn=SSLTaskModule.input_spec, apply_on="instantiate")
        # A fit from a feature cache describes its frozen upstream from the cache instead of building it.
        parser.link_arguments("data.features", "model.features")
        # Top level (like seed_everything), so a config's `average_best: 5` serves fit and test alike.
        parser.add_argument(
            "--average_best",
            type=int,
            default=0,
            help="fit: also keep the K best validation checkpoints in <run>/checkpoints/top/, for "
            "`--ckpt_path averaged` (their parameter average); 0: off",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        task = task_class(config.model.task.class_path)
        if config.trainer.default_root_dir is None:
            upstream = config.model.upstream
            config.trainer.default_root_dir = str(
                default_run_dir(task.name, upstream.name, config.model.interface.name, upstream.trainable)
            )
        self.run_dir = Path(config.trainer.default_root_dir)
        self.monitor = (f"valid/{task.monitor}", task.monitor_mode)
        self.average_best = config.get("average_best") or 0
        if self.average_best < 0:
            raise ValueError(f"--average_best must be 0 (off) or a number of checkpoints, not {self.average_best}")
        init_args = config.model.task.get("init_args")
        if (
            self.subcommand != "fit"
            and config.get("ckpt_path") is None
            and not task.trains(dict(vars(init_args or {})))
        ):
            config.ckpt_path = None  # nothing trained: e.g. frozen embeddings scored directly
        else:
            config.ckpt_path = self._resolve_checkpoint(config.get("ckpt_path"))
        self._complete_task(config, task)

    def _complete_task(self, config: Any, task: type) -> None:
        """Let the task fill what comes from the data (e.g. the training speakers) into the config, so the
        resolved config and the checkpoint's hyper-parameters record it."""
        init_args = config.model.task.get("init_args")
        given = dict(vars(init_args)) if init_args is not None else {}
        checkpoint_args = None
        if config.ckpt_path is not None:
            hparams = torch.load(config.ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(
                "hyper_parameters", {}
            )
            checkpoint_args = (hparams.get("task") or {}).get("init_args")
        completed = task.complete_config(given, config.data.get("train"), checkpoint_args, self.run_dir)
        for name, value in completed.items():
            if given.get(name) != value:
                config.model.task.init_args[name] = value

    def _resolve_checkpoint(self, ckpt_path: str | None) -> str | None:
        """`best` / `last` name this run's checkpoints, `averaged` the average of its top ones (computed when
        needed). A fit with `last` and none yet starts afresh, so a recipe can always pass it; evaluating without a
        checkpoint would score an untrained head, so it is an error."""
        checkpoints = self.run_dir / "checkpoints"
        if self.subcommand == "fit":
            return self._resume_from(ckpt_path)
        ckpt_path = ckpt_path or "best"
        if ckpt_path == "averaged":
            return str(averaged_checkpoint(checkpoints))
        if ckpt_path in ("best", "last"):
            path = checkpoints / f"{ckpt_path}.ckpt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"no {ckpt_path} checkpoint at {path}: run `strata fit` with the same config first, "
                    "or pass --ckpt_path PATH"
                )
            return str(path)
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
        return ckpt_path

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        monitor, mode = self.monitor
        checkpoint = ModelCheckpoint(
            dirpath=self.run_dir / "checkpoints",
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        top = [self._top_checkpoints()] if self.subcommand == "fit" and self.average_best > 0 else []
        # The top-K callback saves first, so that last.ckpt, saved after it, records this epoch's top file: a fit
        # resumed from last.ckpt keeps it.
        return self._trainer_with(*top, checkpoint, **kwargs)

    def _top_checkpoints(self) -> ModelCheckpoint:
        monitor, mode = self.monitor
        return TopCheckpoints(
            dirpath=self.run_dir / "checkpoints" / TOP_DIR,
            filename="epoch{epoch:03d}",
            monitor=monitor,
            mode=mode,
            save_top_k=self.average_best,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def before_fit(self) -> None:
        self._save_config("config.yaml")

    def before_validate(self) -> None:
        self._save_config("config_validate.yaml")

    def before_test(self) -> None:
        self._save_config("config_test.yaml")


def run(args: list[str] | None) -> None:
    """Run a LightningCLI subcommand; `args=None` reads sys.argv like any LightningCLI program."""
    StrataCLI(args=args)


class FitOnlyCLI(RunFolderCLI):
    """A command that only fits (`strata pretrain`, `strata distill`): LightningCLI's fit with the run folder layout
    of the task commands (config, checkpoints/last.ckpt every epoch and every `--checkpoint_every_n_steps`, CSV and
    TensorBoard logs) and `--ckpt_path last` resuming. Subclasses name the default run folder."""

    def __init__(self, model_class: type, datamodule_class: type, prog: str, args: list[str]) -> None:
        super().__init__(
            model_class,
            datamodule_class,
            save_config_callback=None,
            seed_everything_default=0,
            trainer_defaults={"use_distributed_sampler": False},
            parser_kwargs={"prog": prog},
            args=["fit", *args],
        )

    def default_run_dir(self, config: Any) -> Path:
        raise NotImplementedError

    def before_instantiate_classes(self) -> None:
        config = self.config["fit"]
        if config.trainer.default_root_dir is None:
            config.trainer.default_root_dir = str(self.default_run_dir(config))
        self.run_dir = Path(config.trainer.default_root_dir)
        config.ckpt_path = self._resume_from(config.get("ckpt_path"))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        checkpoint = ModelCheckpoint(
            dirpath=self.run_dir / "checkpoints", filename="last", enable_version_counter=False
        )
        return self._trainer_with(checkpoint, **kwargs)

    def before_fit(self) -> None:
        self._save_config("config.yaml")


class PretrainCLI(FitOnlyCLI):
    """`strata pretrain`: the LightningModule and DataModule of a pre-training objective
    (`recipes.pretrain.objectives`: hubert, tera); default run folder `exp/pretrain/<objective>_<size>`."""

    def __init__(self, args: list[str]) -> None:
        from .pretrain.objectives import OBJECTIVES, requested_objective

        self.objective = OBJECTIVES[requested_objective(args)]()
        self.objectives = OBJECTIVES.names()
        super().__init__(self.objective.module, self.objective.data, "strata pretrain", args)

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        # Read before the parser is built (it decides the model's and data's options); declared so that configs
        # may carry it and the resolved config records it.
        parser.add_argument(
            "--objective",
            choices=self.objectives,
            default=self.objective.name,
            help="the pre-training objective; decides which --model and --data options exist (see --help with it)",
        )
        for link in self.objective.links:
            parser.link_arguments(
                link.source, link.target, **({"apply_on": "instantiate"} if link.on_instantiate else {})
            )

    def default_run_dir(self, config: Any) -> Path:
        return Path("exp") / "pretrain" / f"{self.objective.name}_{config.model.size}"


def run_pretrain(args: list[str]) -> None:
    PretrainCLI(args=args)


class DistillCLI(FitOnlyCLI):
    """`strata distill`: DistillModule and DistillDataModule; default run folder `exp/distill/<teacher>`."""

    def __init__(self, args: list[str]) -> None:
        from .pretrain.distill import DistillDataModule, DistillModule

        super().__init__(DistillModule, DistillDataModule, "strata distill", args)

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        from .pretrain.distill import DistillModule

        # The data module checks a teacher cache against the teacher's name, fingerprint and target layers.
        parser.link_arguments("model", "data.teacher", compute_fn=DistillModule.teacher_spec, apply_on="instantiate")

    def default_run_dir(self, config: Any) -> Path:
        return Path("exp") / "distill" / re.sub(r"[^A-Za-z0-9._+-]+", "_", str(config.model.teacher)).strip("_")


def run_distill(args: list[str]) -> None:
    DistillCLI(args=args)
