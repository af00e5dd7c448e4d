"""The Lightning side: data, tasks, the module and the `strata` command; `load_model` for using a trained model."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `from recipes import load_model` without importing torch and Lightning for `strata run-dir` and the like.
    if name in ("load_model", "StrataModel"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'recipes' has no attribute {name!r}")
