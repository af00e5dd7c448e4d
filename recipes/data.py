"""Manifests, the audio dataset, the length-bucketed batch sampler and the padding collate."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from . import atomic
from .audio import AudioError, read_audio
from .textfiles import numbered_lines

# Every manifest line has these; tasks add their own fields.
BASE_FIELDS: dict[str, type | tuple[type, ...]] = {"id": str, "audio": str, "duration": (int, float)}
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {"start": (int, float), "end": (int, float)}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the line and the field."""


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"str": "a string", "int": "a number", "float": "a number", "dict": "an object", "list": "a list"}
    return " or ".join(dict.fromkeys(names.get(k.__name__, k.__name__) for k in kinds))


def _check_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    # JSON booleans are ints in Python; a duration of `true` is a mistake, not 1 s.
    return isinstance(value, kind) and not isinstance(value, bool)


@dataclass
class Manifest:
    """A validated JSONL manifest: one dict per utterance, `audio` resolved against the manifest's folder."""

    path: Path
    entries: list[dict[str, Any]]
    lines: list[int]  # the line number of each entry, for error messages

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def durations(self) -> list[float]:
        return [float(e["duration"]) for e in self.entries]

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def where(self, index: int) -> str:
        return f"{self.path} line {self.lines[index]}"


def read_manifest(
    path: str | Path,
    fields: Mapping[str, type | tuple[type, ...]] | None = None,
    check_audio: bool = True,
) -> Manifest:
    """Read and validate a JSONL manifest; `fields` are the task's required fields and their types.

    Raises `ManifestError` on the first malformed line (naming file, line and field), on duplicate ids, and
    on audio files that do not exist (`check_audio`), so a bad manifest fails at load, not mid-epoch.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    required = {**BASE_FIELDS, **(fields or {})}
    entries, lines, first_line = [], [], {}
    for number, text in numbered_lines(path, ManifestError):
        if not text.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        for name, kind in required.items():
            if name not in entry:
                raise ManifestError(f"{where}: missing field {name!r}")
            if not _check_type(entry[name], kind):
                raise ManifestError(
                    f"{where}: field {name!r} must be {_type_name(kind)}, got {json.dumps(entry[name])}"
                )
        for name, kind in OPTIONAL_FIELDS.items():
            if name in entry and not _check_type(entry[name], kind):
                raise ManifestError(
                    f"{where}: field {name!r} must be {_type_name(kind)}, got {json.dumps(entry[name])}"
                )
        _check_values(entry, where)
        if entry["id"] in first_line:
            raise ManifestError(f"{where}: id {entry['id']!r} already used on line {first_line[entry['id']]}")
        first_line[entry["id"]] = number
        entry["audio"] = str(path.parent / entry["audio"])  # relative paths are relative to the manifest
        entries.append(entry)
        lines.append(number)
    if not entries:
        raise ManifestError(f"manifest {path} has no utterances")
    manifest = Manifest(path, entries, lines)
    if check_audio:
        missing = [i for i, e in enumerate(entries) if not Path(e["audio"]).is_file()]
        if missing:
            first = missing[0]
            raise ManifestError(
                f"{manifest.where(first)}: audio file {entries[first]['audio']} does not exist"
                + (f" ({len(missing)} of {len(entries)} audio files are missing)" if len(missing) > 1 else "")
            )
    return manifest


def write_jsonl(path: str | Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    """Write a manifest, one JSON object a line, under a temporary name renamed when complete, so a killed run
    never leaves half a manifest."""
    return atomic.write_text(path, "".join(json.dumps(entry) + "\n" for entry in entries))


def _check_values(entry: dict[str, Any], where: str) -> None:
    if not entry["id"]:
        raise ManifestError(f"{where}: field 'id' is empty")
    if not entry["audio"]:
        raise ManifestError(f"{where}: field 'audio' is empty")
    if not math.isfinite(entry["duration"]) or entry["duration"] <= 0:
        raise ManifestError(f"{where}: field 'duration' must be a positive number of seconds, got {entry['duration']}")
    start, end = entry.get("start"), entry.get("end")
    if start is not None and start < 0:
        raise ManifestError(f"{where}: field 'start' must not be negative, got {start}")
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: field 'end' ({end}) must be after 'start' ({start})")


class AudioDataset(Dataset):
    """Waveforms of a manifest at `sample_rate`, with the task's encoded target for each utterance.

    Clips shorter than `min_samples` (the upstream's receptive field) are zero-padded to it, with one warning
    that counts them, because an upstream cannot make a frame from less.

    With `crop_seconds`, every item is a random crop of exactly that length (a new one each time it is read, from
    torch's generator), and a shorter clip is repeated to fill it rather than zero-padded: speaker embeddings
    trained on silence-padded crops learn the padding. Only the cropped segment is read from disk. Crops start on
    the grid of `frame_rate` (the upstream's frames; every sample when unset), so that `CachedFeatureDataset` can
    take the same crops, from the same seed, as frames.

    With `max_seconds` (pre-training, as HuBERT crops to 250k samples), only clips longer than it are cropped, to a
    random `max_seconds` window on the same grid; shorter clips are whole. Frame-level targets (`target_frame_dim`:
    the frames' dimension of each target, e.g. 0 for cluster ids `[T]`) are cut from the crop's first frame, so
    frame i of the crop keeps the target of the frame it was in the whole clip.
    """

    def __init__(
        self,
        manifest: Manifest,
        sample_rate: int,
        targets: Sequence[Any] | None = None,
        min_samples: int = 0,
        crop_seconds: float | None = None,
        frame_rate: float | None = None,
        max_seconds: float | None = None,
        target_frame_dim: int | None = None,
    ) -> None:
        if crop_seconds is not None and max_seconds is not None:
            raise ValueError("crop_seconds (every clip to one length) excludes max_seconds (long clips only)")
        if max_seconds is not None and max_seconds * sample_rate < max(min_samples, 1):
            raise ValueError(f"max_seconds={max_seconds} is shorter than the upstream's {min_samples} samples")
        if target_frame_dim is not None and frame_rate is None:
            raise ValueError("frame-level targets (target_frame_dim) are cropped on the frame grid: give frame_rate")
        if targets is not None and len(targets) != len(manifest):
            raise ValueError(f"{len(targets)} targets for {len(manifest)} utterances of {manifest.path}")
        self.manifest = manifest
        self.sample_rate = sample_rate
        self.frame_rate = frame_rate
        self.targets = targets
        self.min_samples = min_samples
        if crop_seconds is not None and crop_seconds * sample_rate < max(min_samples, 1):
            raise ValueError(f"crop_seconds={crop_seconds} is shorter than the upstream's {min_samples} samples")
        self.crop_seconds = crop_seconds
        self.crop_samples = None if crop_seconds is None else crop_samples(crop_seconds, sample_rate)
        self.max_seconds = max_seconds
        self.target_frame_dim = target_frame_dim
        self.out_of_range = 0  # clips read so far with samples outside [-1, 1]
        short = [d for d in manifest.durations if d * sample_rate < min_samples and crop_seconds is None]
        if short:
            warnings.warn(
                f"{len(short)} of {len(manifest)} clips in {manifest.path} are shorter than the upstream's receptive "
                f"field ({min_samples} samples, {min_samples / sample_rate * 1000:.0f} ms); they are zero-padded",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def durations(self) -> list[float]:
        """Seconds of audio each item will have: what batches are sized by."""
        if self.crop_seconds is not None:
            return [self.crop_seconds] * len(self)
        if self.max_seconds is not None:
            return [min(seconds, self.max_seconds) for seconds in self.manifest.durations]
        return self.manifest.durations

    def _segment(self, entry: dict[str, Any]) -> tuple[float | None, float | None, int | None]:
        """(start, end) in seconds to read, and the crop's first step on the grid (None: not cropped)."""
        start, end = entry.get("start"), entry.get("end")
        crop = self.crop_seconds if self.crop_seconds is not None else self.max_seconds
        if crop is None:
            return start, end, None
        rate = self.frame_rate or self.sample_rate
        step = crop_start(utterance_seconds(entry), crop, rate)
        if step is None:
            return start, end, None
        offset = (start or 0.0) + step / rate
        # The end in whole samples after the start: the read is exactly the crop, not one sample short by rounding.
        return offset, offset + crop_samples(crop, self.sample_rate) / self.sample_rate, step

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.manifest.entries[index]
        start, end, step = self._segment(entry)
        try:
            wav = read_entry(entry, self.sample_rate, start, end)
        except AudioError as error:
            raise AudioError(f"{error} ({self.manifest.where(index)}, id {entry['id']})") from None
        if self.crop_samples is not None:
            wav = repeat_to(wav, self.crop_samples)
        elif step is not None:  # a long clip's max_seconds window
            wav = wav[: crop_samples(self.max_seconds, self.sample_rate)]
        else:
            wav = pad_to_min_samples(wav, self.min_samples)
        self._check_range(wav, index)
        item = {"index": index, "id": entry["id"], "wav": wav}
        if self.targets is not None:
            target = self.targets[index]
            if step is not None and self.target_frame_dim is not None:
                crop = self.crop_seconds if self.crop_seconds is not None else self.max_seconds
                frames = min(target.size(self.target_frame_dim) - step, int(round(crop * self.frame_rate)))
                target = target.narrow(self.target_frame_dim, step, frames)
            item["target"] = target
        return item

    def _check_range(self, wav: torch.Tensor, index: int) -> None:
        """Float files may hold samples beyond [-1, 1] (a mix, an unnormalised export): they are used as they are,
        counted in `out_of_range`, and the first one is warned about, once per dataset (per DataLoader worker)."""
        if wav.numel() and float(wav.abs().max()) > 1.0:
            self.out_of_range += 1
            if self.out_of_range == 1:
                warnings.warn(
                    f"{self.manifest.where(index)} ({self.manifest.entries[index]['audio']}) has samples up to "
                    f"{float(wav.abs().max()):.3g}, outside [-1, 1]: used as they are, not clipped or rescaled; "
                    f"later such clips of {self.manifest.path} are only counted",
                    stacklevel=2,
                )


def pad_to_min_samples(wav: torch.Tensor, min_samples: int) -> torch.Tensor:
    """`wav [S]` zero-padded to the upstream's receptive field when shorter (an upstream cannot make a frame from
    less)."""
    return wav if wav.numel() >= min_samples else torch.nn.functional.pad(wav, (0, min_samples - wav.numel()))


def run_seed(seed: int | None) -> int:
    """The seed of a run's data order and draws: the one given, else the run's `seed_everything` seed, else 0."""
    return seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))


def read_entry(
    entry: Mapping[str, Any], sample_rate: int, start: float | None = None, end: float | None = None
) -> torch.Tensor:
    """The audio of a manifest entry (its `start`-`end` segment, or the `start`-`end` given, e.g. a crop), with
    the file's length checked against what the entry records (`read_audio`'s `duration`)."""
    if start is None and end is None:
        start, end = entry.get("start"), entry.get("end")
    # An entry without an end records the file's length from its start; a segment's end is checked instead.
    file_seconds = None if entry.get("end") is not None else float(entry["duration"]) + (entry.get("start") or 0.0)
    return read_audio(entry["audio"], sample_rate, start, end, duration=file_seconds)


def utterance_seconds(entry: Mapping[str, Any]) -> float:
    """Seconds of audio a manifest entry stands for: its `start`-`end` segment, or its whole `duration`."""
    start, end = entry.get("start"), entry.get("end")
    return end - (start or 0.0) if end is not None else float(entry["duration"])


def crop_samples(crop_seconds: float, sample_rate: int) -> int:
    """Samples in a `crop_seconds` crop: what `AudioDataset` gives the upstream, whose frames of it a cache crops."""
    return int(round(crop_seconds * sample_rate))


def crop_start(seconds: float, crop_seconds: float, rate: float) -> int | None:
    """Where a random `crop_seconds` window of a `seconds`-long utterance starts, in steps of 1/`rate` s: uniform
    over the starts that keep it inside, one draw from torch's generator. None, without a draw, when the utterance
    is no longer than the crop: it is repeated to fill the crop instead.

    `AudioDataset` (in samples, at the frame rate's steps) and `CachedFeatureDataset` (in frames) both crop here, so
    one seed gives both the same crops of the same utterances.
    """
    if seconds <= crop_seconds:
        return None
    # 1e-6 so float error does not lose the last start: (2.3 - 0.5) * 100 is 179.99999999999997.
    starts = int(math.floor((seconds - crop_seconds) * rate + 1e-6)) + 1
    return int(torch.randint(starts, ()))


def repeat_to(x: torch.Tensor, size: int, dim: int = -1) -> torch.Tensor:
    """`x` repeated end to end (or cut) along `dim` to exactly `size`: `wav [S]` to samples, `hidden [L, T, D]` to
    frames (dim 1)."""
    repeats = [1] * x.dim()
    repeats[dim] = -(-size // x.size(dim))
    return x.repeat(*repeats).narrow(dim, 0, size)


class PadCollate:
    """Pads waveforms to the longest in the batch: `wavs [B, S]`, `wav_lengths [B]`, ids, and collated targets."""

    def __init__(self, collate_targets: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate_targets = collate_targets

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = torch.tensor([item["wav"].numel() for item in items], dtype=torch.long)
        wavs = torch.zeros(len(items), int(lengths.max()))
        for row, item in enumerate(items):
            wavs[row, : item["wav"].numel()] = item["wav"]
        batch = {
            "ids": [item["id"] for item in items],
            "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "wavs": wavs,
            "wav_lengths": lengths,
        }
        if "target" in items[0]:
            targets = [item["target"] for item in items]
            batch["targets"] = self.collate_targets(targets) if self.collate_targets else torch.tensor(targets)
        return batch


def bucket_batches(durations: Sequence[float], max_batch_seconds: float) -> list[list[int]]:
    """Group utterances of similar length so that each batch's padded size (size x longest) stays within
    `max_batch_seconds`; an utterance longer than that on its own gets a batch of its own."""
    if max_batch_seconds <= 0:
        raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Ascending order: the new utterance is the longest, so the padded size is (n + 1) x its duration.
        if current and (len(current) + 1) * durations[index] > max_batch_seconds:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest batches in two until the count divides by `multiple` (the number of ranks), so every
    rank gets the same number of batches without repeating an utterance."""
    batches = [list(b) for b in batches]
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        if len(batch) < 2:
            raise ValueError(
                f"{sum(map(len, batches))} utterances cannot be shared among {multiple} processes without repeats; "
                "use fewer processes or a larger manifest"
            )
        half = len(batch) // 2
        batches[largest : largest + 1] = [batch[:half], batch[half:]]
    return batches


class BucketBatchSampler:
    """Length-bucketed batches of at most `max_batch_seconds` padded audio, shuffled each epoch, sharded by rank.

    The batches are formed once (sorted by duration) and their order is shuffled every epoch from
    `seed + epoch`. Under distributed training every rank builds the same batches and takes every
    `num_replicas`-th one, so each utterance is seen exactly once per epoch across ranks.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        batches = bucket_batches(durations, max_batch_seconds)
        too_long = sum(1 for d in durations if d > max_batch_seconds)
        if too_long:
            warnings.warn(
                f"{too_long} utterances are longer than max_batch_seconds={max_batch_seconds:g}; "
                "each is a batch of its own",
                stacklevel=2,
            )
        self.batches = split_to_multiple(batches, num_replicas)
        self.max_batch_seconds = max_batch_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, batches) already trained on, from `resume`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, processed: int) -> None:
        """Go on from a checkpoint written after `processed` batches of `epoch`: that epoch's next iteration skips
        them (an epoch that was finished means the next one, from its start)."""
        if processed >= len(self):
            epoch, processed = epoch + 1, 0
        self.epoch, self.skip = epoch, (epoch, processed)

    @property
    def sampler(self) -> BucketBatchSampler:
        # Lightning calls `dataloader.batch_sampler.sampler.set_epoch(epoch)` at each epoch start; this is that hook.
        return self

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        order = list(range(len(self.batches)))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.batches), generator=generator).tolist()
        batches = [self.batches[i] for i in order[self.rank :: self.num_replicas]]
        if self.skip is not None:
            (epoch, processed), self.skip = self.skip, None
            if epoch == self.epoch:
                batches = batches[processed:]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()

    def __len__(self) -> int:
        return len(self.batches) // self.num_replicas


def fixed_size_batches(durations: Sequence[float], batch_size: int, seed: int = 0) -> list[list[int]]:
    """Shuffled batches of `batch_size` utterances, as a plain DataLoader makes them (for comparison)."""
    order = torch.randperm(len(durations), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Share of the padded batch tensors that is padding: 1 - audio / (size x longest), summed over batches."""
    audio = sum(durations[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(durations[i] for i in batch) for batch in batches)
    return 1.0 - audio / padded
