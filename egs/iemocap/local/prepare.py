"""Prepare IEMOCAP for emotion recognition: four classes, five leave-one-session-out folds (the SUPERB ER protocol).

    python local/prepare.py --root /data/IEMOCAP_full_release --out data/iemocap [--valid-fraction 0.1] [--seed 0]

Reads the consensus label of every utterance from `Session{1..5}/dialog/EmoEvaluation/*.txt`, lines
`[start - end]<TAB>utt_id<TAB>label<TAB>[V, A, D]` (the sub-folders there, Categorical/, Attribute/ and
Self-evaluation/, hold single annotators' labels and are not read), and the audio header of
`Session{n}/sentences/wav/<dialog>/<utt_id>.wav`. Keeps neu, hap, ang and sad, with exc merged into hap as in SUPERB
and Morais et al. (ICASSP 2022); fru, sur, fea, oth, dis and xxx (no agreement) are dropped.

Writes manifests with absolute audio paths and the fields id (the utterance id), audio, duration, emotion
(neu/hap/ang/sad), speaker (`Ses01F`, `Ses01M`, ...: the session and the speaker's gender, which the last token of
the id gives) and session (1-5):
- `<out>/all.jsonl`: every kept utterance;
- `<out>/fold{k}/test.jsonl`: Session k, for k = 1..5;
- `<out>/fold{k}/{train,valid}.jsonl`: the other four sessions, with `--valid-fraction` of each emotion drawn into
  valid (stratified and seeded: the same seed gives the same split);
- `<out>/missing.txt`: audio files that the labels name but that are not there; they are skipped with a warning,
  and more than half of them missing is an error (a wrong --root).
"""

import argparse
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recipes.audio import audio_duration
from recipes.data import write_jsonl
from recipes.manifests import absent_audio

SESSIONS = (1, 2, 3, 4, 5)
CLASSES = ("neu", "hap", "ang", "sad")
MERGED = {"exc": "hap"}  # excitement joins happiness: SUPERB's four classes
KEPT = (*CLASSES, *MERGED)
LABELS_DIR = "dialog/EmoEvaluation"
WAV_DIR = "sentences/wav"
# `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`
LABEL_LINE = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)")
# Ses01F_impro01_F000, Ses01F_script01_1_M012: session, the dialog's first speaker, dialog, speaker gender, turn.
UTTERANCE_ID = re.compile(r"Ses0([1-5])[FM]_\S+_([FM])\d+")


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance, as the label file gives it (`label` before merging, for the report)."""

    id: str
    label: str
    session: int
    where: str  # label file and line, for error messages


def check_root(root: Path) -> None:
    """Fail before any reading if the tree is not IEMOCAP_full_release, naming every missing part at once."""
    if not root.is_dir():
        raise ValueError(f"--root {root} is not a folder: it should be IEMOCAP_full_release (with Session1..Session5)")
    missing = [
        f"Session{n}/{part}"
        for n in SESSIONS
        for part in (LABELS_DIR, WAV_DIR)
        if not (root / f"Session{n}" / part).is_dir()
    ]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not found under {root}: is --root the IEMOCAP_full_release folder "
            "(with Session1..Session5, each holding dialog/EmoEvaluation and sentences/wav)?"
        )


def label_files(folder: Path) -> list[Path]:
    """The dialog label files of an EmoEvaluation folder: its own .txt files, not its sub-folders' (single
    annotators) nor macOS's `._` resource forks, which unpacking an archive made on a Mac leaves beside them."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt" and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder} holds no label files (Ses0*_*.txt): is the IEMOCAP copy complete?")
    return files


def read_labels(path: Path, session: int) -> list[Utterance]:
    """The `[start - end] id label [V, A, D]` lines of one dialog's label file; annotator lines are skipped."""
    utterances = []
    # errors="replace": only the ASCII label lines matter, a stray byte in a comment should not stop the run.
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, text in enumerate(lines, start=1):
        if not text.startswith("["):
            continue
        where = f"{path} line {number}"
        match = LABEL_LINE.match(text)
        if match is None:
            raise ValueError(f"{where}: expected `[start - end]<TAB>utt_id<TAB>label<TAB>[V, A, D]`, got {text!r}")
        utt_id, label = match.groups()
        id_match = UTTERANCE_ID.fullmatch(utt_id)
        if id_match is None:
            raise ValueError(f"{where}: utterance id {utt_id!r} is not like Ses01F_impro01_F000")
        if int(id_match.group(1)) != session:
            raise ValueError(f"{where}: utterance {utt_id} is not of Session{session}, whose labels this file holds")
        utterances.append(Utterance(utt_id, label, session, where))
    return utterances


def read_all_labels(root: Path) -> list[Utterance]:
    """Every labelled utterance of the five sessions, each id once."""
    utterances: dict[str, Utterance] = {}
    for session in SESSIONS:
        for path in label_files(root / f"Session{session}" / LABELS_DIR):
            for utterance in read_labels(path, session):
                if utterance.id in utterances:
                    first = utterances[utterance.id].where
                    raise ValueError(
                        f"{utterance.where}: utterance {utterance.id} is labelled again (first at {first})"
                    )
                utterances[utterance.id] = utterance
    return list(utterances.values())


def dialog_of(utt_id: str) -> str:
    """`Ses01F_script01_1_F000` -> `Ses01F_script01_1`: the id less its turn, the folder its wav is in."""
    return utt_id.rsplit("_", 1)[0]


def speaker_of(utt_id: str, session: int) -> str:
    """The speaker's session and gender, from the turn token (`..._M012` -> `Ses01M`); the `F`/`M` after `Ses01` is
    the dialog's first speaker, not necessarily this utterance's."""
    return f"Ses{session:02d}{utt_id.rsplit('_', 1)[1][0]}"


def audio_path(root: Path, utterance: Utterance) -> Path:
    return root / f"Session{utterance.session}" / WAV_DIR / dialog_of(utterance.id) / f"{utterance.id}.wav"


def report_labels(utterances: list[Utterance]) -> None:
    """How many utterances each label has, kept (and what it became) or dropped."""
    counts = Counter(u.label for u in utterances)
    kept = [f"{label} {counts[label]}" + (f" as {MERGED[label]}" if label in MERGED else "") for label in KEPT]
    dropped = {label: n for label, n in counts.most_common() if label not in KEPT}
    print(
        f"labels: kept {sum(counts[label] for label in KEPT)} ({', '.join(kept)}); dropped {sum(dropped.values())} "
        f"({', '.join(f'{label} {n}' for label, n in dropped.items()) or 'none'})"
    )


def find_missing(root: Path, utterances: list[Utterance], out: Path) -> list[Utterance]:
    """The utterances whose wav is there; the absent ones are listed in `<out>/missing.txt` (see `absent_audio`)."""
    absent = absent_audio(
        [audio_path(root, u) for u in utterances],
        out / "missing.txt",
        "labelled utterances' wav files",
        f"is --root ({root}) the IEMOCAP_full_release folder, fully unpacked?",
    )
    return [u for u in utterances if str(audio_path(root, u)) not in absent]


def make_entries(root: Path, utterances: list[Utterance]) -> list[dict]:
    """Manifest entries, with durations from the wav headers (no decoding)."""
    entries = []
    for utterance in tqdm(utterances, desc="reading wav headers", unit="file"):
        path = audio_path(root, utterance)
        entries.append(
            {
                "id": utterance.id,
                "audio": str(path),
                "duration": audio_duration(path),
                "emotion": MERGED.get(utterance.label, utterance.label),
                "speaker": speaker_of(utterance.id, utterance.session),
                "session": utterance.session,
            }
        )
    return entries


def split_valid(entries: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, valid): per emotion, a seeded shuffle of the utterances (in id order) whose first round(fraction x n)
    go to valid, so valid has the training classes' proportions and the same seed gives the same split."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for emotion in CLASSES:
        ids = sorted(e["id"] for e in entries if e["emotion"] == emotion)
        order = rng.permutation(len(ids))
        chosen.update(ids[i] for i in order[: round(fraction * len(ids))])
    return [e for e in entries if e["id"] not in chosen], [e for e in entries if e["id"] in chosen]


def describe(entries: Iterable[dict]) -> str:
    """`12 utterances (neu 4, hap 3, ang 3, sad 2)`."""
    counts = Counter(e["emotion"] for e in entries)
    classes = ", ".join(f"{emotion} {counts[emotion]}" for emotion in CLASSES)
    return f"{sum(counts.values())} utterances ({classes})"


def write(path: Path, entries: list[dict]) -> None:
    write_jsonl(path, entries)
    print(f"wrote {path}: {describe(entries)}")


def write_folds(out: Path, entries: list[dict], fraction: float, seed: int) -> None:
    """Leave-one-session-out: fold k tests on Session k and trains and validates on the other four."""
    for fold in SESSIONS:
        test = [e for e in entries if e["session"] == fold]
        train, valid = split_valid([e for e in entries if e["session"] != fold], fraction, seed)
        if not valid:
            raise ValueError(
                f"--valid-fraction {fraction} leaves fold{fold}'s valid set empty ({len(train)} utterances): use a "
                "larger fraction"
            )
        for split, rows in (("train", train), ("valid", valid), ("test", test)):
            write(out / f"fold{fold}" / f"{split}.jsonl", rows)


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the IEMOCAP_full_release folder (Session1..5)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/iemocap")
    parser.add_argument("--valid-fraction", type=fraction, default=0.1, help="share of each emotion held out")
    parser.add_argument("--seed", type=int, default=0, help="the train/valid split")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Absolute without resolving symlinks: the manifests keep the path the user knows the data by.
    root = Path(os.path.abspath(args.root))
    out: Path = args.out
    check_root(root)
    utterances = read_all_labels(root)
    report_labels(utterances)
    kept = [u for u in utterances if u.label in KEPT]
    if not kept:
        raise ValueError(f"no utterance under {root}/Session*/{LABELS_DIR} is labelled {', '.join(CLASSES)} or exc")
    entries = make_entries(root, find_missing(root, kept, out))
    write(out / "all.jsonl", entries)
    write_folds(out, entries, args.valid_fraction, args.seed)


if __name__ == "__main__":
    main()
