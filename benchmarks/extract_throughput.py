"""Audio-seconds per second of `strata extract` vs a bare transformers forward loop over the same batches (CPU).

`recipes.cache.extract` (all layers, float16, written to disk) against `model(wavs, attention_mask=...,
output_hidden_states=True)` under `no_grad` over the same length-bucketed batches (the same shard plan and
`batch_seconds`), with the audio read beforehand and nothing written. The extract time is the whole call: building
the upstream from its files, fingerprinting its weights, reading the audio, the forward passes and writing the
shards. Also against the bare loop that reads each batch's files itself before its forward (what extraction has to
do), and the cache's size on disk per hour of audio per layer, float16 and float32. Target: ratio >= 0.95 against
the first, >= 1.0 against the second (extraction reads the next batches in a worker while the model runs).

    python benchmarks/extract_throughput.py [--manifest M] [--upstreams base_random,tiny_hubert] [--repeats 3] \
        [--resave 44100]

`base_random` is a base-sized HuBERT (12 x 768, `transformers.HubertConfig()` defaults) with random weights, saved
to a transformers directory and loaded as `hf:<dir>`; any other name is a strata upstream.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import soundfile  # noqa: E402
import torch  # noqa: E402
from random_models import BASE, LABELS, random_upstream  # noqa: E402
from transformers import AutoModel  # noqa: E402

from recipes.audio import read_audio  # noqa: E402
from recipes.cache import DEFAULT_BATCH_SECONDS, FeatureCache, extract, plan_shards, upstream_fingerprint  # noqa: E402
from recipes.data import bucket_batches, read_manifest, write_jsonl  # noqa: E402
from recipes.results import markdown_table  # noqa: E402
from upstream import build_upstream  # noqa: E402
from upstream.base import lengths_to_mask  # noqa: E402
from upstream.hf import expects_attention_mask  # noqa: E402


def bare_model(upstream_name: str) -> torch.nn.Module:
    """The transformers model inside a strata upstream (for `hf:<dir>`, loaded from the directory itself)."""
    if upstream_name.startswith("hf:"):
        return AutoModel.from_pretrained(upstream_name[3:], dtype=torch.float32).eval()
    return build_upstream(upstream_name).model.eval()


def batch_entries(manifest: str, batch_seconds: float, shard_seconds: float) -> list[list[dict]]:
    """`extract`'s batches of `manifest`: the manifest entries of each."""
    return [[shard[i] for i in batch] for shard in plan_shards(read_manifest(manifest).entries, shard_seconds)
            for batch in bucket_batches([float(e["duration"]) for e in shard], batch_seconds)]  # fmt: skip


def read_batch(entries: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch read and padded: (wavs [B, S], lengths [B])."""
    wavs = [read_audio(e["audio"], 16000, e.get("start"), e.get("end")) for e in entries]
    lengths = torch.tensor([w.numel() for w in wavs])
    padded = torch.zeros(len(wavs), int(lengths.max()))
    for row, wav in enumerate(wavs):
        padded[row, : wav.numel()] = wav
    return padded, lengths


def batches(manifest: str, batch_seconds: float, shard_seconds: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`extract`'s batches of `manifest`, read and padded."""
    return [read_batch(entries) for entries in batch_entries(manifest, batch_seconds, shard_seconds)]


def resaved(manifest: str, rate: int, folder: Path) -> Path:
    """`manifest`'s clips re-saved as 16-bit FLAC at `rate` Hz under `folder`, and a manifest of them: audio that
    costs something to read (decoding, and resampling back to the model's 16 kHz), as CD-rate or compressed corpora
    do. The mini corpus's 16 kHz WAV costs next to nothing to read from the page cache."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in read_manifest(manifest).entries:
        wav = read_audio(entry["audio"], rate, entry.get("start"), entry.get("end"))
        path = folder / f"{entry['id']}.flac"
        soundfile.write(str(path), wav.numpy(), rate, subtype="PCM_16")
        entries.append({k: v for k, v in entry.items() if k not in ("start", "end")} | {"audio": str(path)})
    return write_jsonl(folder / "manifest.jsonl", entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(ROOT / "egs/mini/data/mini/emotion/train.jsonl"))
    parser.add_argument("--upstreams", default=f"{BASE},tiny_hubert", help=f"comma-separated; {BASE} or strata names")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved bare / extract runs; the median is shown")
    parser.add_argument("--batch-seconds", type=float, default=DEFAULT_BATCH_SECONDS["cpu"],
                        help="both sides' padded audio per batch (default: extract's on a CPU, 20)")  # fmt: skip
    parser.add_argument("--shard-seconds", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both loops run")
    parser.add_argument("--autocast", default="fp32", choices=["fp32", "bf16"], help="both loops' precision")
    parser.add_argument("--workdir", help="where the caches (and base_random) go; a temporary folder when omitted")
    parser.add_argument("--resave", type=int, metavar="RATE",
                        help="first re-save the manifest's clips as FLAC at RATE Hz (e.g. 44100): both loops then "
                             "decode and resample them")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata_extract_"))
    if args.resave:
        args.manifest = str(resaved(args.manifest, args.resave, workdir / f"flac_{args.resave}"))
    seconds = sum(float(e["duration"]) for e in read_manifest(args.manifest).entries)
    kind = torch.device(args.device).type
    precision = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if args.autocast == "bf16" else nullcontext
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.device}, {args.autocast}; "
        f"{args.manifest}: {seconds:.0f} s of audio; "
        f"median of {args.repeats} interleaved runs\n"
    )
    rows, spread = [], []
    for name in args.upstreams.split(","):
        upstream_name = random_upstream(name, workdir)
        model = bare_model(upstream_name).to(args.device)
        use_mask = expects_attention_mask(model.config)
        data = batches(args.manifest, args.batch_seconds, args.shard_seconds)

        def bare(model=model, data=data, use_mask=use_mask) -> None:
            with torch.no_grad(), precision():
                for wavs, lengths in data:
                    mask = lengths_to_mask(lengths, wavs.size(1)).long().to(args.device) if use_mask else None
                    model(wavs.to(args.device), attention_mask=mask, output_hidden_states=True)

        entries = batch_entries(args.manifest, args.batch_seconds, args.shard_seconds)

        def bare_reading(model=model, entries=entries, use_mask=use_mask) -> None:
            with torch.no_grad(), precision():
                for batch in entries:
                    wavs, lengths = read_batch(batch)
                    mask = lengths_to_mask(lengths, wavs.size(1)).long().to(args.device) if use_mask else None
                    model(wavs.to(args.device), attention_mask=mask, output_hidden_states=True)

        def cache(dtype: str, name=name, upstream_name=upstream_name) -> Path:
            out = workdir / f"{name}_{dtype}"
            shutil.rmtree(out, ignore_errors=True)  # a finished cache would be reused, not extracted again
            extract(upstream_name, [args.manifest], out, "all", dtype, args.batch_seconds, args.shard_seconds,
                    args.device, progress=False, autocast=args.autocast)  # fmt: skip
            return out

        def timed(fn, *fn_args) -> float:
            start = time.perf_counter()
            fn(*fn_args)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start

        bare(data=data[:1])  # warm-up
        bare_times, reading_times, extract_times = [], [], []
        for _ in range(args.repeats):
            bare_times.append(timed(bare))
            reading_times.append(timed(bare_reading))
            extract_times.append(timed(cache, "float16"))
        start = time.perf_counter()
        upstream_fingerprint(build_upstream(upstream_name))
        fixed = time.perf_counter() - start
        half = FeatureCache(workdir / f"{name}_float16").bytes_per_hour_per_layer() / 2**20
        full = FeatureCache(cache("float32")).bytes_per_hour_per_layer() / 2**20
        b, x = statistics.median(bare_times), statistics.median(extract_times)
        r = statistics.median(reading_times)
        label = LABELS.get(name, name)
        rows.append([label, f"{seconds / b:.1f}", f"{seconds / r:.1f}", f"{seconds / x:.1f}", f"{b / x:.3f}",
                     f"{r / x:.3f}", f"{fixed:.1f}", f"{half:.1f}", f"{full:.1f}"])  # fmt: skip
        spread.append(
            f"{label}: bare {' '.join(f'{t:.1f}' for t in bare_times)} s; "
            f"bare + reading {' '.join(f'{t:.1f}' for t in reading_times)} s; "
            f"extract {' '.join(f'{t:.1f}' for t in extract_times)} s"
        )
    header = ["upstream", "bare forward (audio-s/s)", "bare forward + reading (audio-s/s)",
              "strata extract (audio-s/s)", "ratio", "ratio vs reading loop", "build + fingerprint (s)",
              "float16 MiB / h / layer", "float32 MiB / h / layer"]  # fmt: skip
    print(markdown_table(header, rows))
    print("\n" + "\n".join(spread))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
