"""`OBJECTIVES`: the pre-training objectives `strata pretrain` knows, each a LightningModule and a DataModule and
the arguments the CLI links between them. Chosen by `objective:` in a config or `--objective NAME` (default
`hubert`), read before the command line is built, since the objective decides which options exist."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from upstream.names import Registry

DEFAULT = "hubert"


@dataclass(frozen=True)
class Link:
    """`parser.link_arguments(source, target)`; `on_instantiate`: from the built model, not from the config."""

    source: str
    target: str
    on_instantiate: bool = False


@dataclass(frozen=True)
class Objective:
    """What `strata pretrain` builds; its run folder defaults to `exp/pretrain/<name>_<size>`."""

    name: str
    module: type
    data: type
    links: tuple[Link, ...] = ()


OBJECTIVES: Registry[Objective] = Registry("pre-training objective")


@OBJECTIVES.register("hubert")
def hubert() -> Objective:
    from .data import PretrainDataModule
    from .module import HubertPretrainModule

    # One number of clusters for the codebook and the prediction layer; targets as long as the model's frames.
    # Long clips are cropped on the model's frames.
    links = (Link("model.num_clusters", "data.num_clusters"), Link("model.frame_lengths", "data.frame_lengths", True),
             Link("model.frame_rate", "data.frame_rate", True))  # fmt: skip
    return Objective("hubert", HubertPretrainModule, PretrainDataModule, links)


@OBJECTIVES.register("tera")
def tera() -> Objective:
    from .data import AudioPretrainDataModule
    from .tera import TeraPretrainModule

    return Objective(
        "tera",
        TeraPretrainModule,
        AudioPretrainDataModule,
        (Link("model.min_samples", "data.min_samples", True), Link("model.frame_rate", "data.frame_rate", True)),
    )


def requested_objective(args: list[str]) -> str:
    """The objective `args` ask for: the last `--objective` or config file's `objective:` key, in the order given
    (as the parser applies them); a config that cannot be read is left to the parser to report."""
    name = DEFAULT
    for index, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if not equals:
            value = args[index + 1] if index + 1 < len(args) else ""
        if flag == "--objective":
            name = value
        elif flag in ("--config", "-c") and Path(value).is_file():
            try:
                config = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError:
                continue
            if isinstance(config, dict) and "objective" in config:
                name = str(config["objective"])
    return name
