"""Manifests from what people already have: a folder of audio, a CSV, or a Kaldi data directory.

Each `from_*` function returns the manifest's entries (`id`, absolute `audio`, `duration` and fields) for
`recipes.data.write_jsonl`; durations come from the file headers, without decoding. Errors are `ValueError`s that
name the file, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from . import atomic
from .audio import audio_duration
from .data import ManifestError
from .textfiles import decode, numbered_lines

RESERVED = ("audio", "duration", "start", "end")  # set by the source itself, never by a regex group
MAX_LABELS = 12  # a string field with at most this many values is a label, and the summary counts them
OVERSHOOT = 0.5  # seconds a Kaldi segment may run past its recording (extract-segments' --max-overshoot)


def _absolute(path: str | Path, root: str | Path = ".") -> str:
    # abspath, not resolve(): corpora are often symlinked into a recipe, and the link is the stable path.
    return os.path.abspath(os.path.join(root, path))


def _durations(paths: Sequence[str]) -> list[float]:
    return [audio_duration(p) for p in tqdm(paths, desc="reading headers", unit="file", disable=len(paths) < 100)]


def _first(items: Sequence[str], count: int = 3) -> str:
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")


def _check_exist(paths: Sequence[str], where: Sequence[str], source: str) -> None:
    missing = [f"{w} ({p})" for p, w in zip(paths, where, strict=True) if not os.path.isfile(p)]
    if missing:
        raise ManifestError(f"{len(missing)} of {len(paths)} audio files in {source} do not exist: {_first(missing)}")


def _check_unique(entries: Sequence[dict[str, Any]], where: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for entry, place in zip(entries, where, strict=True):
        if entry["id"] in seen:
            raise ManifestError(f"id {entry['id']!r} is used twice: {seen[entry['id']]} and {place}")
        seen[entry["id"]] = place


def from_folder(
    folder: str | Path, pattern: str | None = None, extensions: Iterable[str] = ("wav", "flac")
) -> list[dict[str, Any]]:
    """Every audio file below `folder` (recursive, sorted) whose path relative to it matches `pattern`.

    The regex's named groups become fields; a group named `id` sets the id, which is otherwise the relative
    path without its extension. Files that do not match are counted in a warning.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ManifestError(f"folder {root} does not exist")
    suffixes = {"." + e.strip().lstrip(".").lower() for e in extensions if e.strip()}
    relative = sorted(
        Path(dirpath, name).relative_to(root).as_posix()
        for dirpath, _, names in os.walk(root, followlinks=True)
        for name in names
        if Path(name).suffix.lower() in suffixes
    )
    if not relative:
        raise ManifestError(f"no {'/'.join(sorted(suffixes))} files below {root} (set --ext to the files' extensions)")
    try:
        regex = re.compile(pattern or ".*")
    except re.error as error:
        raise ManifestError(f"--pattern '{pattern}' is not a regular expression: {error}") from None
    reserved = sorted(set(regex.groupindex) & set(RESERVED))
    if reserved:
        raise ManifestError(
            f"--pattern '{pattern}' has groups named {', '.join(reserved)}; those fields are set by strata"
        )
    matched, fields, unmatched = [], [], []
    for rel in relative:
        match = regex.fullmatch(rel)
        if match is None:
            unmatched.append(rel)
            continue
        matched.append(rel)
        fields.append({k: v for k, v in match.groupdict().items() if v is not None})
    if not matched:
        raise ManifestError(
            f"none of the {len(relative)} files below {root} matches --pattern '{pattern}' (the whole path relative "
            f"to the folder must match, with / separators), e.g. {relative[0]!r}"
        )
    if unmatched:
        warnings.warn(
            f"{len(unmatched)} of {len(relative)} files below {root} do not match --pattern '{pattern}' and are left "
            f"out: {_first(unmatched)}",
            stacklevel=2,
        )
    paths = [_absolute(rel, root) for rel in matched]
    entries = [
        {"id": found.pop("id", str(PurePosixPath(rel).with_suffix(""))), "audio": path, "duration": duration, **found}
        for rel, path, duration, found in zip(matched, paths, _durations(paths), fields, strict=True)
    ]
    _check_unique(entries, [f"{root / rel}" for rel in matched])
    return entries


def _number(value: str, where: str, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ManifestError(f"{where}: column {column!r} must be a number, got {value!r}") from None


def from_csv(
    path: str | Path, audio_column: str = "audio", id_column: str = "id", root: str | Path | None = None
) -> list[dict[str, Any]]:
    """One entry per row of a CSV with a header: the audio column (relative paths resolved against `root`, by
    default the CSV's folder) and every other non-empty cell as a string field.

    A `duration` column is used as it is; otherwise `end - start` for segments, else the file header.
    `start`/`end` become numbers. Without an `id_column`, the id is the audio path without its extension.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"CSV file {path} does not exist")
    root = path.parent if root is None else Path(root)
    # utf-8-sig: spreadsheets start with a BOM. Decoded whole first, so that bad bytes are an error naming their line.
    text = decode(path.read_bytes(), path, ManifestError, "utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _csv_entries(path, reader, audio_column, id_column, root)
    except csv.Error as error:
        raise ManifestError(f"{path} line {reader.line_num}: not readable as CSV ({error})") from None


def _csv_entries(
    path: Path, reader: csv.DictReader, audio_column: str, id_column: str, root: Path
) -> list[dict[str, Any]]:
    numeric = ("duration", "start", "end")
    columns = reader.fieldnames or []
    header = f"{path} line 1 (the header)"
    if audio_column not in columns:
        raise ManifestError(
            f"{header} has no column {audio_column!r} (columns: {', '.join(columns)}); set --audio-column"
        )
    clash = sorted({"id", "audio"} & set(columns) - {audio_column, id_column})
    if clash:
        raise ManifestError(
            f"{header} has a column {clash[0]!r} that is not the --audio-column or --id-column; rename it, or set "
            f"--{clash[0]}-column {clash[0]}"
        )
    if id_column not in columns and id_column != "id":
        raise ManifestError(
            f"{path} line 1 (the header) has no column {id_column!r} (columns: {', '.join(columns)}); set --id-column"
        )
    rows, lines = [], []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        if None in row:
            raise ManifestError(f"{where}: more cells than the {len(columns)} columns of the header")
        cells = {k: v for k, v in row.items() if v not in ("", None)}
        if not cells.get(audio_column):
            raise ManifestError(f"{where}: column {audio_column!r} is empty")
        if id_column in columns and not cells.get(id_column):
            raise ManifestError(f"{where}: column {id_column!r} is empty")
        rows.append(cells)
        lines.append(reader.line_num)
    if not rows:
        raise ManifestError(f"{path} has a header but no rows")
    paths = [_absolute(row[audio_column], root) for row in rows]
    _check_exist(
        paths, [f"line {n}" for n in lines], f"{path} (relative paths are resolved against {root}; set --root)"
    )
    entries = []
    wheres = [f"{path} line {n}" for n in lines]
    for row, audio, where in zip(rows, paths, wheres, strict=True):
        given = row.pop(audio_column)
        entry = {"id": row.pop(id_column, str(PurePosixPath(given).with_suffix(""))), "audio": audio}
        numbers = {k: _number(row.pop(k), where, k) for k in numeric if k in row}
        entry["duration"] = numbers.pop("duration", None)
        entries.append({**entry, **numbers, **row})
    headers = [i for i, e in enumerate(entries) if e["duration"] is None and "end" not in e]
    for i, duration in zip(headers, _durations([entries[i]["audio"] for i in headers]), strict=True):
        entries[i]["duration"] = duration - entries[i].get("start", 0.0)
    for entry in entries:
        if entry["duration"] is None:
            entry["duration"] = entry["end"] - entry.get("start", 0.0)
    _check_unique(entries, wheres)
    return entries


def _read_table(path: Path, min_fields: int, max_split: int = -1) -> dict[str, tuple[list[str], str]]:
    """Kaldi table `<key> <values...>` -> key: (values, "file line N")."""
    table: dict[str, tuple[list[str], str]] = {}
    for number, line in numbered_lines(path, ManifestError):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        fields = line.split(maxsplit=max_split)
        if len(fields) < min_fields:
            raise ManifestError(f"{where}: expected at least {min_fields} fields, got {len(fields)}: {line.strip()!r}")
        if fields[0] in table:
            raise ManifestError(f"id {fields[0]!r} is used twice: {table[fields[0]][1]} and {where}")
        table[fields[0]] = (fields[1:], where)
    return table


def _wav_path(value: str, where: str) -> str:
    value = value.strip()
    if value.endswith("|"):
        raise ManifestError(
            f"{where}: {value!r} is a command (piped wav.scp entries are not supported); convert it to an audio "
            f"file first, e.g. `{value[:-1].strip()} > rec.wav`, and list that file"
        )
    if value == "-" or re.match(r"(ark|scp),?[a-z,]*:", value) or re.search(r":\d+(\[[^]]*\])?$", value):
        raise ManifestError(
            f"{where}: {value!r} is an archive or extended filename, not an audio file; write the audio to "
            f"files (e.g. with wav-copy) and list them"
        )
    return value


def from_kaldi(directory: str | Path, root: str | Path = ".") -> list[dict[str, Any]]:
    """Entries from a Kaldi data directory: `wav.scp` and, when present, `segments`, `utt2spk` (-> `speaker`)
    and `text` (-> `text`). Relative paths in `wav.scp` are resolved against `root` (Kaldi recipes run in
    their own folder, so the default is the current one)."""
    directory = Path(directory)
    scp = directory / "wav.scp"
    if not scp.is_file():
        raise ManifestError(f"{scp} does not exist: a Kaldi data directory needs a wav.scp (`<recording> <path>`)")
    recordings = _read_table(scp, 2, max_split=1)
    audio = {rec: _absolute(_wav_path(values[0], where), root) for rec, (values, where) in recordings.items()}
    _check_exist(list(audio.values()), [where for _, where in recordings.values()], f"{scp}")
    segments_path = directory / "segments"
    if segments_path.is_file():
        segments = _read_table(segments_path, 4)
        used = sorted({values[0] for values, _ in segments.values()})
        unknown = [f"{where} ({values[0]})" for values, where in segments.values() if values[0] not in audio]
        if unknown:
            raise ManifestError(f"{len(unknown)} segments name recordings not in {scp}: {_first(unknown)}")
        lengths = dict(zip(used, _durations([audio[rec] for rec in used]), strict=True))
        entries, lines = [], []
        for utt, ([rec, start, end, *_], where) in segments.items():
            start, end = _number(start, where, "start"), _number(end, where, "end")
            end = lengths[rec] if end == -1 else end  # Kaldi: an end of -1 is the end of the recording
            if not 0 <= start < end <= lengths[rec] + OVERSHOOT:
                raise ManifestError(
                    f"{where}: segment {start}-{end} s is not within recording {rec!r} ({lengths[rec]:.2f} s)"
                )
            entries.append({"id": utt, "audio": audio[rec], "duration": end - start, "start": start, "end": end})
            lines.append(where)
        source = segments_path
    else:
        paths = list(audio.values())
        entries = [
            {"id": rec, "audio": path, "duration": duration}
            for rec, path, duration in zip(audio, paths, _durations(paths), strict=True)
        ]
        source = scp
    by_id = {entry["id"]: entry for entry in entries}
    for name, field in (("utt2spk", "speaker"), ("text", "text")):
        table_path = directory / name
        if not table_path.is_file():
            continue
        table = _read_table(table_path, 2, max_split=1 if field == "text" else -1)
        unknown = [f"{where} ({utt})" for utt, (_, where) in table.items() if utt not in by_id]
        if unknown:
            raise ManifestError(f"{len(unknown)} utterances in {table_path} are not in {source}: {_first(unknown)}")
        missing = [utt for utt in by_id if utt not in table]
        if missing:
            raise ManifestError(f"{len(missing)} utterances of {source} are not in {table_path}: {_first(missing)}")
        for utt, (values, _) in table.items():
            by_id[utt][field] = values[0].strip() if field == "text" else values[0]
    return entries


def absent_audio(paths: Sequence[str | Path], listing: Path, what: str, hint: str, show: int = 3) -> set[str]:
    """The paths among `paths` (the audio files a dataset's lists name) that do not exist, as strings.

    A dataset prepared from a partly unpacked tree loses a few files: they are listed in `listing`, counted in one
    warning on stderr, and left out by the caller. More than half absent means the lists and the audio are not of
    one tree (a wrong root): an error ending with `hint`. With none absent a stale `listing` is removed. `what`
    describes the paths in the messages (`labelled utterances`, `wav files that veri_test2.txt names`).
    """
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if not missing:
        listing.unlink(missing_ok=True)  # a re-run after fixing the tree leaves no stale list
        return set()
    first = ", ".join(missing[:show])
    if len(missing) * 2 > len(paths):
        raise ManifestError(f"{len(missing)} of the {len(paths)} {what} do not exist, first: {first}: {hint}")
    listing.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(listing, "".join(f"{path}\n" for path in missing))
    print(
        f"WARNING: skipping {len(missing)} of the {len(paths)} {what}, which do not exist (listed in {listing}), "
        f"first: {first}",
        file=sys.stderr,
    )
    return set(missing)


def summarize(entries: Sequence[dict[str, Any]]) -> str:
    """Utterances, hours and fields; a label field (few string values) with the count of each value."""
    hours = sum(e["duration"] for e in entries) / 3600
    names = sorted({k for e in entries for k in e} - {"id", "audio", "duration"})
    lines = [f"{len(entries)} utterances, {hours:.2f} hours; fields: {', '.join(names) or 'none'}"]
    for name in names:
        values = [e[name] for e in entries if name in e]
        present = "" if len(values) == len(entries) else f" (in {len(values)} of {len(entries)})"
        if not all(isinstance(v, str) for v in values):
            continue
        counts = Counter(values)
        if len(counts) <= MAX_LABELS and len(counts) < len(values):
            lines.append(f"  {name}{present}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
        else:
            lines.append(f"  {name}{present}: {len(counts)} distinct values")
    return "\n".join(lines)
