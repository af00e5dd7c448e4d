"""What the Upstream wrapper costs over calling the transformers model directly on the same batch (CPU).

The wrapper checks the input, masks or normalises the waveform, computes frame lengths and hands back the layer
list; all of that should vanish next to the encoder itself. Target: ratio <= 1.05.

    python benchmarks/upstream_overhead.py [--repeats 10] [--threads 2] [--families]

`--families` adds the tiny (4 x 64) model of every other transformers family strata reads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoConfig, AutoModel

from upstream.base import lengths_to_mask
from upstream.hf import FAMILIES, TINY_CONFIG, TINY_TYPE_CONFIG, HFUpstream, expects_attention_mask

CASES = {
    # name: (model_type, config overrides, batch size, seconds per utterance (longest; the others shorter))
    "tiny (4 x 64)": ("hubert", TINY_CONFIG, 8, 3.0),
    "base-sized (12 x 768)": ("hubert", {}, 4, 4.0),
}
FAMILY_CASES = {
    f"tiny {model_type}": (model_type, {**TINY_CONFIG, **TINY_TYPE_CONFIG.get(model_type, {})}, 8, 3.0)
    for model_type in FAMILIES
    if model_type != "hubert"
}


def batch(size: int, seconds: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    longest = int(seconds * 16000)
    lengths = torch.linspace(longest // 2, longest, size).long()
    wavs = torch.randn(size, longest, generator=generator) * 0.1 * lengths_to_mask(lengths, longest)
    return wavs, lengths


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", action="store_true", help="also the tiny model of every other family")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} interleaved runs\n")
    print("| model | batch | bare transformers (ms) | strata Upstream (ms) | ratio |")
    print("|---|---|---|---|---|")
    cases = {**CASES, **FAMILY_CASES} if args.families else CASES
    for name, (model_type, overrides, size, seconds) in cases.items():
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.for_model(model_type, **overrides)).eval()
        mask_needed = expects_attention_mask(model.config)
        upstream = HFUpstream(model, normalize=mask_needed, use_attention_mask=mask_needed)
        wavs, lengths = batch(size, seconds, generator)
        mask = lengths_to_mask(lengths, wavs.size(1)).long() if mask_needed else None

        def bare(model=model, wavs=wavs, mask=mask):
            with torch.no_grad():
                return model(wavs, attention_mask=mask, output_hidden_states=True).hidden_states

        def wrapped(upstream=upstream, wavs=wavs, lengths=lengths):
            return upstream(wavs, lengths).hidden_states

        for _ in range(2):  # warm-up
            bare(), wrapped()
        bare_times, wrapped_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            bare_times.append(median_ms(bare, 1))
            wrapped_times.append(median_ms(wrapped, 1))
        b, w = statistics.median(bare_times), statistics.median(wrapped_times)
        print(f"| {name} | {size} x <= {seconds:g} s | {b:.1f} | {w:.1f} | {w / b:.3f} |")


if __name__ == "__main__":
    main()
