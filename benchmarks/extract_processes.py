"""`strata extract` in N processes under torchrun against one process, on the same machine and manifest.

Each run is the whole command (start-up, building the upstream in every process, the shards, the index) into a
fresh folder; with N processes each gets `--threads / N` torch threads, so every run uses the same cores. The caches
are checked against the one-process cache (the same index; values within float16 rounding, since thread
counts change the order of float sums) before any figure is printed.

    python benchmarks/extract_processes.py [--processes 1,2] [--threads 2] [--repeats 2] [--manifest M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from random_models import random_upstream  # noqa: E402

from recipes.cache import FeatureCache  # noqa: E402
from recipes.results import markdown_table  # noqa: E402


def run(processes: int, threads: int, name: str, manifest: str, out: Path, shard_seconds: float) -> float:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "recipes.cli", "extract", "--upstream", name, "--manifest", manifest, "--out", str(out),
               "--shard-seconds", str(shard_seconds)]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(max(threads // processes, 1)), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(ROOT / "egs/mini/data/mini/emotion/train.jsonl"))
    parser.add_argument("--upstream", default="base_random", help="base_random (a base-sized random HuBERT) or a name")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all, split between the processes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shard-seconds", type=float, default=60.0, help="small shards, so each process has several")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="strata_processes_"))
    name = random_upstream(args.upstream, workdir)
    counts = [int(n) for n in args.processes.split(",")]
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every count alike
        for n in counts:
            times[n].append(run(n, args.threads, name, args.manifest, workdir / f"n{n}", args.shard_seconds))
    reference = FeatureCache(workdir / f"n{counts[0]}")
    for n in counts[1:]:
        other = FeatureCache(workdir / f"n{n}")
        assert other.index.utterances == reference.index.utterances, f"{n} processes wrote another index"
        for utterance in reference.index.utterances:
            a, b = other.hidden(utterance), reference.hidden(utterance)  # other thread counts: float16 rounding apart
            assert float((a - b).abs().max() / b.abs().max()) < 1e-2, f"{utterance} differs"
    audio = reference.index.seconds
    base = statistics.median(times[counts[0]])
    rows = [[str(n), f"{max(args.threads // n, 1)}", " / ".join(f"{t:.1f}" for t in times[n]),
             f"{audio / statistics.median(times[n]):.1f}", f"{base / statistics.median(times[n]):.2f}x"]
            for n in counts]  # fmt: skip
    print(f"{args.upstream}, {args.manifest} ({audio:.0f} s of audio), {args.threads} threads in all, "
          f"median of {args.repeats}; caches agree across process counts\n")  # fmt: skip
    print(markdown_table(["processes", "threads each", "runs (s)", "audio-s/s", f"vs {counts[0]}"], rows))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
