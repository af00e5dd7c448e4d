"""What a model file from someone else may make strata do: build strata's own classes, nothing else.

A checkpoint's hyper-parameters, a run's config and an export's `strata.json` name a task class and an upstream
source. Building either could import a module the file chooses (`task_class` imports the class path it is given;
an upstream `package.module:factory` imports its module), which runs its code. `check_trusted` lets through only
strata's registered tasks and upstream sources that import nothing of the file's choosing, unless the user says
they trust the file (`trust_code=True`, `--trust-code`). Weights are read as tensors only (safetensors, or
`torch.load(weights_only=True)`), never unpickled objects.
"""

from __future__ import annotations

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
