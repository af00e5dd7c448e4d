"""The most padded audio one batch can hold on this GPU before out-of-memory: a frozen forward (extraction, a frozen
fit) and a fine-tuning step (forward and backward through every layer), fp32 and bf16 autocast, for the random
HuBERTs of base and large size. `--max-batch-seconds` / `--batch-seconds` are chosen from these figures.

Batches of 10 s clips, doubled until the first out-of-memory, then halved between the last that fit and it, down to
one clip. Also the throughput (audio-s/s) of the largest batch that fit.

    python benchmarks/gpu_batch_limit.py [--sizes base_random,large_random] [--clip-seconds 10] [--cap 2560]
"""

from __future__ import annotations

import argparse
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


def step(model: torch.nn.Module, clips: int, samples: int, train: bool, bf16: bool, device: torch.device) -> float:
    """One batch of `clips` x `samples`; its seconds. Raises torch.OutOfMemoryError when it does not fit."""
    wavs = torch.randn(clips, samples, device=device)
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with precision, nullcontext() if train else torch.no_grad():
        states = model(wavs, output_hidden_states=True).hidden_states
        if train:
            sum(state.float().pow(2).mean() for state in states).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def fits(model, clips, samples, train, bf16, device) -> float | None:
    try:
        return step(model, clips, samples, train, bf16, device)
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest(model, samples: int, cap: int, train: bool, bf16: bool, device) -> tuple[int, float | None]:
    """The most clips that fit (up to `cap`) and that batch's seconds."""
    good, bad, seconds = 0, None, None
    clips = 1
    while clips <= cap:
        took = fits(model, clips, samples, train, bf16, device)
        if took is None:
            bad = clips
            break
        good, seconds = clips, took
        clips *= 2
    if bad is None:
        return good, seconds
    while bad - good > 1:
        middle = (good + bad) // 2
        took = fits(model, middle, samples, train, bf16, device)
        if took is None:
            bad = middle
        else:
            good, seconds = middle, took
    return good, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="base_random,large_random")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--cap", type=int, default=256, help="most clips tried (default 256: 2560 s of 10 s clips)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    samples = int(args.clip_seconds * 16000)
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        model = HubertModel(HubertConfig(**CONFIGS[size])).to(device)
        for train in (False, True):
            model.train(train)
            for bf16 in (False, True):
                clips, seconds = largest(model, samples, args.cap, train, bf16, device)
                audio = clips * args.clip_seconds
                rate = f"{audio / seconds:.0f}" if seconds else "-"
                capped = " (cap)" if clips == args.cap else ""
                rows.append([LABELS[size], "fine-tune step" if train else "frozen forward", "bf16" if bf16 else "fp32",
                             f"{audio:.0f}{capped}", rate])  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.clip_seconds:g} s clips, {time.strftime('%Y-%m-%d')}\n")
    print(markdown_table(["model", "pass", "precision", "largest batch (audio s)", "audio-s/s at that batch"], rows))


if __name__ == "__main__":
    main()
