"""What the Upstream wrapper costs over calling the transformers model directly on the same batch (CPU).

The wrapper checks the input, masks or normalises the waveform, computes frame lengths and hands back the layer
list; all of that should vanish next to the encoder itself. Target: ratio <= 1.05.

    python benchmarks/upstream_overhead.py [--repeats 10] [--threads 2] [--families]

`--families` adds the tiny (4 x 64) model of every other transformers family strata reads. For Whisper and w2v-BERT,
which read spectral features, the bare call includes the checkpoint's own feature extractor (numpy, as a transformers
user runs it) and the wrapper its torch twin of it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoConfig, AutoModel, SeamlessM4TFeatureExtractor, WhisperFeatureExtractor

from upstream import build_upstream
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
        wavs, lengths = batch(size, seconds, generator)
        report(name, size, seconds, *waveform_calls(model_type, overrides, wavs, lengths), args.repeats)
    if args.families:
        for name, calls in FEATURE_CASES.items():
            wavs, lengths = batch(8, 3.0, generator)
            report(name, 8, 3.0, *calls(wavs, lengths), args.repeats)


def waveform_calls(model_type: str, overrides: dict, wavs: torch.Tensor, lengths: torch.Tensor):
    """(bare, wrapped) calls of a raw-waveform family on one batch."""
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **overrides)).eval()
    mask_needed = expects_attention_mask(model.config)
    upstream = HFUpstream(model, normalize=mask_needed, use_attention_mask=mask_needed)
    mask = lengths_to_mask(lengths, wavs.size(1)).long() if mask_needed else None

    def bare():
        with torch.no_grad():
            return model(wavs, attention_mask=mask, output_hidden_states=True).hidden_states

    return bare, lambda: upstream(wavs, lengths).hidden_states


def clips(wavs: torch.Tensor, lengths: torch.Tensor) -> list:
    return [wav[:n].numpy() for wav, n in zip(wavs, lengths.tolist(), strict=True)]


def whisper_calls(wavs: torch.Tensor, lengths: torch.Tensor):
    upstream = build_upstream("tiny_whisper")  # the real 30 s window
    extractor = WhisperFeatureExtractor(feature_size=upstream.encoder.config.num_mel_bins)

    def bare():
        features = extractor(clips(wavs, lengths), sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            return upstream.encoder(features, output_hidden_states=True).hidden_states

    return bare, lambda: upstream(wavs, lengths).hidden_states


def w2v_bert_calls(wavs: torch.Tensor, lengths: torch.Tensor):
    upstream = build_upstream("tiny_w2v_bert")
    extractor = SeamlessM4TFeatureExtractor()

    def bare():
        inputs = extractor(clips(wavs, lengths), sampling_rate=16000, return_tensors="pt", padding=True)
        with torch.no_grad():
            return upstream.model(inputs.input_features, attention_mask=inputs.attention_mask,
                                  output_hidden_states=True).hidden_states  # fmt: skip

    return bare, lambda: upstream(wavs, lengths).hidden_states


FEATURE_CASES = {"tiny whisper (30 s windows)": whisper_calls, "tiny w2v-bert": w2v_bert_calls}


def report(name: str, size: int, seconds: float, bare, wrapped, repeats: int) -> None:
    for _ in range(2):  # warm-up
        bare(), wrapped()
    bare_times, wrapped_times = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        bare_times.append(median_ms(bare, 1))
        wrapped_times.append(median_ms(wrapped, 1))
    b, w = statistics.median(bare_times), statistics.median(wrapped_times)
    print(f"| {name} | {size} x <= {seconds:g} s | {b:.1f} | {w:.1f} | {w / b:.3f} |")


if __name__ == "__main__":
    main()
