"""`results.json`: what one `strata test`, probe or mean over folds measured, and how `strata report` and
`strata compare` find, read and print it.

The file is one flat JSON object, so a recipe or a test reads `results["UA"]` directly:

    {"UA": 0.61, "WA": 0.64,                                     metrics: every float
     "task": "emotion", "upstream": "hubert_base", "interface": "weighted_sum", "trainable": "frozen",
     "dataset": "data/test.jsonl", "seed": 0, "num_utterances": 1241,  the descriptive fields
     "num_trials": 37720, "mean_subtraction": true}               details: what an evaluator adds, never a float

The one rule that splits it: a descriptive key is a field, any other float is a metric, anything else (counts,
flags, names) is a detail. `Results` refuses a float detail when it is made, so what is written reads back the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic

FILENAME = "results.json"
# The keys that describe a run rather than measure it, in the order they are written.
DESCRIPTIVE = ("task", "upstream", "interface", "trainable", "dataset", "seed", "num_utterances")


@dataclass
class Results:
    """One `results.json`: the metrics (floats, rates as fractions), what was run, and the evaluator's details."""

    task: str
    upstream: str
    interface: str
    trainable: str
    metrics: dict[str, float] = field(default_factory=dict)
    dataset: str | None = None  # the test manifest, or a description ("IEMOCAP, 5-fold leave-one-session-out")
    seed: int | None = None  # -1: the run set no seed
    num_utterances: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # num_trials, mean_subtraction, best_layer, decoder, ...

    def __post_init__(self) -> None:
        for name in ("task", "upstream", "interface", "trainable", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name == "dataset" and value is None):
                raise ValueError(f"results field {name!r} must be a string; got {value!r}")
        for name in ("seed", "num_utterances"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"results field {name!r} must be an integer; got {value!r}")
        metrics = {}
        for name, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"metric {name!r} must be a number; got {value!r}")
            metrics[name] = float(value)  # numpy and torch scalars too: json writes only Python floats
        self.metrics = metrics
        for name, value in self.details.items():
            if isinstance(value, float):
                raise ValueError(f"detail {name!r} is a float, which results.json reads back as a metric: "
                                 "put it in metrics, or give it as an int or a string")  # fmt: skip
        if both := sorted(set(self.metrics) & set(self.details)):
            raise ValueError(f"{both[0]!r} is both a metric and a detail")
        if described := [name for name in DESCRIPTIVE if name in self.metrics or name in self.details]:
            raise ValueError(f"{described[0]!r} is a descriptive field of results.json, not a metric or a detail")

    def to_dict(self) -> dict[str, Any]:
        """The flat layout: metrics, then the descriptive fields (those not None), then the details."""
        described = {name: getattr(self, name) for name in DESCRIPTIVE if getattr(self, name) is not None}
        return {**self.metrics, **described, **self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """Split a flat dict by the rule above; a descriptive field it lacks is `?` (strings) or None."""
        described = {name: data[name] for name in DESCRIPTIVE if name in data and data[name] is not None}
        for name in ("task", "upstream", "interface", "trainable"):
            described.setdefault(name, "?")
        rest = {key: value for key, value in data.items() if key not in DESCRIPTIVE}
        metrics = {key: value for key, value in rest.items() if is_metric(value)}
        details = {key: value for key, value in rest.items() if key not in metrics}
        return cls(metrics=metrics, details=details, **described)

    def write(self, run_dir: str | Path) -> Path:
        """Write `run_dir/results.json` (making the folder); returns its path."""
        return atomic.write_text(Path(run_dir) / FILENAME, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Results:
        """Read a `results.json`, or the one in a run folder; a malformed file is a ValueError naming it."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"no {path}: run `strata test` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error.msg} (line {error.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of results")
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def is_metric(value: Any) -> bool:
    """A metric is a float; ints (counts, the best layer) and bools (flags) are details."""
    return isinstance(value, float)


def find_results(folders: Iterable[str | Path]) -> list[Path]:
    """The `results.json` of each folder (or the file given), or where a folder has none every one below it,
    sorted; a summary over folds thus stands for its folds. Each file once; a folder with none is an error."""
    found: dict[Path, Path] = {}  # resolved -> as found, so two spellings of one folder count once
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist")
        if folder.is_file():
            paths = [folder]
        elif (folder / FILENAME).is_file():
            paths = [folder / FILENAME]
        else:
            paths = sorted(folder.rglob(FILENAME))
        if not paths:
            raise FileNotFoundError(f"no {FILENAME} in or below {folder}: run `strata test` there first")
        for path in paths:
            found.setdefault(path.resolve(), path)
    return list(found.values())


def table_metrics(results: Iterable[Results]) -> list[str]:
    """The metric columns of a table of runs, in the first run's order: every metric but the per-section
    breakdowns of anomaly detection (`AUC_source/fan/00`), which stay in results.json."""
    names: dict[str, None] = {}
    for result in results:
        names.update((name, None) for name in result.metrics if name.count("/") <= 1)
    return list(names)


# Details worth a column wherever a run has them: the layer a probe found best.
TABLE_DETAILS = ("best_layer",)


def table_details(results: Iterable[Results]) -> list[str]:
    """The detail columns of a table of runs: those of `TABLE_DETAILS` that any run has."""
    present = {name for result in results for name in result.details}
    return [name for name in TABLE_DETAILS if name in present]


def format_metric(name: str, value: Any) -> str:
    """Rates (accuracy, UA, EER, WER, ...) in %, as papers print them; a detection cost (minDCF) stays a fraction,
    as it is published, and so does any value beyond 1, which is no rate. Not a float: as it is; None: empty."""
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if name.startswith("minDCF") or abs(value) > 1 else f"{100 * value:.2f}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
