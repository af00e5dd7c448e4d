"""Average a configuration's five IEMOCAP folds, as the SUPERB ER protocol reports them.

    python local/mean_over_folds.py exp/emotion/<run name>

Reads `<run>/fold{1..5}/results.json` and writes `<run>/results.json` with the mean UA and WA over the folds (the
numbers to compare and publish), the per-fold values (`UA/fold1`, ...) and `folds`, then prints the table. A fold
without results is an error naming it: a mean over fewer folds is not the protocol's number.
"""

import argparse
import statistics
from pathlib import Path

from recipes.results import Results

FOLDS = (1, 2, 3, 4, 5)
METRICS = ("UA", "WA")


def mean_over_folds(run: Path) -> Results:
    paths = {k: run / f"fold{k}" / "results.json" for k in FOLDS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"no results for {len(missing)} fold(s): {', '.join(missing)} (run stages 1-2 first)")
    folds = {k: Results.read(path) for k, path in paths.items()}
    for k, results in folds.items():
        absent = [metric for metric in METRICS if metric not in results.metrics]
        if absent:
            raise SystemExit(f"{paths[k]} has no {', '.join(absent)}: is it an emotion run?")
    metrics = {metric: statistics.mean(folds[k].metrics[metric] for k in FOLDS) for metric in METRICS}
    for metric in METRICS:
        metrics.update({f"{metric}/fold{k}": folds[k].metrics[metric] for k in FOLDS})
    counts = [folds[k].num_utterances for k in FOLDS]
    first = folds[FOLDS[0]]
    return Results(
        task=first.task,
        upstream=first.upstream,
        interface=first.interface,
        trainable=first.trainable,
        metrics=metrics,
        dataset="IEMOCAP, 5-fold leave-one-session-out",
        seed=first.seed,
        num_utterances=None if None in counts else sum(counts),
        details={"folds": len(FOLDS)},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the configuration's folder holding fold1/ ... fold5/")
    args = parser.parse_args(argv)
    summary = mean_over_folds(args.run)
    path = summary.write(args.run)
    print(f"| fold | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for k in FOLDS:
        print(f"| {k} | " + " | ".join(f"{100 * summary.metrics[f'{m}/fold{k}']:.2f}" for m in METRICS) + " |")
    print("| mean | " + " | ".join(f"**{100 * summary.metrics[m]:.2f}**" for m in METRICS) + " |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
