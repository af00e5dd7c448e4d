"""The same frozen forward of a base-sized HuBERT, four ways: eager attention, scaled-dot-product attention (sdpa,
transformers' default for the families that have it), bf16 autocast, and torch.compile; each one's time and its
largest difference from eager float32 over every hidden state (relative to that state's largest magnitude).

    python benchmarks/forward_variants.py [--batch 4] [--seconds 10] [--repeats 5] [--threads 2] [--device cpu]
        [--size base_random|large_random]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from random_models import CONFIGS, LABELS  # noqa: E402
from transformers import HubertConfig, HubertModel  # noqa: E402

from recipes.results import markdown_table  # noqa: E402
from recipes.speed import noise_batch  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> tuple[float, list[torch.Tensor]]:
    out = fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="base_random", choices=sorted(CONFIGS), help="the random HuBERT's size")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes to compile on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wavs, lengths = noise_batch(args.batch, args.seconds, 16000)
    wavs = wavs.to(device)
    torch.manual_seed(0)
    models = {
        name: HubertModel(HubertConfig(**CONFIGS[args.size], attn_implementation=name)).to(device).eval()
        for name in ("eager", "sdpa")
    }
    models["sdpa"].load_state_dict(models["eager"].state_dict())

    def forward(model, autocast=nullcontext):
        def run():
            with torch.no_grad(), autocast():
                return [h.float() for h in model(wavs, output_hidden_states=True).hidden_states]

        return run

    bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    variants = {"eager fp32": forward(models["eager"]), "sdpa fp32": forward(models["sdpa"]),
                "sdpa bf16 autocast": forward(models["sdpa"], bf16)}  # fmt: skip
    if not args.no_compile:
        variants["sdpa fp32 torch.compile"] = forward(torch.compile(models["sdpa"]))
    results = {name: timed(fn, args.repeats, device) for name, fn in variants.items()}
    reference_time, reference = results["eager fp32"]
    rows = []
    for name, (seconds, states) in results.items():
        drift = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(states, reference, strict=True))
        rows.append([name, f"{seconds * 1000:.0f}", f"{reference_time / seconds:.2f}x", f"{drift:.1e}"])
    audio = float(lengths.sum()) / 16000
    print(f"{LABELS[args.size]}, {args.batch} clips of {args.seconds / 2:g}-{args.seconds:g} s ({audio:.0f} s), "
          f"{device}, torch {torch.__version__}, {args.threads} threads, median of {args.repeats}\n")  # fmt: skip
    print(markdown_table(["forward", "ms", "speed vs eager", "max |diff| / max |eager| (any layer)"], rows))


if __name__ == "__main__":
    main()
