"""Load an egs/ script as a module (egs/ is not a package, so its scripts are loaded by path), and read what
it writes."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

EGS = Path(__file__).resolve().parents[1] / "egs"


def load_script(name: str, recipe: str = "mini") -> ModuleType:
    """`egs/<recipe>/local/<name>.py` as a module."""
    spec = importlib.util.spec_from_file_location(f"{recipe}_{name}", EGS / recipe / "local" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    """The entries of a JSONL manifest, as written (no validation, paths unresolved)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
