"""`strata speed`: how fast upstreams run, side by side on one batch (a distilled student against its teacher, a
small model against a base one): parameters, median forward time, real-time factor and the ratio to the first.

Every upstream gets the same seeded batch of `batch_size` clips of noise, lengths spread between half of `seconds` and
`seconds` (padding as a real batch has it); one untimed warm-up call, then the median of `repeats` timed calls, run
frozen (no autograd) as extraction and frozen training run it. On a GPU each call is synchronised.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from upstream import build_upstream
from upstream.base import lengths_to_mask

from .cache import resolve_device


@dataclass
class Speed:
    upstream: str
    parameters: int
    hidden_states: int
    seconds: float  # median of one forward of the batch
    audio_seconds: float  # valid audio in the batch

    @property
    def real_time_factor(self) -> float:
        """Seconds of compute per second of audio (below 1: faster than real time)."""
        return self.seconds / self.audio_seconds


def noise_batch(batch_size: int, seconds: float, sample_rate: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`wavs [B, S]` of quiet noise, zero past `lengths [B]`, which spread from half of `seconds` to `seconds`."""
    longest = int(seconds * sample_rate)
    lengths = torch.linspace(longest // 2, longest, batch_size).long()
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.randn(batch_size, longest, generator=generator) * 0.1 * lengths_to_mask(lengths, longest)
    return wavs, lengths


def time_upstream(
    name: str, batch_size: int = 4, seconds: float = 10.0, repeats: int = 5, device: str = "auto"
) -> Speed:
    """One upstream's median forward time on `noise_batch`."""
    if repeats < 1 or batch_size < 1 or seconds <= 0:
        raise ValueError(f"repeats and batch_size must be >= 1 and seconds > 0; got {repeats}, {batch_size}, {seconds}")
    target = resolve_device(device)
    upstream = build_upstream(name).to(target)
    wavs, lengths = noise_batch(batch_size, seconds, upstream.sample_rate)
    wavs, lengths = wavs.to(target), lengths.to(target)

    def forward() -> int:
        states = len(upstream(wavs, lengths).hidden_states)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        return states

    states = forward()  # warm-up: lazy initialisation, allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return Speed(
        upstream=name,
        parameters=sum(p.numel() for p in upstream.parameters()),
        hidden_states=states,
        seconds=statistics.median(times),
        audio_seconds=float(lengths.sum()) / upstream.sample_rate,
    )


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def speed_table(speeds: Sequence[Speed]) -> tuple[list[str], list[list[object]]]:
    """Header and rows of the markdown table `strata speed` prints; ratios are against the first upstream."""
    first = speeds[0]
    header = ["upstream", "parameters (M)", "vs first", "hidden states", "forward (ms)", "vs first", "real-time factor"]
    rows = [
        [s.upstream, f"{s.parameters / 1e6:.2f}", ratio(s.parameters, first.parameters), s.hidden_states,
         f"{s.seconds * 1000:.1f}", ratio(s.seconds, first.seconds), f"{s.real_time_factor:.4f}"]
        for s in speeds
    ]  # fmt: skip
    return header, rows
