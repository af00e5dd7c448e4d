"""Compare runs: every `results.json` under the folders given, one table and one bar chart per task.

`strata compare exp/emotion/hubert_base_weighted_sum exp/emotion/wavlm_base_plus_weighted_sum --out cmp/` (or a
parent folder, searched recursively) writes `cmp/compare.md` (one row per run, the task's metrics as columns, the
best value of each in bold) and `cmp/compare.png` (grouped bars, one group per metric, one bar per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .results import Results, find_results, format_metric, markdown_table, table_metrics

# Metrics where smaller is better (errors and costs); every other rate is better larger.
LOWER_IS_BETTER = ("EER", "minDCF", "WER", "CER", "loss")


@dataclass
class Run:
    """One `strata test` result: where it is and what it holds."""

    path: Path
    results: Results

    @property
    def task(self) -> str:
        return self.results.task

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
    return [Run(path.parent, Results.read(path)) for path in find_results(folders)]


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def best_value(runs: list[Run], metric: str) -> float | None:
    values = [run.results.metrics[metric] for run in runs if metric in run.results.metrics]
    if not values:
        return None
    return min(values) if lower_is_better(metric) else max(values)


def markdown(runs_by_task: dict[str, list[Run]]) -> str:
    sections = []
    for task, runs in runs_by_task.items():
        metrics = table_metrics(run.results for run in runs)
        best = {metric: best_value(runs, metric) for metric in metrics}
        rows = []
        for run in runs:
            cells = []
            for metric in metrics:
                value = run.results.metrics.get(metric)
                text = format_metric(metric, value)
                cells.append(f"**{text}**" if len(runs) > 1 and value is not None and value == best[metric] else text)
            r = run.results
            rows.append([run.label, r.upstream, r.interface, r.trainable, *cells])
        arrows = [f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in metrics]
        header = ["run", "upstream", "interface", "trainable", *arrows]
        sections.append(f"## {task}\n\n" + markdown_table(header, rows) + "\n")
    note = "Rates in %, minDCF as a fraction; ↑ higher is better, ↓ lower is better; the best of each column in bold.\n"
    return "# Comparison\n\n" + note + "\n" + "\n".join(sections)


def plotted_value(metric: str, value: float | None) -> float:
    """A bar's height: rates and minDCF x 100 (on the axis of the rates), other values as they are; NaN (no bar)
    where a run lacks the metric."""
    if value is None:
        return float("nan")
    return value if abs(value) > 1 else 100 * value


def plot(runs_by_task: dict[str, list[Run]], path: Path) -> Path:
    from .plots import plot_grouped_bars

    panels = {}
    for task, runs in runs_by_task.items():
        metrics = table_metrics(run.results for run in runs)
        heights = [[plotted_value(m, run.results.metrics.get(m)) for m in metrics] for run in runs]
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
    atomic.write_text(table, markdown(runs_by_task))
    return [table, plot(runs_by_task, out / "compare.png")]
