"""LibriSpeech manifests for speech recognition (the SUPERB ASR protocol: train on train-clean-100, validate on
dev-clean, test on test-clean and test-other).

    python local/prepare.py --root /data/LibriSpeech --out data/librispeech [--splits dev-clean,test-clean]

Reads the tree the OpenSLR 12 archives unpack to (`--root` is that `LibriSpeech/` folder, or the folder holding it):
`<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac`, with the chapter's transcript
`<speaker>-<chapter>.trans.txt`, one `<utterance id> <TEXT>` a line. Writes `<out>/<split>.jsonl` for each requested
split that is there, one `{"id", "audio" (absolute path), "duration" (seconds, from the FLAC header), "text",
"speaker"}` a line, sorted by id. A transcript line without its FLAC, or a FLAC without a transcript line, is
skipped and reported; a split that lost more than half its utterances that way is an error.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recipes.audio import audio_duration
from recipes.data import write_jsonl

SPLITS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean", "test-other")
DEFAULT_SPLITS = ("train-clean-100", "dev-clean", "test-clean", "test-other")  # SUPERB ASR
FOLDER = "LibriSpeech"  # what the archives unpack to
SHOWN = 3  # ids named when reporting skipped utterances


def find_root(root: Path) -> Path:
    """The folder holding the split folders: `root` itself or, for the folder the archives were unpacked in,
    `root/LibriSpeech`."""
    if not root.is_dir():
        raise ValueError(f"LibriSpeech root {root} is not a folder")
    if any((root / split).is_dir() for split in SPLITS):
        return root
    if any((root / FOLDER / split).is_dir() for split in SPLITS):
        return root / FOLDER
    raise ValueError(
        f"no LibriSpeech split folder ({', '.join(SPLITS)}) in {root} or {root / FOLDER}; "
        "--root is the LibriSpeech/ folder the OpenSLR archives unpack to"
    )


def read_transcripts(split_dir: Path) -> dict[str, str]:
    """Utterance id -> text from every `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` of a split."""
    texts: dict[str, str] = {}
    for path in sorted(split_dir.glob("*/*/*.trans.txt")):
        prefix = f"{path.parent.parent.name}-{path.parent.name}-"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            if not text.strip() or not utterance.startswith(prefix):
                raise ValueError(f"{path} line {number}: expected `{prefix}<utterance> TEXT`, got {line.strip()!r}")
            if utterance in texts:
                raise ValueError(f"{path} line {number}: utterance {utterance} has a second transcript")
            texts[utterance] = text.strip()
    return texts


def match_audio(split_dir: Path) -> tuple[dict[str, tuple[Path, str]], list[str], list[str]]:
    """(id -> (flac, text) for the utterances that have both, ids without a FLAC, ids without a transcript line)."""
    texts = read_transcripts(split_dir)
    flacs = {path.stem: path for path in split_dir.glob("*/*/*.flac")}
    matched = {utterance: (flacs[utterance], texts[utterance]) for utterance in sorted(texts.keys() & flacs.keys())}
    return matched, sorted(texts.keys() - flacs.keys()), sorted(flacs.keys() - texts.keys())


def report_skipped(split: str, ids: list[str], what: str) -> None:
    if ids:
        shown = ", ".join(ids[:SHOWN]) + (", ..." if len(ids) > SHOWN else "")
        print(f"warning: {split}: {len(ids)} {what}, skipped ({shown})", file=sys.stderr)


def problem(split_dir: Path, matched: dict, no_audio: list[str], no_text: list[str]) -> str | None:
    """What makes a split unusable, if anything: no utterances, or more than half of them lacking audio or text."""
    total = len(matched) + len(no_audio) + len(no_text)
    if total == 0:
        return f"{split_dir} has no transcripts or FLAC files under <speaker>/<chapter>/"
    if len(matched) * 2 < total:
        return (
            f"{split_dir}: only {len(matched)} of {total} utterances have both a FLAC file and a transcript line "
            f"({len(no_audio)} without audio, {len(no_text)} without text); is the archive fully unpacked?"
        )
    return None


def entries_of(split: str, matched: dict[str, tuple[Path, str]]) -> list[dict[str, Any]]:
    """Manifest entries, with each FLAC's duration read from its header."""
    entries = []
    for utterance, (path, text) in tqdm(matched.items(), desc=f"{split} headers", unit="file"):
        entries.append(
            {
                "id": utterance,
                "audio": os.path.abspath(path),  # not resolve(): a symlinked corpus keeps its link
                "duration": audio_duration(path),
                "text": text,
                "speaker": utterance.split("-")[0],
            }
        )
    return entries


def prepare(root: Path, out: Path, splits: Sequence[str]) -> dict[str, Path]:
    """Write `<out>/<split>.jsonl` for each of `splits` found under `root`; split -> manifest path.

    Every split is checked (file lists only) before any header is read, so one run names every unusable split.
    """
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown LibriSpeech split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    base = find_root(root)
    present = [split for split in splits if (base / split).is_dir()]
    absent = [split for split in splits if split not in present]
    if not present:
        raise ValueError(f"none of the requested splits ({', '.join(splits)}) is in {base}")
    matches = {split: match_audio(base / split) for split in present}
    problems = [p for split, found in matches.items() if (p := problem(base / split, *found))]
    if problems:
        raise ValueError("\n".join(problems))
    if absent:
        print(f"note: {', '.join(absent)} not in {base}, skipped")
    written = {}
    for split, (matched, no_audio, no_text) in matches.items():
        report_skipped(split, no_audio, "transcript line(s) without a .flac file")
        report_skipped(split, no_text, ".flac file(s) without a transcript line")
        entries = entries_of(split, matched)
        written[split] = write_jsonl(out / f"{split}.jsonl", entries)
        hours = sum(entry["duration"] for entry in entries) / 3600
        speakers = len({entry["speaker"] for entry in entries})
        print(f"wrote {written[split]}: {len(entries)} utterances, {hours:.2f} h, {speakers} speakers")
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the LibriSpeech/ folder (or its parent)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/librispeech")
    parser.add_argument(
        "--splits",
        default=",".join(DEFAULT_SPLITS),
        help=f"comma-separated, from {', '.join(SPLITS)} (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    try:
        prepare(args.root, args.out, splits)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
