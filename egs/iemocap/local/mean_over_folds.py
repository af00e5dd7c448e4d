"""Average a configuration's five IEMOCAP folds, as the SUPERB ER protocol reports them.

    python local/mean_over_folds.py exp/emotion/<run name>

Reads `<run>/fold{1..5}/results.json` and writes `<run>/results.json` with the mean UA and WA over the folds (the
numbers to compare and publish), the per-fold values (`UA/fold1`, ...) and `folds`, then prints the table. A fold
without results is an error naming it: a mean over fewer folds is not the protocol's number.
"""

import argparse
import json
import statistics
from pathlib import Path

FOLDS = (1, 2, 3, 4, 5)
METRICS = ("UA", "WA")


def mean_over_folds(run: Path) -> dict:
    paths = [run / f"fold{k}" / "results.json" for k in FOLDS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"no results for {len(missing)} fold(s): {', '.join(missing)} (run stages 1-2 first)")
    folds = {k: json.loads((run / f"fold{k}" / "results.json").read_text()) for k in FOLDS}
    first = folds[FOLDS[0]]
    summary = {metric: statistics.mean(folds[k][metric] for k in FOLDS) for metric in METRICS}
    for metric in METRICS:
        summary.update({f"{metric}/fold{k}": folds[k][metric] for k in FOLDS})
    described = ("task", "upstream", "interface", "trainable", "seed")
    summary.update({key: first[key] for key in described if key in first})
    summary.update({"dataset": "IEMOCAP, 5-fold leave-one-session-out", "folds": len(FOLDS),
                    "num_utterances": sum(folds[k]["num_utterances"] for k in FOLDS)})  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the configuration's folder holding fold1/ ... fold5/")
    args = parser.parse_args(argv)
    summary = mean_over_folds(args.run)
    (args.run / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"| fold | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for k in FOLDS:
        print(f"| {k} | " + " | ".join(f"{100 * summary[f'{m}/fold{k}']:.2f}" for m in METRICS) + " |")
    print("| mean | " + " | ".join(f"**{100 * summary[m]:.2f}**" for m in METRICS) + " |")
    print(f"wrote {args.run / 'results.json'}")


if __name__ == "__main__":
    main()
