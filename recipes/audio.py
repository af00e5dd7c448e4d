"""Reading audio the project's way: soundfile, mono float32 in [-1, 1], resampled with torchaudio.functional."""

from __future__ import annotations

import math
from pathlib import Path

import soundfile
import torch
import torchaudio


class AudioError(ValueError):
    """Audio that cannot be used as it is; the message names the file and the problem."""


# A manifest's `duration` may differ from the file by rounding; beyond both of these it is wrong, and batch sizes,
# crops and GPU memory, which are planned from it, would be too.
DURATION_TOLERANCE_SECONDS = 0.1
DURATION_TOLERANCE_FRACTION = 0.05


def read_audio(
    path: str | Path,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
    duration: float | None = None,
) -> torch.Tensor:
    """`[S]` float32 waveform of `path` (optionally the `start`-`end` seconds segment) at `sample_rate`.

    `duration`, the file's length as a manifest records it, is checked against the file's header (an error beyond
    0.1 s and 5 %); a segment must end inside the file. Non-finite samples (NaN, inf) are an error: one such sample
    turns every feature of the clip, and then the model, into NaN."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
        if info.frames > 0 and info.samplerate > 0:  # an empty file is reported as such below
            check_length(path, info.frames / info.samplerate, duration, end)
        first = 0 if start is None else int(round(start * info.samplerate))
        last = -1 if end is None else int(round(end * info.samplerate))
        data, file_rate = soundfile.read(
            str(path), start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True
        )
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"could not read audio file {path}: {error}") from None
    if data.shape[1] != 1:
        raise AudioError(f"{path} has {data.shape[1]} channels; strata expects mono audio (mix it down first)")
    if data.shape[0] == 0:
        raise AudioError(f"{path} is empty" + ("" if start is None else f" between {start} s and {end} s"))
    wav = torch.from_numpy(data[:, 0])
    finite = torch.isfinite(wav)
    if not finite.all():
        bad = int((~finite).sum())
        first = int((~finite).nonzero()[0, 0]) / file_rate + (start or 0.0)
        raise AudioError(f"{path} holds {bad} non-finite samples (NaN or inf), the first at {first:.3f} s")
    if file_rate != sample_rate:
        divisor = math.gcd(file_rate, sample_rate)
        wav = torchaudio.functional.resample(wav, file_rate // divisor, sample_rate // divisor)
    return wav


def check_length(path: Path, file_seconds: float, duration: float | None, end: float | None) -> None:
    """The file's real length against the manifest's `duration` and a segment's `end`."""
    if duration is not None:
        gap = abs(file_seconds - duration)
        if gap > DURATION_TOLERANCE_SECONDS and gap > DURATION_TOLERANCE_FRACTION * duration:
            raise AudioError(
                f"{path} holds {file_seconds:.3f} s of audio but the manifest says duration {duration:.3f} s; "
                "rewrite the manifest (strata manifest reads durations from the headers)"
            )
    if end is not None and end > file_seconds + DURATION_TOLERANCE_SECONDS:
        raise AudioError(f"{path} holds {file_seconds:.3f} s of audio but the segment ends at {end:.3f} s")


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in `path`, from the file header (no decoding): what manifests record as `duration`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"could not read the header of audio file {path}: {error}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path} is empty")
    return info.frames / info.samplerate


def tone(seconds: float = 1.0, frequency: float = 440.0, sample_rate: int = 16000) -> torch.Tensor:
    """A sine tone at half scale: audio anyone can generate, for demos and smoke runs."""
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return 0.5 * torch.sin(2 * math.pi * frequency * t)


def window_bounds(
    wav: torch.Tensor, sample_rate: int, window_seconds: float, search_seconds: float = 3.0
) -> list[tuple[int, int]]:
    """`(start, end)` samples of consecutive windows of at most `window_seconds` that cover `wav [S]`: each cut is
    at the quietest 20 ms of the last `search_seconds` before the window's end, so a word is rarely split (a
    transcript of the windows joined then loses little)."""
    limit = int(window_seconds * sample_rate)
    if limit <= 0:
        raise ValueError(f"window_seconds must be positive, got {window_seconds}")
    hop = max(int(0.02 * sample_rate), 1)
    search = min(int(search_seconds * sample_rate), limit // 2)
    bounds, start = [], 0
    while wav.numel() - start > limit:
        region = wav[start + limit - search : start + limit]
        frames = region[: region.numel() // hop * hop].reshape(-1, hop)
        if frames.numel():  # the middle of the quietest 20 ms
            end = start + limit - search + int(frames.pow(2).mean(dim=1).argmin()) * hop + hop // 2
        else:
            end = start + limit
        bounds.append((start, end))
        start = end
    bounds.append((start, wav.numel()))
    return bounds
