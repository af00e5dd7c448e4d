"""Compare runs: every `results.json` under the folders given, one table and one bar chart per task.

`strata compare exp/emotion/hubert_base_weighted_sum exp/emotion/wavlm_base_plus_weighted_sum --out cmp/` (or a
parent folder, searched recursively) writes `cmp/compare.md` (one row per run, the task's metrics as columns, the
best value of each in bold) and `cmp/compare.png` (grouped bars, one group per metric, one bar per run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# results.json keys that describe a run rather than measure it.
DESCRIPTIVE = {"task", "upstream", "interface", "trainable", "dataset", "seed", "num_utterances"}
# Metrics where smaller is better (errors and costs); every other rate is better larger.
LOWER_IS_BETTER = ("EER", "minDCF", "WER", "CER", "loss")


@dataclass
class Run:
    """One `strata test` result: where it is and what it holds."""

    path: Path
    results: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.results.get("task", "?"))

    label: str = ""  # the run folder's name, with as many parents as it takes to tell runs apart


def unique_names(paths: list[Path]) -> list[str]:
    """Each path's last part (`fbank_weighted_sum_featex`), with as many parent folders as it takes to tell them apart
    (`emotion/tiny_hubert_weighted_sum`, `speaker_id/tiny_hubert_weighted_sum`)."""
    depth = 1
    while True:
        names = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(names)) == len(names) or depth >= max(len(path.parts) for path in paths):
            return names
        depth += 1


def name_runs(runs: list[Run]) -> None:
    """Label each run by its folder's name, with parents where names repeat."""
    for run, label in zip(runs, unique_names([run.path for run in runs]), strict=True):
        run.label = label


def find_runs(folders: list[str | Path]) -> list[Run]:
    """The `results.json` of each folder, or where it has none every one below it; each read once."""
    paths: dict[Path, None] = {}
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist")
        if folder.is_file():
            found = [folder]
        elif (folder / "results.json").is_file():  # a run, or a summary over folds that stands for its folds
            found = [folder / "results.json"]
        else:
            found = sorted(folder.rglob("results.json"))
        if not found:
            raise FileNotFoundError(f"no results.json in or below {folder}: run `strata test` there first")
        paths.update(dict.fromkeys(path.resolve() for path in found))
    runs = []
    for path in paths:
        try:
            runs.append(Run(path.parent, json.loads(path.read_text())))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error.msg} (line {error.lineno})") from None
    return runs


def metric_names(runs: list[Run]) -> list[str]:
    """The metrics the runs report, in the first run's order: real-valued results (counts, flags and the per-section
    breakdowns of anomaly detection, `AUC_source/fan/00`, are left to results.json)."""
    names: dict[str, None] = {}
    for run in runs:
        for key, value in run.results.items():
            if key in DESCRIPTIVE or key.count("/") > 1 or isinstance(value, bool) or not isinstance(value, float):
                continue
            names[key] = None
    return list(names)


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def best_value(runs: list[Run], metric: str) -> float | None:
    values = [run.results[metric] for run in runs if isinstance(run.results.get(metric), float)]
    if not values:
        return None
    return min(values) if lower_is_better(metric) else max(values)


def format_value(metric: str, value: float) -> str:
    """Rates as percentages, as papers print them; a detection cost stays a fraction, as it is published."""
    return f"{value:.4f}" if metric.startswith("minDCF") or abs(value) > 1 else f"{100 * value:.2f}"


def markdown(runs_by_task: dict[str, list[Run]]) -> str:
    from .cli import markdown_table

    sections = []
    for task, runs in runs_by_task.items():
        metrics = metric_names(runs)
        best = {metric: best_value(runs, metric) for metric in metrics}
        rows = []
        for run in runs:
            cells = []
            for metric in metrics:
                value = run.results.get(metric)
                if not isinstance(value, float):
                    cells.append("")
                    continue
                text = format_value(metric, value)
                cells.append(f"**{text}**" if len(runs) > 1 and value == best[metric] else text)
            r = run.results
            rows.append([run.label, r.get("upstream", "?"), r.get("interface", "?"), r.get("trainable", "?"), *cells])
        arrows = [f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in metrics]
        header = ["run", "upstream", "interface", "trainable", *arrows]
        sections.append(f"## {task}\n\n" + markdown_table(header, rows) + "\n")
    note = "Rates in %, minDCF as a fraction; ↑ higher is better, ↓ lower is better; the best of each column in bold.\n"
    return "# Comparison\n\n" + note + "\n" + "\n".join(sections)


def plotted_value(metric: str, value: Any) -> float:
    """A bar's height: rates and minDCF x 100 (on the axis of the rates), other values as they are; NaN (no bar)
    where a run lacks the metric."""
    if not isinstance(value, float):
        return float("nan")
    return value if abs(value) > 1 else 100 * value


def plot(runs_by_task: dict[str, list[Run]], path: Path) -> Path:
    from .plots import plot_grouped_bars

    panels = {}
    for task, runs in runs_by_task.items():
        metrics = metric_names(runs)
        heights = [[plotted_value(m, run.results.get(m)) for m in metrics] for run in runs]
        groups = [
            f"{m}{' x100' if m.startswith('minDCF') else ''} {'↓' if lower_is_better(m) else '↑'}" for m in metrics
        ]
        panels[task] = (groups, [run.label for run in runs], heights)
    return plot_grouped_bars(panels, path, ylabel="%", title="strata compare")


def compare(folders: list[str | Path], out: str | Path) -> list[Path]:
    """Write `out/compare.md` and `out/compare.png` for the runs in `folders`; returns the paths written."""
    runs_by_task: dict[str, list[Run]] = {}
    for run in sorted(find_runs(folders), key=lambda r: (r.task, str(r.path))):
        runs_by_task.setdefault(run.task, []).append(run)
    for runs in runs_by_task.values():
        name_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "compare.md"
    table.write_text(markdown(runs_by_task), encoding="utf-8")
    return [table, plot(runs_by_task, out / "compare.png")]
