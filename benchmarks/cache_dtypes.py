"""The feature cache's stored types side by side: disk per hour of audio per layer and the error of each against
float32 (relative RMS over every cached value, and the worst layer's), on the same extraction.

    python benchmarks/cache_dtypes.py [--manifest M] [--upstream base_random] [--threads 2]

`base_random` is extract_throughput.py's base-sized random HuBERT (12 x 768); any other name is a strata upstream.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from random_models import BASE, random_upstream  # noqa: E402

from recipes.cache import DTYPES, FeatureCache, extract  # noqa: E402
from recipes.results import markdown_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(ROOT / "egs/mini/data/mini/emotion/test.jsonl"))
    parser.add_argument("--upstream", default=BASE, help=f"{BASE} or a strata upstream name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="where the caches go; a temporary folder (removed) when omitted")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata_dtypes_"))
    name = random_upstream(args.upstream, workdir)
    caches = {}
    for dtype in ["float32", *sorted(set(DTYPES) - {"float32"})]:
        out = workdir / dtype
        extract(name, [args.manifest], out, "all", dtype, progress=False)
        caches[dtype] = FeatureCache(out)
    reference = caches["float32"]
    rows = []
    for dtype, cache in caches.items():
        layers = len(reference.index.layers)
        errors, norms = torch.zeros(layers, dtype=torch.float64), torch.zeros(layers, dtype=torch.float64)
        for utterance in reference.index.utterances:
            exact = reference.hidden(utterance).double()
            errors += (cache.hidden(utterance).double() - exact).pow(2).sum(dim=(1, 2))
            norms += exact.pow(2).sum(dim=(1, 2))
        overall = float((errors.sum() / norms.sum()).sqrt())
        worst = (errors / norms).sqrt()
        rows.append([dtype, f"{cache.bytes_per_hour_per_layer() / 2**20:.1f}", f"{overall:.2e}",
                     f"{float(worst.max()):.2e} (layer {int(worst.argmax())})"])  # fmt: skip
    seconds = reference.index.seconds
    print(f"{args.upstream}, {args.manifest} ({seconds:.0f} s, {len(reference.index.utterances)} utterances)\n")
    print(markdown_table(["dtype", "MiB / h / layer", "relative RMS error", "worst layer"], rows))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
