"""The frozen-upstream feature cache: run the upstream once, train and probe many times from disk.

`extract` runs an upstream over one or more manifests (one cache keyed by utterance id, so train, valid and test
share it) and stores every requested hidden layer of every utterance, unpadded, in shards:

    <out>/shard_00000.safetensors   one tensor `hidden [L', F, D]`: the frames of its utterances end to end
    <out>/index.json                upstream, fingerprint, layers, dtype, manifest hashes, id -> shard, offset, frames

safetensors files are memory-mapped by the reader (`safe_open`), so reading an utterance copies its frames only.
A shard is written under a temporary name and renamed when complete; the shard plan is a function of the manifests
and `shard_seconds`, so a rerun after a kill skips the finished shards and writes the same index. The index is
written last: a folder without one is an unfinished extraction.

`FeatureCache` reads it back and refuses a cache that does not match the run reading it: another upstream or other
weights (the fingerprint), missing layers, a manifest whose contents changed since extraction, or utterances that
are not in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from upstream.base import Upstream

from . import atomic
from .atomic import atomic_path
from .data import Manifest, bucket_batches, crop_start, read_entry, read_manifest, repeat_to, utterance_seconds
from .distributed import ProcessGroup
from .locking import FolderLock

INDEX = "index.json"
FORMAT = "strata-feature-cache/1"
# int8: each shard's values over the scale of their layer and channel (`scale [L', D]`, the channel's largest
# magnitude in the shard / 127), rounded; a quarter of float32's disk, read back as float32 times the scale.
AUTOCAST = ("auto", "bf16", "fp32")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
# Padded audio per batch when none is given. A GPU wants large batches; on a CPU the convolutional front end's
# activations of a 100 s batch (655 MB per layer for a base model) no longer stay in cache and are page-faulted
# anew every batch: 20 s batches extract 1.2x faster there (benchmarks/README.md, extraction batch size).
DEFAULT_BATCH_SECONDS = {"cuda": 100.0, "cpu": 20.0}


class CacheError(ValueError):
    """A cache that cannot serve the run reading it; the message says why and how to make one that can."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upstream_fingerprint(upstream: torch.nn.Module) -> str:
    """A short hash of an upstream's architecture and weights: two runs agree on it exactly when their features can.

    It hashes the class, the sizes, and each parameter and buffer's name, shape and (sum, sum of squares) in float64:
    cheap for a base-sized model (one pass over the weights), and a different checkpoint or seed changes it.
    """
    if isinstance(upstream, IndexedUpstream):
        return upstream.fingerprint  # its cache's: the weights the features came from
    digest = hashlib.sha256()
    sizes = [getattr(upstream, k, None) for k in ("num_layers", "hidden_size", "downsample_rate", "sample_rate")]
    digest.update(f"{type(upstream).__qualname__}{sizes}".encode())
    with torch.no_grad():
        for name, tensor in [*upstream.named_parameters(), *upstream.named_buffers()]:
            values = tensor.detach().double()
            digest.update(
                f"{name}{tuple(tensor.shape)}{float(values.sum()):.9e}{float((values**2).sum()):.9e}".encode()
            )
    return digest.hexdigest()[:16]


def layer_list(text: str | Sequence[int]) -> list[int]:
    """`0,4,8` (or a list) -> sorted unique integers; anything else is an error saying the form."""
    if isinstance(text, str):
        try:
            text = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise CacheError(f"--layers must be `all` or comma-separated integers like 0,4,8; got {text!r}") from None
    return sorted(set(text))


def parse_layers(text: str | Sequence[int], num_layers: int) -> list[int]:
    """`all` or `0,4,8` (or a list) -> sorted unique hidden-state indices, checked against `num_layers` (L+1)."""
    if isinstance(text, str) and text.strip() == "all":
        return list(range(num_layers))
    layers = layer_list(text)
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise CacheError(f"layers {layers} are not among the upstream's hidden states 0-{num_layers - 1}")
    return layers


@dataclass
class CacheIndex:
    """What `index.json` holds."""

    upstream: str
    fingerprint: str
    num_layers: int
    hidden_size: int
    frame_rate: float
    layers: list[int]
    dtype: str
    manifests: dict[str, str]  # absolute path -> sha256 of its contents at extraction
    shards: list[str]
    utterances: dict[str, list[int]]  # id -> [shard, offset, frames]
    seconds: float = 0.0  # audio extracted
    autocast: str = "auto"  # the forward's precision: bf16 or fp32 ("auto" in older indexes: bf16 on a GPU)
    # The upstream's input contract, so that a fit from the cache need not build it (`IndexedUpstream`); None in
    # indexes written before they were recorded.
    sample_rate: int | None = None
    min_samples: int | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def describes_input(self) -> bool:
        """Whether the index records the upstream's input contract (indexes before `sample_rate` do not)."""
        return self.sample_rate is not None and self.min_samples is not None

    def write(self, folder: Path) -> Path:
        return atomic.write_text(folder / INDEX, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> CacheIndex:
        path = Path(folder) / INDEX
        if not path.is_file():
            hint = " (an unfinished extraction: rerun `strata extract`)" if any(Path(folder).glob("shard_*")) else ""
            raise CacheError(f"{folder} is not a feature cache: no {INDEX}{hint}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise CacheError(f"{path} has format {data.get('format')!r}; this strata reads {FORMAT!r}")
        return cls(**data)


def _source(entry: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """What an id stands for: its audio file (`a/../wav/x.wav` and `wav/x.wav` alike) and segment."""
    return os.path.normpath(os.path.abspath(entry["audio"])), entry.get("start"), entry.get("end")


def _utterances(manifests: Sequence[Manifest]) -> list[dict[str, Any]]:
    """Every utterance of the manifests once (an id in two manifests must name the same audio and segment)."""
    seen: dict[str, tuple[dict[str, Any], str]] = {}
    for manifest in manifests:
        for i, entry in enumerate(manifest.entries):
            key = _source(entry)
            if entry["id"] in seen:
                first, where = seen[entry["id"]]
                if _source(first) != key:
                    raise CacheError(
                        f"id {entry['id']!r} names {entry['audio']} in {manifest.where(i)} but {first['audio']} in "
                        f"{where}: one cache keys utterances by id, so ids must be unique across the manifests"
                    )
                continue
            seen[entry["id"]] = (entry, manifest.where(i))
    return [entry for entry, _ in seen.values()]


def plan_shards(entries: list[dict[str, Any]], shard_seconds: float) -> list[list[dict[str, Any]]]:
    """Utterances sorted by duration (then id), cut into shards of about `shard_seconds` of audio: a function of the
    inputs only, so a rerun finds the same shards."""
    order = sorted(entries, key=lambda e: (float(e["duration"]), e["id"]))
    shards: list[list[dict[str, Any]]] = [[]]
    total = 0.0
    for entry in order:
        if shards[-1] and total + float(entry["duration"]) > shard_seconds:
            shards.append([])
            total = 0.0
        shards[-1].append(entry)
        total += float(entry["duration"])
    return [shard for shard in shards if shard]


def _shard_key(shard: list[dict[str, Any]], settings: str) -> str:
    return hashlib.sha256((settings + "\n".join(e["id"] for e in shard)).encode()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """`--device`: `auto` is the GPU when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def extract(
    upstream_name: str,
    manifests: Sequence[str | Path],
    out: str | Path,
    layers: str | Sequence[int] = "all",
    dtype: str = "float16",
    batch_seconds: float | None = None,
    shard_seconds: float = 600.0,
    device: str = "auto",
    progress: bool = True,
    num_workers: int = 1,
    autocast: str = "auto",
    compile: bool = False,
) -> CacheIndex:
    """Run `upstream_name` over every utterance of `manifests` and write the cache to `out` (see the module doc).

    Batches are length-bucketed (`batch_seconds` of padded audio; by default 100 on a GPU, 20 elsewhere: see
    `DEFAULT_BATCH_SECONDS`), run without autograd, under bf16 autocast on a GPU; the stored values are cast to
    `dtype`. `num_workers` DataLoader processes read, resample and pad the next
    batches while the model runs (0: in the main process, between forwards). `autocast`: `auto` runs the model under
    bf16 autocast on a GPU and in float32 on a CPU, `bf16` under bf16 autocast on either (about 2x faster on a CPU
    for a base model, ~2 % drift of each layer's largest value; benchmarks/forward_variants.py), `fp32` never.
    `compile`: the forward through `torch.compile` (dynamic shapes; worth it on long runs on a GPU).
    Returns the index. One extraction
    writes a folder at a time (`locking.FolderLock`): a second is refused while the first lives; a killed one's lock
    is taken over.
    """
    if dtype not in DTYPES:
        raise CacheError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    if autocast not in AUTOCAST:
        raise CacheError(f"autocast must be one of {', '.join(AUTOCAST)}; got {autocast!r}")
    out = Path(out)
    with ProcessGroup.from_env() as group:
        lock = FolderLock(out, f"strata extract --upstream {upstream_name}") if group.is_main else None
        try:
            failure = None
            try:
                if lock is not None:
                    lock.acquire()
            except Exception as error:  # the folder is another job's: every process stops
                failure = error
            group.settle(failure)
            if lock is not None and lock.took_over:
                tqdm.write(f"{out}: the lock of a process that is gone (pid {lock.took_over.get('pid')}) was removed")
            return _extract(upstream_name, manifests, out, layers, dtype, batch_seconds, shard_seconds, device,
                            progress, num_workers, autocast, compile, group)  # fmt: skip
        finally:
            if lock is not None:
                lock.release()


def _extract(
    upstream_name: str,
    manifests: Sequence[str | Path],
    out: Path,
    layers: str | Sequence[int],
    dtype: str,
    batch_seconds: float | None,
    shard_seconds: float,
    device: str,
    progress: bool,
    num_workers: int,
    autocast: str,
    compile: bool,
    group: ProcessGroup,
) -> CacheIndex:
    from upstream import build_upstream

    failure = None
    try:  # the same in every process: the inputs, the model, the plan and what a killed run left
        parsed = [read_manifest(path) for path in manifests]
        entries = _utterances(parsed)
        if not entries:
            raise CacheError("the manifests have no utterances to extract")
        target = group.device(device)
        if batch_seconds is None:
            batch_seconds = DEFAULT_BATCH_SECONDS.get(target.type, DEFAULT_BATCH_SECONDS["cpu"])
        upstream = build_upstream(upstream_name).to(target).eval()
        forward = torch.compile(upstream, dynamic=True) if compile else upstream
        chosen = parse_layers(layers, upstream.num_layers)
        fingerprint = upstream_fingerprint(upstream)
        bf16 = autocast == "bf16" or (autocast == "auto" and target.type == "cuda")
        settings = f"{upstream_name}|{fingerprint}|{chosen}|{dtype}|{'bf16' if bf16 else 'fp32'}|"
        plan = plan_shards(entries, shard_seconds)
        names = [f"shard_{number:05d}.safetensors" for number in range(len(plan))]
        keys = [_shard_key(shard, settings) for shard in plan]
        offsets = {number: _read_offsets(out / names[number], keys[number]) for number in range(len(plan))}
        todo = [number for number, found in offsets.items() if found is None]  # what a killed run did not finish
    except Exception as error:
        failure = error
    group.settle(failure)  # every process has read the folder before any writes to it
    if group.is_main and progress and len(todo) < len(plan):
        tqdm.write(f"{out}: {len(plan) - len(todo)} of {len(plan)} shards were already written; extracting the rest")
    mine = todo[group.rank :: group.size]  # disjoint: process r writes every size-th unfinished shard
    failure = None
    try:
        where = f" (process 1 of {group.size})" if group.size > 1 else ""
        _extract_shards(upstream, forward, [plan[n] for n in mine], [out / names[n] for n in mine],
                        [keys[n] for n in mine], chosen, DTYPES[dtype], target, bf16, batch_seconds, num_workers,
                        progress and group.is_main, f"extracting {upstream_name}{where}")  # fmt: skip
    except Exception as error:
        failure = error
    group.settle(failure)  # all shards are on disk (or every process raises)
    failure = None
    if group.is_main:
        try:
            offsets = {number: _read_offsets(out / names[number], keys[number]) for number in range(len(plan))}
            missing = [names[number] for number, found in offsets.items() if found is None]
            if missing:
                raise CacheError(f"{out}: shards {missing} were not written")
            utterances = {entry["id"]: [number, *offsets[number][entry["id"]]] for number, shard in enumerate(plan)
                          for entry in shard}  # fmt: skip
            index = CacheIndex(
                upstream=upstream_name,
                fingerprint=fingerprint,
                num_layers=upstream.num_layers,
                hidden_size=upstream.hidden_size,
                frame_rate=upstream.frame_rate,
                layers=chosen,
                dtype=dtype,
                manifests={os.path.abspath(m.path): file_sha256(m.path) for m in parsed},
                shards=names,
                utterances=utterances,
                seconds=sum(float(e["duration"]) for e in entries),
                autocast="bf16" if bf16 else "fp32",
                sample_rate=upstream.sample_rate,
                min_samples=getattr(upstream, "min_samples", 0),
            )
            for stale in set(p.name for p in out.glob("shard_*.safetensors")) - set(names):
                (out / stale).unlink()  # shards of an earlier plan for this folder
            index.write(out)
        except Exception as error:
            failure = error
    group.settle(failure)  # the index is written
    return CacheIndex.read(out)


def _extract_shards(
    upstream: torch.nn.Module,
    forward: torch.nn.Module,
    shards: list[list[dict[str, Any]]],
    paths: list[Path],
    keys: list[str],
    layers: list[int],
    dtype: torch.dtype,
    device: torch.device,
    bf16: bool,
    batch_seconds: float,
    num_workers: int,
    progress: bool,
    description: str,
) -> None:
    """Run `forward` (the upstream, or its compiled form) on `shards` and write them, each as its last batch arrives.

    A shard is written by a thread while the model runs on the next one's batches (the write of a base model's 600 s
    shard takes about a second on its own); one write at a time, so at most two shards are held in memory."""
    bar = tqdm(total=sum(len(shard) for shard in shards), unit="utt", desc=description, disable=not progress)
    started, done_seconds = time.perf_counter(), 0.0
    batches = ShardBatches(shards, batch_seconds, upstream.sample_rate, upstream.min_samples)
    loader = DataLoader(batches, batch_size=None, num_workers=num_workers, prefetch_factor=2 if num_workers else None)
    pieces: dict[str, torch.Tensor] = {}
    writing: Future | None = None

    def written(shard: list[dict[str, Any]]) -> None:
        nonlocal done_seconds
        done_seconds += sum(float(e["duration"]) for e in shard)
        bar.update(len(shard))
        bar.set_postfix_str(f"{done_seconds / max(time.perf_counter() - started, 1e-9):.1f} audio-s/s")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-shard-writer") as writer:
        for position, ids, padded, lengths in loader:
            pieces.update(_run_batch(forward, ids, padded, lengths, layers, dtype, device, bf16))
            shard = shards[position]
            if all(entry["id"] in pieces for entry in shard):  # the shard's last batch: write it
                if writing is not None:
                    writing.result()  # the previous shard is on disk (or its error is raised here)
                shard_pieces = [pieces.pop(e["id"]) for e in shard]
                writing = writer.submit(_save_shard, shard_pieces, shard, paths[position], keys[position], dtype)
                writing.add_done_callback(lambda done, shard=shard: done.exception() is None and written(shard))
        if writing is not None:
            writing.result()
    bar.close()


def _read_offsets(path: Path, key: str) -> dict[str, tuple[int, int]] | None:
    """The finished shard's `id -> (offset, frames)`, if `path` is that shard (same utterances and settings)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # a truncated or foreign file: written again
        return None
    if metadata.get("key") != key:
        return None
    return {k: tuple(v) for k, v in json.loads(metadata["offsets"]).items()}


class ShardBatches(torch.utils.data.Dataset):
    """The length-bucketed batches of `shards`, in order, as extraction runs them: item i is (shard position, ids,
    `wavs [B, S]` zero-padded, `lengths [B]`), read and resampled where the DataLoader asks (a worker process)."""

    def __init__(self, shards: list[list[dict[str, Any]]], batch_seconds: float, sample_rate: int, min_samples: int):
        self.batches = [(position, [shard[i] for i in batch]) for position, shard in enumerate(shards)
                        for batch in bucket_batches([float(e["duration"]) for e in shard], batch_seconds)]  # fmt: skip
        self.sample_rate, self.min_samples = sample_rate, min_samples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[int, list[str], torch.Tensor, torch.Tensor]:
        position, items = self.batches[index]
        wavs = [read_entry(entry, self.sample_rate) for entry in items]
        lengths = torch.tensor([max(wav.numel(), self.min_samples) for wav in wavs])
        padded = torch.zeros(len(wavs), int(lengths.max()))
        for row, wav in enumerate(wavs):
            padded[row, : wav.numel()] = wav
        return position, [entry["id"] for entry in items], padded, lengths


def _run_batch(
    upstream: torch.nn.Module,
    ids: list[str],
    padded: torch.Tensor,
    lengths: torch.Tensor,
    layers: list[int],
    dtype: torch.dtype,
    device: torch.device,
    bf16: bool,
) -> dict[str, torch.Tensor]:
    """Each utterance's valid frames of the cached layers, `[L', T, D]`, in the stored type (int8: float32, for the
    shard's quantisation)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), autocast:
        output = upstream(padded.to(device), lengths.to(device))
    states = [output.hidden_states[layer] for layer in layers]
    stored = torch.float32 if dtype == torch.int8 else dtype
    # One copy of the valid frames only, already in the stored type.
    return {
        utterance: torch.stack([state[row, : int(output.lengths[row])].to(stored) for state in states]).cpu()
        for row, utterance in enumerate(ids)
    }


def _save_shard(
    pieces: list[torch.Tensor], shard: list[dict[str, Any]], path: Path, key: str, dtype: torch.dtype
) -> dict[str, tuple[int, int]]:
    """Write one shard (its utterances' frames end to end, in shard order); returns id -> (offset, frames)."""
    offsets, position = {}, 0
    for entry, piece in zip(shard, pieces, strict=True):
        offsets[entry["id"]] = (position, piece.size(1))
        position += piece.size(1)
    hidden = torch.cat(pieces, dim=1).contiguous()
    tensors = quantize(hidden) if dtype == torch.int8 else {"hidden": hidden}
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata={"key": key, "offsets": json.dumps(offsets)})
    return offsets


def quantize(hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """`hidden [L', F, D]` float -> int8 values and the float32 `scale [L', D]` of each layer's channel (symmetric,
    the channel's largest magnitude maps to 127): per channel, because SSL layers have a few channels far larger
    than the rest, which one scale per layer would crush the others under."""
    scale = (hidden.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    values = torch.round(hidden / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"hidden": values.contiguous(), "scale": scale.float().contiguous()}


class FeatureCache:
    """Read access to a cache folder: `hidden(id) -> [L', T, D]` float32, memory-mapped from its shard."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.index = CacheIndex.read(self.folder)
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own memory maps
        return {"folder": self.folder, "index": self.index, "_handles": {}}

    def __contains__(self, utterance: str) -> bool:
        return utterance in self.index.utterances

    def frames(self, utterance: str) -> int:
        return self.index.utterances[utterance][2]

    def hidden(self, utterance: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Frames `start:stop` of every cached layer of `utterance`: `[L', T, D]` float32."""
        return self.stored(utterance, start, stop).float()

    def stored(self, utterance: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """`hidden` in the type the shard stores (float16 / bfloat16 / float32; int8 shards scaled to float32),
        read straight from the memory map: training pads it in this type and converts it in the interface."""
        shard, offset, frames = self.index.utterances[utterance]
        stop = frames if stop is None else min(stop, frames)
        if shard not in self._handles:
            handle = safe_open(str(self.folder / self.index.shards[shard]), framework="pt")
            scale = handle.get_tensor("scale")[:, None] if "scale" in handle.keys() else None  # int8 shards
            self._handles[shard] = (handle, scale)
        handle, scale = self._handles[shard]
        values = handle.get_slice("hidden")[:, offset + start : offset + stop]
        return values if scale is None else values.float() * scale

    def check(self, upstream_name: str, fingerprint: str, manifest: Manifest, all_layers: bool = True) -> None:
        """Refuse, with the reason, a cache that cannot stand in for `upstream_name` on `manifest`."""
        index, where = self.index, self.folder
        redo = f"re-extract: strata extract --upstream {upstream_name} --manifest ... --out {where}"
        if index.upstream != upstream_name or index.fingerprint != fingerprint:
            raise CacheError(
                f"{where} holds features of {index.upstream} (fingerprint {index.fingerprint}), but this run's "
                f"upstream is {upstream_name} (fingerprint {fingerprint}); {redo}"
            )
        if all_layers and index.layers != list(range(index.num_layers)):
            raise CacheError(
                f"{where} has layers {index.layers} of {index.num_layers}; training reads every hidden state "
                f"(extract with --layers all)"
            )
        path = os.path.abspath(manifest.path)
        if path in index.manifests and index.manifests[path] != file_sha256(path):
            raise CacheError(f"{manifest.path} changed since {where} was extracted from it; {redo}")
        self.check_covers(manifest)

    def check_covers(self, manifest: Manifest) -> None:
        """Refuse a manifest with utterances the cache does not hold, naming one."""
        missing = [e["id"] for e in manifest.entries if e["id"] not in self.index.utterances]
        if missing:
            raise CacheError(
                f"{len(missing)} utterance(s) of {manifest.path} are not in {self.folder}, e.g. {missing[0]!r}; "
                f"extract with every manifest of the run: strata extract --upstream {self.index.upstream} "
                f"--manifest ... --out {self.folder}"
            )

    def size_bytes(self) -> int:
        return sum((self.folder / name).stat().st_size for name in self.index.shards)

    def bytes_per_hour_per_layer(self) -> float:
        return self.size_bytes() / max(self.index.seconds / 3600, 1e-12) / len(self.index.layers)


class IndexedUpstream(Upstream):
    """The frozen upstream a feature cache was extracted with, as the cache's index describes it: what a fit from the
    cache holds in place of the built model. Such a fit reads only the upstream's sizes, rates and fingerprint, so
    the weights are neither loaded, hashed nor kept in memory (for a base model transformers' 2 s import, 0.6 s of
    loading and hashing and 360 MB). What needs the model itself (audio, the frames of a crop of audio) builds it
    on first use from its name, after checking that it still loads the weights the features came from."""

    def __init__(self, name: str, folder: str | Path, index: CacheIndex) -> None:
        super().__init__()
        if not index.describes_input:
            raise CacheError(f"{folder}/{INDEX} does not describe the upstream's input (an older strata wrote it)")
        self.name, self.folder, self.fingerprint = name, Path(folder), index.fingerprint
        self.num_layers, self.hidden_size = index.num_layers, index.hidden_size
        self.sample_rate, self.min_samples = index.sample_rate, index.min_samples
        self.downsample_rate = round(index.sample_rate / index.frame_rate)
        self._frame_rate = index.frame_rate
        self._built: list[Upstream] = []  # kept out of the module tree: its weights are no part of this model's

    @property
    def frame_rate(self) -> float:
        return self._frame_rate

    def built(self) -> Upstream:
        """The upstream itself, built on first use; a CacheError if its weights are not those of the cache."""
        if not self._built:
            from upstream import build_upstream

            upstream = build_upstream(self.name)
            found = upstream_fingerprint(upstream)
            if found != self.fingerprint:
                raise CacheError(
                    f"{self.folder} was extracted from {self.name} with weights {self.fingerprint}, but {self.name} "
                    f"now loads other weights ({found}); re-extract: strata extract --upstream {self.name} "
                    f"--manifest ... --out {self.folder}"
                )
            self._built.append(upstream)
        return self._built[0]

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return self.built().frame_lengths(wav_lengths)

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        return self.built().to(wavs.device).hidden_states(wavs, wav_lengths)


def indexed_upstream(name: str, folder: str | Path) -> IndexedUpstream | None:
    """The `IndexedUpstream` of the cache in `folder` when it was extracted from `name` by a strata that records
    what it needs; None otherwise (the run builds the upstream, and the cache's own check says what is wrong)."""
    index = CacheIndex.read(folder)
    if index.upstream != name or not index.describes_input:
        return None
    return IndexedUpstream(name, folder, index)


class CachedFeatureDataset(torch.utils.data.Dataset):
    """The cached hidden states of a manifest's utterances, in place of `AudioDataset`'s waveforms: items
    `{"index", "id", "hidden": [L, T, D], "target"}`.

    With `crop_seconds`, items are crops of `crop_frames` frames (what the upstream makes of a crop's samples), taken
    as `AudioDataset` takes them: the same draw from torch's generator (`crop_start`, on the frame grid), and an
    utterance shorter than the crop repeated to fill it. So one seed gives the same crops as training from audio.
    """

    def __init__(
        self,
        manifest: Manifest,
        cache: FeatureCache,
        targets: Sequence[Any] | None = None,
        crop_seconds: float | None = None,
        crop_frames: int | None = None,
    ) -> None:
        if targets is not None and len(targets) != len(manifest):
            raise ValueError(f"{len(targets)} targets for {len(manifest)} utterances of {manifest.path}")
        if crop_seconds is not None and (crop_frames is None or crop_frames < 1):
            raise ValueError(
                f"crop_seconds={crop_seconds} needs crop_frames, the upstream's frames of that many seconds of audio "
                f"(upstream.frame_lengths of its samples); got {crop_frames}"
            )
        self.manifest, self.cache, self.targets = manifest, cache, targets
        self.crop_seconds, self.crop_frames = crop_seconds, crop_frames

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def durations(self) -> list[float]:
        if self.crop_seconds is not None:
            return [self.crop_seconds] * len(self)
        return self.manifest.durations

    def _crop(self, entry: dict[str, Any]) -> torch.Tensor:
        frames, rate = self.cache.frames(entry["id"]), self.cache.index.frame_rate
        start = crop_start(utterance_seconds(entry), self.crop_seconds, rate) or 0
        # A manifest duration rounded up could put the window past the cached frames: keep it inside.
        start = min(start, max(frames - self.crop_frames, 0))
        hidden = self.cache.stored(entry["id"], start, start + self.crop_frames)
        # Tiled frames equal the frames of the tiled audio up to the seam only: the audio's frames there straddle
        # the seam, and its period is the clip's samples, not its whole frames, so later copies sit a frame or two
        # apart. Crops inside the utterance are exact for frame-local upstreams (fbank, mfcc); a transformer's
        # frames of a crop differ anyway, as the cache saw the whole utterance as context.
        return repeat_to(hidden, self.crop_frames, dim=1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.manifest.entries[index]
        hidden = self.cache.stored(entry["id"]) if self.crop_seconds is None else self._crop(entry)
        item = {"index": index, "id": entry["id"], "hidden": hidden}
        if self.targets is not None:
            item["target"] = self.targets[index]
        return item


class FeatureCollate:
    """Pads cached hidden states to the longest in the batch: `hidden_states` (one `[L, B, T, D]` tensor in the type
    the cache stores, float16 by default, which every interface takes in place of L float32 tensors `[B, T, D]`),
    `lengths [B]`, ids, indices and collated targets. Half the bytes of float32 to copy, move and read per epoch;
    the interface computes in float32."""

    def __init__(self, collate_targets: Any = None) -> None:
        self.collate_targets = collate_targets

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = torch.tensor([item["hidden"].size(1) for item in items], dtype=torch.long)
        layers, _, size = items[0]["hidden"].shape
        padded = torch.empty(layers, len(items), int(lengths.max()), size, dtype=items[0]["hidden"].dtype)
        for row, item in enumerate(items):
            frames = item["hidden"].size(1)
            padded[:, row, :frames] = item["hidden"]
            padded[:, row, frames:] = 0
        batch = {
            "ids": [item["id"] for item in items],
            "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "hidden_states": padded,
            "lengths": lengths,
        }
        if "target" in items[0]:
            targets = [item["target"] for item in items]
            batch["targets"] = self.collate_targets(targets) if self.collate_targets else torch.tensor(targets)
        return batch
