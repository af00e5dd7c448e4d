"""Peak memory of a cached fit as the cache grows: the shards are memory-mapped, so what the process owns (anonymous
memory) stays flat while the cache's file pages it touched come and go with the page cache.

The mini corpus's emotion train and valid manifests repeated k times (ids `<id>#<r>`), a cache of the base-sized
random HuBERT for them (random float16 values of the right shapes: memory does not depend on them, and extracting
k x 14 minutes of audio would take k x 2 minutes), and one `strata fit --data.features` epoch per k. A thread
samples the fit's /proc/<pid>/status every 50 ms: peak VmRSS, RssAnon (heap, tensors: what a bigger cache must not
grow) and RssFile (mapped files: the shards read, reclaimable).

    python benchmarks/cached_fit_memory.py [--scales 1,4] [--epochs 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from random_models import random_upstream  # noqa: E402

from recipes.cache import CacheIndex, _save_shard, _shard_key, file_sha256, plan_shards, upstream_fingerprint  # noqa: E402
from recipes.data import read_manifest, write_jsonl  # noqa: E402
from recipes.results import markdown_table  # noqa: E402
from upstream import build_upstream  # noqa: E402

MINI = ROOT / "egs/mini/data/mini/emotion"


def repeated(manifest: Path, times: int, out: Path) -> Path:
    entries = read_manifest(manifest).entries
    copies = [{**e, "id": f"{e['id']}#{r}", "audio": str(Path(e["audio"]).resolve())} for r in range(times)
              for e in entries]  # fmt: skip
    return write_jsonl(out, copies)


def random_cache(name: str, manifests: list[Path], out: Path) -> CacheIndex:
    """A cache in `strata extract`'s format for `name` over `manifests`, every layer, float16 random values."""
    upstream = build_upstream(name).eval()
    entries = [e for m in manifests for e in read_manifest(m).entries]
    layers = list(range(upstream.num_layers))
    plan = plan_shards(entries, 600.0)
    names, utterances = [], {}
    generator = torch.Generator().manual_seed(0)
    for number, shard in enumerate(plan):
        frames = upstream.frame_lengths(torch.tensor([round(float(e["duration"]) * 16000) for e in shard]))
        pieces = [torch.randn(len(layers), int(f), upstream.hidden_size, generator=generator).half() for f in frames]
        names.append(f"shard_{number:05d}.safetensors")
        offsets = _save_shard(pieces, shard, out / names[-1], _shard_key(shard, "random"), torch.float16)
        utterances.update({e["id"]: [number, *offsets[e["id"]]] for e in shard})
    index = CacheIndex(upstream=name, fingerprint=upstream_fingerprint(upstream), num_layers=upstream.num_layers,
                       hidden_size=upstream.hidden_size, frame_rate=upstream.frame_rate, layers=layers,
                       dtype="float16", manifests={os.path.abspath(m): file_sha256(m) for m in manifests},
                       shards=names, utterances=utterances,
                       seconds=sum(float(e["duration"]) for e in entries))  # fmt: skip
    index.write(out)
    return index


def peak_memory(command: list[str], log: Path, environment: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Run `command`; its wall time and the peaks (MiB) of VmRSS, RssAnon and RssFile, sampled every 50 ms."""
    peaks = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=environment)

        def sample() -> None:
            while process.poll() is None:
                try:
                    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                        key, _, value = line.partition(":")
                        if key in peaks:
                            peaks[key] = max(peaks[key], int(value.split()[0]) / 1024)
                except (OSError, ValueError, IndexError):
                    pass
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        process.wait()
        sampler.join()
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return time.perf_counter() - start, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4", help="how many times the manifests are repeated, one fit each")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", help="kept when given; a temporary folder (removed) otherwise")
    args = parser.parse_args()
    if not (MINI / "train.jsonl").is_file():
        sys.exit(f"{MINI} has no manifests: make the mini corpus first (bash egs/mini/run.sh --stop_stage 0)")
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    name = random_upstream("base_random", workdir)
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for scale in [int(s) for s in args.scales.split(",")]:
        train = repeated(MINI / "train.jsonl", scale, workdir / f"train_x{scale}.jsonl")
        valid = repeated(MINI / "valid.jsonl", scale, workdir / f"valid_x{scale}.jsonl")
        cache = workdir / f"cache_x{scale}"
        if not (cache / "index.json").is_file():
            random_cache(name, [train, valid], cache)
        size = sum(p.stat().st_size for p in cache.glob("shard_*")) / 2**30
        run = workdir / f"fit_x{scale}"
        shutil.rmtree(run, ignore_errors=True)
        command = [sys.executable, "-m", "recipes.cli", "fit", "--config", "egs/mini/conf/emotion.yaml",
                   "--model.upstream.name", name, "--data.train", str(train), "--data.valid", str(valid),
                   "--data.features", str(cache), "--trainer.max_epochs", str(args.epochs),
                   "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]  # fmt: skip
        seconds, peaks = peak_memory(command, workdir / f"fit_x{scale}.log", environment)
        hours = CacheIndex.read(cache).seconds / 3600
        rows.append([f"x{scale}", f"{hours:.2f}", f"{size:.2f}", f"{seconds:.0f}", f"{peaks['VmRSS']:.0f}",
                     f"{peaks['RssAnon']:.0f}", f"{peaks['RssFile']:.0f}"])  # fmt: skip
    print(f"base-sized random HuBERT, every layer, float16; {args.epochs} epoch(s), {args.threads} thread(s)\n")
    print(markdown_table(["manifests", "audio (h)", "cache (GiB)", "fit (s)", "peak RSS (MiB)", "peak anonymous (MiB)",
                          "peak file-backed (MiB)"], rows))  # fmt: skip
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
