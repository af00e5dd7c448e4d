"""What a model file from someone else may make strata do: build strata's own classes, nothing else.

A checkpoint's hyper-parameters, a run's config and an export's `strata.json` name a task class and an upstream
source. Building either could import a module the file chooses (`task_class` imports the class path it is given;
an upstream `package.module:factory` imports its module), which runs its code. `check_trusted` lets through only
strata's registered tasks and upstream sources that import nothing of the file's choosing, unless the user says
they trust the file (`trust_code=True`, `--trust-code`). Weights are read as tensors only (safetensors, or
`torch.load(weights_only=True)`), never unpickled objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


class UntrustedModelError(ValueError):
    """A model file names code strata would have to import to build it."""


def allowed_task_classes() -> list[str]:
    """The class paths of strata's own tasks, as configs and checkpoints name them."""
    from .tasks import TASKS
    from .tasks.base import public_class_path

    return sorted(public_class_path(TASKS[name]) for name in TASKS.names())


def check_trusted(hparams: dict[str, Any], where: str, trust_code: bool = False) -> None:
    """Refuse `hparams` (a module's: `task`, `upstream`, ...) that would import code outside strata."""
    if trust_code:
        return
    from upstream.registry import imports_code

    task = hparams.get("task") or {}
    class_path = task.get("class_path") if isinstance(task, dict) else None
    if class_path not in allowed_task_classes():
        raise UntrustedModelError(
            f"{where} names the task class {class_path!r}, which is not one of strata's own "
            f"({', '.join(allowed_task_classes())}); building it would import and run its code. Load it only if "
            "you trust where it came from, with trust_code=True (--trust-code)"
        )
    upstream = hparams.get("upstream") or {}
    name = upstream.get("name") if isinstance(upstream, dict) else None
    if isinstance(name, str) and imports_code(name):
        raise UntrustedModelError(
            f"{where} names the upstream {name!r}, a package.module:factory that would import and run its code; "
            "load it only if you trust where it came from, with trust_code=True (--trust-code)"
        )


TRUST_FLAG = "--trust-code"  # what every strata command that could import foreign code takes to do so

# Where Lightning's and strata's classes live: a config naming a class elsewhere would import code of its choosing.
TRUSTED_MODULES = ("recipes", "upstream", "downstream", "lightning", "pytorch_lightning", "torch")
# Keys whose string values jsonargparse imports as classes (`callbacks: [mypackage.MyCallback]`).
CLASS_KEYS = ("class_path", "callbacks", "logger", "plugins", "strategy", "profiler", "task")
# Keys whose values are upstream sources (a `package.module:factory` imports its module).
UPSTREAM_KEYS = ("name", "teacher", "features")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _foreign_code(value: Any, path: tuple[str, ...]) -> list[tuple[str, str]]:
    """(key path, what) for each class or upstream factory outside strata, Lightning and torch in a config."""
    from upstream.registry import imports_code

    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _foreign_code(item, (*path, str(key)))]
    if isinstance(value, list):
        return [found for item in value for found in _foreign_code(item, path)]
    if not isinstance(value, str) or not path:
        return []
    key, where = path[-1], ".".join(path)
    if key in CLASS_KEYS and DOTTED.match(value) and value.split(".")[0] not in TRUSTED_MODULES:
        return [(where, value)]
    source = value.rsplit(":", 1)[0] if key == "features" else value  # features: <upstream>:<layer>
    if key in UPSTREAM_KEYS and ("upstream" in path or key != "name") and imports_code(source):
        return [(where, value)]
    return []


def config_files(args: list[str]) -> list[Path]:
    """The `--config` files of a LightningCLI command line."""
    files = []
    for index, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag in ("--config", "-c"):
            value = value if equals else (args[index + 1] if index + 1 < len(args) else "")
            files.append(Path(value))
    return files


def check_configs_trusted(args: list[str], trust_code: bool = False) -> None:
    """Refuse `--config` files that name classes or upstream factories outside strata, Lightning and torch:
    parsing them would import and run that code. What the user types on the command line is their own choice and
    is not checked; a config (someone else's, or a run's own `config.yaml` of a custom upstream) needs
    `--trust-code`."""
    if trust_code:
        return
    import yaml

    for path in config_files(args):
        if not path.is_file():
            continue  # the parser names a missing config
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # and an unreadable one
        found = _foreign_code(config, ())
        if found:
            where, what = found[0]
            raise UntrustedModelError(
                f"config {path} names {what!r} at {where}, which is not part of strata, Lightning or torch: parsing "
                f"it would import and run its code. Use the config only if you trust where it came from, with "
                f"--trust-code" + (f" ({len(found) - 1} more such names)" if len(found) > 1 else "")
            )
