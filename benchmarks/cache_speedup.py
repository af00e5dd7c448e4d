"""Extract once, train many times: `strata fit` from audio vs `strata extract` + `strata fit --data.features` (CPU).

The mini corpus's frozen-upstream emotion fit (egs/mini/conf/emotion.yaml) for N epochs, each command in its own
process so every time includes its start-up, as a user sees it: live (audio -> upstream every batch, train and
valid) vs one extraction of the train + valid manifests (reused for every N, counted in every ratio) followed by a
fit from the cache. For the first upstream, the split of a cached epoch: per-epoch and start-up costs from the two
fits' difference, and, in this process, one pass of the cached train + valid loaders, one epoch of interface + head
compute on those batches, one checkpoint write, and building + fingerprinting the upstream (which a cached fit does).

    python benchmarks/cache_speedup.py [--upstreams base_random,tiny_hubert] [--epochs 5,20] [--workdir DIR]

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from recipes.cli import markdown_table  # noqa: E402

BASE = "base_random"
MINI = ROOT / "egs/mini/data/mini/emotion"


def base_random(folder: Path) -> str:
    """A base-sized random-initialised HuBERT saved under `folder` (once): its upstream name."""
    if not (folder / "config.json").is_file():
        from transformers import HubertConfig, HubertModel

        torch.manual_seed(0)
        HubertModel(HubertConfig()).save_pretrained(folder)
    return f"hf:{folder}"


def strata(arguments: list[str], log: Path) -> float:
    """Wall time of `python -m recipes.cli ARGUMENTS` (output to `log`); exits with the log's tail if it fails."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "recipes.cli", *arguments], cwd=ROOT, stdout=handle,
                              stderr=subprocess.STDOUT, env=os.environ)  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"strata {' '.join(arguments)} failed:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return elapsed


def fit(upstream: str, epochs: int, run: Path, args: argparse.Namespace, features: Path | None = None) -> float:
    shutil.rmtree(run, ignore_errors=True)
    options = {"config": args.config, "model.upstream.name": upstream, "data.train": args.train,
               "data.valid": args.valid, "data.num_workers": args.num_workers, "trainer.max_epochs": epochs,
               "trainer.default_root_dir": run, "trainer.enable_progress_bar": "false",
               "data.features": features}  # fmt: skip
    arguments = [str(x) for key, value in options.items() if value is not None for x in (f"--{key}", value)]
    seconds = strata(["fit", *arguments], run.with_suffix(".log"))
    for checkpoint in run.glob("checkpoints/*.ckpt"):  # a base-sized one holds the upstream: 360 MiB each
        checkpoint.unlink()
    return seconds


def final_ua(run: Path) -> str:
    """The last epoch's valid/UA in the run's CSV log (a check that both fits train alike)."""
    with open(run / "logs/version_0/metrics.csv") as handle:
        values = [row["valid/UA"] for row in csv.DictReader(handle) if row.get("valid/UA")]
    return f"{100 * float(values[-1]):.1f}" if values else "?"


def cached_epoch_parts(upstream: str, cache: Path, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Seconds of: building + fingerprinting the upstream, one pass of the cached train + valid loaders, one epoch
    of interface + head compute on those batches (train step with backward, valid forward), one checkpoint write."""
    from torch.utils.data import DataLoader

    from recipes.cache import CachedFeatureDataset, FeatureCache, FeatureCollate, upstream_fingerprint
    from recipes.data import BucketBatchSampler, read_manifest
    from recipes.module import InterfaceConfig, SSLTaskModule, UpstreamConfig
    from recipes.tasks import task_class

    config = yaml.safe_load(Path(args.config).read_text())
    model = config["model"]
    task = task_class(model["task"]["class_path"])(**model["task"].get("init_args", {}))
    parts, start = {}, time.perf_counter()
    module = SSLTaskModule(task, UpstreamConfig(upstream), InterfaceConfig(model["interface"]["name"]),
                           lr=model["lr"], feature_norm=model.get("feature_norm", False))  # fmt: skip
    upstream_fingerprint(module.upstream)
    parts["build"] = time.perf_counter() - start
    features, loaded = FeatureCache(cache), {}
    start = time.perf_counter()
    for split, path in [("train", args.train), ("valid", args.valid)]:
        manifest = read_manifest(path)
        crop = task.train_crop_seconds if split == "train" else None
        dataset = CachedFeatureDataset(manifest, features, task.targets(manifest, split), crop)
        sampler = BucketBatchSampler(dataset.durations, config["data"]["max_batch_seconds"], shuffle=split == "train")
        collate = FeatureCollate(task.collate_targets)
        loaded[split] = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
    parts["load"] = time.perf_counter() - start
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=model["lr"])
    start = time.perf_counter()
    module.train()
    for batch in loaded["train"]:
        loss = task.loss(module.head(*module.batch_inputs(batch)), batch["targets"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        for batch in loaded["valid"]:
            module.head(*module.batch_inputs(batch))
    parts["compute"] = time.perf_counter() - start
    start = time.perf_counter()
    torch.save({"state_dict": module.state_dict()}, workdir / "checkpoint.ckpt")
    parts["checkpoint"] = time.perf_counter() - start
    parts["checkpoint_mib"] = (workdir / "checkpoint.ckpt").stat().st_size / 2**20
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstreams", default=f"{BASE},tiny_hubert", help=f"comma-separated; {BASE} or strata names")
    parser.add_argument("--epochs", default="5,20", help="comma-separated epoch counts (default 5,20)")
    parser.add_argument("--config", default=str(ROOT / "egs/mini/conf/emotion.yaml"))
    parser.add_argument("--train", default=str(MINI / "train.jsonl"))
    parser.add_argument("--valid", default=str(MINI / "valid.jsonl"))
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="the cache's type")
    parser.add_argument("--num-workers", type=int, default=0, help="--data.num_workers of every fit (default 0)")
    parser.add_argument("--threads", type=int, help="torch threads, here and in every command (OMP_NUM_THREADS)")
    parser.add_argument("--workdir", help="where caches and runs go; a temporary folder (removed) when omitted")
    args = parser.parse_args()
    epochs = [int(n) for n in args.epochs.split(",")]
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata_cache_speedup_"))
    workdir.mkdir(parents=True, exist_ok=True)
    strata(["upstreams"], workdir / "warm-up.log")  # imports and the audio files in the page cache alike for all
    for path in (args.train, args.valid):
        from recipes.data import read_manifest

        for entry in read_manifest(path).entries:
            Path(entry["audio"]).read_bytes()
    rows, per_run = [], {}
    for name in args.upstreams.split(","):
        upstream = base_random(workdir / BASE) if name == BASE else name
        cache = workdir / f"cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        extract = strata(["extract", "--upstream", upstream, "--manifest", args.train, args.valid, "--out", str(cache),
                          "--dtype", args.dtype, "--device", "cpu"], workdir / f"extract_{name}.log")  # fmt: skip
        for n in epochs:
            live = fit(upstream, n, workdir / f"live_{name}_{n}", args)
            cached = fit(upstream, n, workdir / f"cached_{name}_{n}", args, features=cache)
            per_run[name, n] = live, cached
            uas = f"{final_ua(workdir / f'live_{name}_{n}')} / {final_ua(workdir / f'cached_{name}_{n}')}"
            rows.append([name, n, f"{live:.0f}", f"{extract:.0f}", f"{cached:.0f}", f"{extract + cached:.0f}",
                         f"{live / (extract + cached):.2f}x", uas])  # fmt: skip
            print(f"{name}, {n} epochs: live {live:.0f} s, extract {extract:.0f} s, cached {cached:.0f} s", flush=True)
    versions = f"torch {torch.__version__}, transformers {__import__('transformers').__version__}"
    settings = f"{torch.get_num_threads()} threads, --data.num_workers {args.num_workers}, {args.dtype} cache"
    print(f"\n{versions}, {settings}\n")
    header = ["upstream", "epochs", "live fit (s)", "extract (s)", "cached fit (s)", "extract + cached (s)",
              "speed-up", "valid UA % live / cached"]  # fmt: skip
    print(markdown_table(header, rows))
    name = args.upstreams.split(",")[0]
    if len(epochs) >= 2:
        lo, hi = min(epochs), max(epochs)
        (live_lo, cached_lo), (live_hi, cached_hi) = per_run[name, lo], per_run[name, hi]
        live_epoch, cached_epoch = (live_hi - live_lo) / (hi - lo), (cached_hi - cached_lo) / (hi - lo)
        upstream = base_random(workdir / BASE) if name == BASE else name
        parts = cached_epoch_parts(upstream, workdir / f"cache_{name}", args, workdir)
        split = [
            ["live fit: one epoch (from its two fits)", f"{live_epoch:.1f}"],
            ["live fit: start-up and end", f"{live_lo - lo * live_epoch:.1f}"],
            ["cached fit: one epoch (from its two fits)", f"{cached_epoch:.1f}"],
            ["- reading the cache: train + valid loaders, one pass", f"{parts['load']:.1f}"],
            ["- interface + head: train steps (backward, Adam) + valid forward", f"{parts['compute']:.1f}"],
            [f"- one checkpoint write ({parts['checkpoint_mib']:.0f} MiB: upstream too)", f"{parts['checkpoint']:.1f}"],
            ["cached fit: start-up and end", f"{cached_lo - lo * cached_epoch:.1f}"],
            ["- building + fingerprinting the upstream", f"{parts['build']:.1f}"],
            ["limit of the speed-up as N grows (live epoch / cached epoch)", f"{live_epoch / cached_epoch:.1f}x"],
        ]  # fmt: skip
        print(f"\nWhere the time goes ({name}; seconds)\n")
        print(markdown_table(["part", "s"], split))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
