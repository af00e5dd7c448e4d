"""How much faster a distilled student runs than its teacher: the forward of the same 10 s of audio (CPU).

The student is what `strata distill` makes: the teacher's CNN and its first `--student-layers` transformer layers
(`recipes.pretrain.distill.build_student`). Teachers are random-initialised HuBERTs (no download): the tiny 4 x 64
one of the tests and a base-sized 12 x 768 one (`HubertConfig()`'s defaults, HuBERT Base's sizes).

    python benchmarks/distill_speed.py [--seconds 10] [--repeats 10] [--threads 2] [--student-layers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import HubertConfig, HubertModel

from recipes.pretrain.distill import build_student
from upstream.hf import TINY_CONFIG, HFUpstream, expects_attention_mask

CASES = {"tiny (4 x 64)": TINY_CONFIG, "base-sized (12 x 768)": {}}


def forward_ms(upstream: torch.nn.Module, wavs: torch.Tensor) -> float:
    start = time.perf_counter()
    upstream(wavs)
    return (time.perf_counter() - start) * 1000


def parameters(upstream: torch.nn.Module) -> float:
    return sum(p.numel() for p in upstream.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--student-layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wavs = torch.randn(1, int(args.seconds * 16000)) * 0.1
    print("| teacher | params (M) | student | params (M) | teacher (ms) | student (ms) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in CASES.items():
        model = HubertModel(HubertConfig(**overrides)).eval()
        mask = expects_attention_mask(model.config)
        teacher = HFUpstream(model, normalize=mask, use_attention_mask=mask, name=name)
        student = build_student(teacher, args.student_layers).eval()
        with torch.no_grad():
            teacher(wavs), student(wavs)  # warm-up
            # Interleaved, so that a busy moment of the machine hits both alike.
            pairs = [(forward_ms(teacher, wavs), forward_ms(student, wavs)) for _ in range(args.repeats)]
        t, s = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        depth = teacher.num_layers - 1
        print(f"| {name}, {depth} layers | {parameters(teacher):.1f} | {args.student_layers} layers | "
              f"{parameters(student):.1f} | {t:.1f} | {s:.1f} | {t / s:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
