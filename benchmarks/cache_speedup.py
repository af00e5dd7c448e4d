"""Extract once, train many times: `strata fit` from audio vs `strata extract` + `strata fit --data.features` (CPU).

The mini corpus's frozen-upstream emotion fit (egs/mini/conf/emotion.yaml) for N epochs, each command in its own
process so every time includes its start-up, as a user sees it: live (audio -> upstream every batch, train and
valid) vs one extraction of the train + valid manifests (reused for every N, counted in every ratio) followed by a
fit from the cache. With `--profile`, every fit runs under Lightning's simple profiler and, for the first upstream,
the script shows where an epoch goes: its length from the difference of the two fits, split into fetching batches,
the train and valid steps, and checkpoint writes (the profiler's own hooks then cost a cached fit about 6 s in 20
epochs, so the ratios are timed without it). `--threads` sets OMP_NUM_THREADS for every command.

    python benchmarks/cache_speedup.py [--upstreams base_random,tiny_hubert] [--epochs 5,20] [--threads 1] [--profile]

`base_random` is a base-sized HuBERT (12 x 768, `transformers.HubertConfig()` defaults) with random weights, saved
to a transformers directory and loaded as `hf:<dir>`; any other name is a strata upstream.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from random_models import BASE, random_upstream  # noqa: E402

from recipes.results import markdown_table  # noqa: E402

MINI = ROOT / "egs/mini/data/mini/emotion"


# Every command as a user's Python runs it: with its bytecode cached (written by the warm-up command). A sandbox
# that sets PYTHONDONTWRITEBYTECODE would otherwise compile strata's modules from source in every command.
ENVIRONMENT = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def strata(arguments: list[str], log: Path) -> float:
    """Wall time of `python -m recipes.cli ARGUMENTS` (output to `log`); exits with the log's tail if it fails."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "recipes.cli", *arguments], cwd=ROOT, stdout=handle,
                              stderr=subprocess.STDOUT, env=ENVIRONMENT)  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"strata {' '.join(arguments)} failed:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return elapsed


@dataclass
class Fit:
    seconds: float
    ua: str  # the last epoch's valid UA (%): a check that the live and cached fits train alike
    checkpoint_mib: float
    profile: dict[str, float]  # Lightning's simple profiler: action -> total seconds


def fit(upstream: str, epochs: int, run: Path, args: argparse.Namespace, features: Path | None = None) -> Fit:
    shutil.rmtree(run, ignore_errors=True)
    options = {"config": args.config, "model.upstream.name": upstream, "data.train": args.train,
               "data.valid": args.valid, "data.num_workers": args.num_workers, "trainer.max_epochs": epochs,
               "trainer.default_root_dir": run, "trainer.enable_progress_bar": "false",
               "trainer.profiler": "simple" if args.profile else None,
               "data.features": features, "trainer.accelerator": "gpu" if args.device == "cuda" else None}  # fmt: skip
    arguments = [str(x) for key, value in options.items() if value is not None for x in (f"--{key}", value)]
    log = run.with_suffix(".log")
    seconds = strata(["fit", *arguments], log)
    with open(run / "logs/version_0/metrics.csv") as handle:
        uas = [row["valid/UA"] for row in csv.DictReader(handle) if row.get("valid/UA")]
    checkpoints = list(run.glob("checkpoints/*.ckpt"))
    mib = checkpoints[0].stat().st_size / 2**20
    for checkpoint in checkpoints:  # a base-sized one holds the upstream too: 360 MiB each
        checkpoint.unlink()
    profile = {}
    for line in log.read_text().splitlines():  # |  action  |  mean (s)  |  calls  |  total (s)  |  %  |
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[3].replace(".", "", 1).isdigit():
            profile[cells[0]] = float(cells[3])
    return Fit(seconds, f"{100 * float(uas[-1]):.1f}" if uas else "?", mib, profile)


def epoch_split(run: Fit, epochs: int, epoch: float) -> list[float]:
    """Seconds per epoch: whole, fetching batches, steps (train + valid), checkpoint writes, the rest; and the fit's
    start-up and end (everything that does not grow with the epochs)."""
    p = run.profile
    fetch = (p["[_TrainingEpochLoop].train_dataloader_next"] + p["[_EvaluationLoop].val_next"]) / epochs
    steps = (p["run_training_batch"] + p["[Strategy]SingleDeviceStrategy.validation_step"]) / epochs
    save = p["save_checkpoint"] / epochs
    return [epoch, fetch, steps, save, epoch - fetch - steps - save, run.seconds - epochs * epoch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstreams", default=f"{BASE},tiny_hubert", help=f"comma-separated; {BASE} or strata names")
    parser.add_argument("--epochs", default="5,20", help="comma-separated epoch counts (default 5,20)")
    parser.add_argument("--config", default=str(ROOT / "egs/mini/conf/emotion.yaml"))
    parser.add_argument("--train", default=str(MINI / "train.jsonl"))
    parser.add_argument("--valid", default=str(MINI / "valid.jsonl"))
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="the cache's type")
    parser.add_argument("--num-workers", type=int, default=0, help="--data.num_workers of every fit (default 0)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the fits and extraction run")
    parser.add_argument("--threads", type=int, help="torch threads, here and in every command (OMP_NUM_THREADS)")
    parser.add_argument("--profile", action="store_true",
                        help="every fit under Lightning's simple profiler, for the table of where an epoch goes (needs "
                             "two epoch counts); its hooks cost a cached fit about 6 s in 20 epochs, so the timed "
                             "ratios are measured without it")  # fmt: skip
    parser.add_argument("--workdir", help="where caches and runs go; a temporary folder (removed) when omitted")
    args = parser.parse_args()
    epochs = [int(n) for n in args.epochs.split(",")]
    if args.threads:
        ENVIRONMENT["OMP_NUM_THREADS"] = ENVIRONMENT["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata_cache_speedup_"))
    workdir.mkdir(parents=True, exist_ok=True)
    strata(["upstreams"], workdir / "warm-up.log")  # imports and the audio files in the page cache alike for all
    for path in (args.train, args.valid):
        from recipes.data import read_manifest

        for entry in read_manifest(path).entries:
            Path(entry["audio"]).read_bytes()
    rows, runs = [], {}
    for name in args.upstreams.split(","):
        upstream = random_upstream(name, workdir)
        cache = workdir / f"cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        command = ["extract", "--upstream", upstream, "--manifest", args.train, args.valid, "--out", str(cache),
                   "--dtype", args.dtype, "--device", args.device, "--autocast", "fp32"]  # fmt: skip
        extract = strata(command, workdir / f"extract_{name}.log")
        for n in epochs:
            live = runs[name, n, "live"] = fit(upstream, n, workdir / f"live_{name}_{n}", args)
            cached = runs[name, n, "cached"] = fit(upstream, n, workdir / f"cached_{name}_{n}", args, cache)
            total = extract + cached.seconds
            rows.append([name, n, f"{live.seconds:.0f}", f"{extract:.0f}", f"{cached.seconds:.0f}", f"{total:.0f}",
                         f"{live.seconds / total:.2f}x", f"{live.ua} / {cached.ua}"])  # fmt: skip
            print(f"{name}, {n} epochs: live {live.seconds:.0f} s, extract {extract:.0f} s, "
                  f"cached {cached.seconds:.0f} s", flush=True)  # fmt: skip
    versions = f"torch {torch.__version__}, transformers {__import__('transformers').__version__}"
    settings = f"{torch.get_num_threads()} threads, --data.num_workers {args.num_workers}, {args.dtype} cache"
    print(f"\n{versions}, {settings}\n")
    header = ["upstream", "epochs", "live fit (s)", "extract (s)", "cached fit (s)", "extract + cached (s)",
              "speed-up", "valid UA % live / cached"]  # fmt: skip
    print(markdown_table(header, rows))
    if len(epochs) >= 2 and args.profile:
        name, lo, hi = args.upstreams.split(",")[0], min(epochs), max(epochs)
        splits = {}
        for kind in ("live", "cached"):
            epoch = (runs[name, hi, kind].seconds - runs[name, lo, kind].seconds) / (hi - lo)
            splits[kind] = epoch_split(runs[name, hi, kind], hi, epoch)
        mib = runs[name, hi, "cached"].checkpoint_mib
        parts = ["one epoch (difference of the two fits / epochs)", "- fetching batches (audio / cache), train + valid",
                 "- steps: (upstream +) interface + head, train + valid", f"- checkpoint writes ({mib:.0f} MiB each)",
                 "- the rest (logging, metrics, loop)", "start-up and end of the fit"]  # fmt: skip
        table = [[part, f"{splits['live'][i]:.1f}", f"{splits['cached'][i]:.1f}"] for i, part in enumerate(parts)]
        table.append(
            ["speed-up limit as N grows (live / cached epoch)", "", f"{splits['live'][0] / splits['cached'][0]:.1f}x"]
        )
        print(f"\nWhere the time goes: {name}, seconds per epoch (Lightning's simple profiler, {hi}-epoch fits)\n")
        print(markdown_table(["part", "live", "cached"], table))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
