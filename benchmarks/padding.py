"""Padding in length-bucketed batches vs batches of a fixed utterance count, on a manifest's durations.

    python benchmarks/padding.py egs/mini/data/mini/emotion/train.jsonl --max-batch-seconds 40

The fixed-count batches hold the same number of utterances on average as the bucketed ones, shuffled as a plain
DataLoader would; padding is the share of the padded batch tensors that is not audio. Without a manifest, a
log-normal duration distribution shaped like IEMOCAP's (median ~3.5 s, long tail) is used.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.data import bucket_batches, fixed_size_batches, padding_fraction, read_manifest  # noqa: E402
from recipes.results import markdown_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", nargs="?", help="a JSONL manifest (default: IEMOCAP-like synthetic durations)")
    parser.add_argument("--max-batch-seconds", type=float, default=40.0)
    parser.add_argument("--seeds", type=int, default=10, help="shuffles averaged for the fixed-count batches")
    args = parser.parse_args(argv)
    if args.manifest:
        durations, source = read_manifest(args.manifest, check_audio=False).durations, args.manifest
    else:
        rng = random.Random(0)
        durations = [min(max(rng.lognormvariate(1.25, 0.55), 0.6), 30.0) for _ in range(4000)]
        source = "4000 synthetic IEMOCAP-like durations"
    bucketed = bucket_batches(durations, args.max_batch_seconds)
    batch_size = max(1, round(len(durations) / len(bucketed)))
    fixed = [padding_fraction(fixed_size_batches(durations, batch_size, seed), durations) for seed in range(args.seeds)]
    bucketed_padding = padding_fraction(bucketed, durations)
    rows = [
        [f"bucketed, <= {args.max_batch_seconds:g} s padded", len(bucketed), f"{100 * bucketed_padding:.1f}"],
        [
            f"fixed count, {batch_size} per batch",
            len(fixed_size_batches(durations, batch_size)),
            f"{100 * statistics.mean(fixed):.1f}",
        ],
    ]
    print(
        f"{source}: {len(durations)} utterances, {sum(durations) / 3600:.2f} h, "
        f"median {statistics.median(durations):.2f} s, max {max(durations):.2f} s\n"
    )
    print(markdown_table(["batches", "count", "padding (%)"], rows))


if __name__ == "__main__":
    main()
