"""Prepare VoxCeleb1 for speaker identification (SID) and speaker verification (SV), the SUPERB protocols.

    python local/prepare.py --root /data/VoxCeleb1 --out data/voxceleb1 [--tasks sid,sv]
        [--iden-split /data/VoxCeleb1/iden_split.txt] [--trials /data/VoxCeleb1/veri_test2.txt]

`--root` holds `wav/<speaker>/<video>/<NNNNN>.wav`, the dev and test archives unpacked into one tree. The lists
(default: in --root) are VoxCeleb's own, from https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/:
- `iden_split.txt`, `<1|2|3> id10001/1zcIwhmdeo4/00001.wav` (1 train, 2 dev, 3 test);
- `veri_test2.txt`, `<1|0> <enroll wav> <test wav>`: VoxCeleb1-O, cleaned.

Writes manifests with absolute audio paths, ids that are the relative paths without `.wav`
(`id10001/1zcIwhmdeo4/00001`), durations from the wav headers and the field speaker (`id10001`):
- sid: `<out>/sid/{train,valid,test}.jsonl`, the three parts of iden_split.txt (closed set: every speaker in each);
- sv: `<out>/sv/test.jsonl`, every utterance the trials name; `<out>/sv/trials.txt`, the trials as
  `<1|0> <enroll id> <test id>`; `<out>/sv/train.jsonl`, every utterance under wav/ of every speaker that no trial
  names, so the verification speakers are never heard in training, less `<out>/sv/valid.jsonl`: every utterance of
  `--sv-valid-speakers` (20) of those speakers, drawn with `--seed`, from which validation draws its trials.
A listed wav that does not exist is skipped (a trial naming one is dropped), counted in one warning and listed in
`<out>/<task>/missing.txt`; more than half of a list missing is an error (a wrong --root).
"""

import argparse
import os
from collections.abc import Collection, Iterable
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from recipes.audio import audio_duration
from recipes.data import write_jsonl
from recipes.manifests import absent_audio
from recipes.trials import read_trials, write_trials

TASKS = ("sid", "sv")
META_URL = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/"
LISTS = {"sid": "iden_split.txt", "sv": "veri_test2.txt"}  # task -> the list it needs, by its VoxCeleb name
SID_SPLITS = {"1": "train", "2": "valid", "3": "test"}
SID_FORM = "`<1|2|3> <speaker>/<video>/<NNNNN>.wav`"
SV_FORM = "`<1|0> <speaker>/<video>/<NNNNN>.wav <speaker>/<video>/<NNNNN>.wav`"

Row = tuple[int, str, list[str]]  # line number, label, wav names


def check_inputs(root: Path, lists: dict[str, Path]) -> None:
    """Fail before any reading if --root has no wav/ or a requested task's list is absent, naming all at once."""
    problems = []
    if not (root / "wav").is_dir():
        problems.append(
            f"wav/ not found under {root}: is --root the VoxCeleb1 folder that holds "
            "wav/<speaker>/<video>/<NNNNN>.wav (the dev and test archives unpacked together)?"
        )
    for task, path in lists.items():
        if not path.is_file():
            option = "--iden-split" if task == "sid" else "--trials"
            problems.append(
                f"{path} not found: {option} must name {LISTS[task]} (download it from {META_URL}{LISTS[task]}), "
                f"or leave {task} out of --tasks"
            )
    if problems:
        raise ValueError("\n".join(problems))


def check_name(name: str, where: str, form: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or len(path.parts) != 3 or path.suffix != ".wav":
        raise ValueError(f"{where}: {name!r} is not a <speaker>/<video>/<NNNNN>.wav path; expected {form}")


def read_list(path: Path, labels: Collection[str], names: int, form: str) -> list[Row]:
    """The lines of a VoxCeleb list, each a label and `names` wav paths; a malformed line is an error naming it."""
    rows = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) != 1 + names:
            raise ValueError(f"{where}: expected {form}, got {text.strip()!r}")
        label, *wavs = fields
        if label not in labels:
            raise ValueError(f"{where}: label {label!r} is not one of {', '.join(labels)}; expected {form}")
        for name in wavs:
            check_name(name, where, form)
        rows.append((number, label, wavs))
    if not rows:
        raise ValueError(f"{path} is empty; expected {form} one a line")
    return rows


def utterance_id(name: str) -> str:
    """`id10001/1zcIwhmdeo4/00001.wav` -> `id10001/1zcIwhmdeo4/00001`."""
    return name.removesuffix(".wav")


def speaker_of(name: str) -> str:
    return name.split("/", 1)[0]


def find_missing(wav_dir: Path, names: list[str], source: Path, listing: Path) -> set[str]:
    """The names among `names` (unique) whose wav is absent, listed in `listing` (see `absent_audio`)."""
    absent = absent_audio(
        [wav_dir / name for name in names],
        listing,
        f"wav files that {source} names",
        f"is --root the VoxCeleb1 folder, with the dev and test archives both unpacked into {wav_dir}?",
    )
    return {name for name in names if str(wav_dir / name) in absent}


class Durations:
    """Durations from wav headers, each file read once although SID and SV share most of them."""

    def __init__(self, wav_dir: Path) -> None:
        self.wav_dir = wav_dir
        self.seconds: dict[str, float] = {}

    def entries(self, names: Iterable[str], what: str) -> list[dict]:
        """Manifest entries for the wav names (relative to wav/), in the order given."""
        names = list(names)
        new = [name for name in dict.fromkeys(names) if name not in self.seconds]
        for name in tqdm(new, desc=f"reading wav headers ({what})", unit="file", disable=not new):
            self.seconds[name] = audio_duration(self.wav_dir / name)
        return [
            {
                "id": utterance_id(name),
                "audio": str(self.wav_dir / name),
                "duration": self.seconds[name],
                "speaker": speaker_of(name),
            }
            for name in names
        ]


def write(path: Path, entries: list[dict]) -> None:
    write_jsonl(path, entries)
    speakers = len({e["speaker"] for e in entries})
    print(f"wrote {path}: {len(entries)} utterances of {speakers} speakers")


def prepare_sid(wav_dir: Path, iden_split: Path, out: Path, durations: Durations) -> None:
    """SUPERB SID: iden_split.txt's train (1), dev (2) and test (3) parts."""
    rows = read_list(iden_split, SID_SPLITS, 1, SID_FORM)
    first_line: dict[str, int] = {}
    for number, _, (name,) in rows:
        if name in first_line:
            raise ValueError(f"{iden_split} line {number}: {name} is listed again (first on line {first_line[name]})")
        first_line[name] = number
    missing = find_missing(wav_dir, list(first_line), iden_split, out / "sid" / "missing.txt")
    for label, split in SID_SPLITS.items():
        names = [name for _, mark, (name,) in rows if mark == label and name not in missing]
        if not names:
            raise ValueError(f"{iden_split} has no existing wav in part {label} ({split}); expected {SID_FORM}")
        write(out / "sid" / f"{split}.jsonl", durations.entries(names, f"sid {split}"))


def hold_out_speakers(names: list[str], count: int, seed: int) -> tuple[list[str], list[str]]:
    """`(train, valid)`: every utterance of `count` seeded speakers goes to valid (unseen speakers, as at test)."""
    speakers = sorted({speaker_of(name) for name in names})
    if count >= len(speakers):
        raise ValueError(f"--sv-valid-speakers {count} leaves no training speaker of {len(speakers)}")
    held = set(np.random.default_rng(seed).permutation(speakers)[:count].tolist())
    return [n for n in names if speaker_of(n) not in held], [n for n in names if speaker_of(n) in held]


def prepare_sv(
    wav_dir: Path, trials_path: Path, out: Path, durations: Durations, valid_speakers: int = 20, seed: int = 0
) -> None:
    """Verification on the trials' speakers, training on all the others (VoxCeleb1-O with VoxCeleb1 dev)."""
    rows = read_list(trials_path, ("1", "0"), 2, SV_FORM)
    named = sorted({name for _, _, names in rows for name in names})
    missing = find_missing(wav_dir, named, trials_path, out / "sv" / "missing.txt")
    trials = [(int(label), *map(utterance_id, names)) for _, label, names in rows if not missing & set(names)]
    # Speakers of every named file, missing or not: a trial speaker must not be trained on either way.
    trial_speakers = {speaker_of(name) for name in named}
    train = [
        path.relative_to(wav_dir).as_posix()
        for path in sorted(wav_dir.glob("*/*/*.wav"))
        if path.parts[-3] not in trial_speakers and not path.name.startswith(".")
    ]
    if not train:
        raise ValueError(f"no wav under {wav_dir} is of a speaker outside {trials_path}: nothing to train SV on")
    train, valid = hold_out_speakers(train, valid_speakers, seed)
    write(out / "sv" / "train.jsonl", durations.entries(train, "sv train"))
    write(out / "sv" / "valid.jsonl", durations.entries(valid, "sv valid"))
    test = durations.entries([name for name in named if name not in missing], "sv test")
    write(out / "sv" / "test.jsonl", test)
    write_trials(out / "sv" / "trials.txt", trials)
    # Read back against the test manifest: fails here, not at scoring, if a trial lost a kind (targets, non-targets).
    read_trials(out / "sv" / "trials.txt", [e["id"] for e in test], manifest=out / "sv" / "test.jsonl")
    targets = sum(label for label, _, _ in trials)
    dropped = f"; dropped {len(rows) - len(trials)} of {len(rows)} that name a missing wav" if missing else ""
    print(
        f"wrote {out / 'sv' / 'trials.txt'}: {len(trials)} trials ({targets} target, {len(trials) - targets} "
        f"non-target){dropped}"
    )


def parse_tasks(text: str) -> list[str]:
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one or both of {', '.join(TASKS)}, comma-separated")
    return list(dict.fromkeys(tasks))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the folder that holds wav/<speaker>/<video>/")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/voxceleb1")
    parser.add_argument("--tasks", type=parse_tasks, default=list(TASKS), help="sid, sv or sid,sv (default)")
    parser.add_argument("--iden-split", type=Path, help="iden_split.txt (default: <root>/iden_split.txt)")
    parser.add_argument("--trials", type=Path, help="veri_test2.txt (default: <root>/veri_test2.txt)")
    parser.add_argument("--sv-valid-speakers", type=int, default=20, help="training speakers held out to validate SV")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out speakers (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Absolute without resolving symlinks: the manifests keep the path the user knows the data by.
    root = Path(os.path.abspath(args.root))
    given = {"sid": args.iden_split, "sv": args.trials}
    lists = {task: given[task] or root / LISTS[task] for task in args.tasks}
    check_inputs(root, lists)
    wav_dir = root / "wav"
    durations = Durations(wav_dir)
    if "sid" in lists:
        prepare_sid(wav_dir, lists["sid"], args.out, durations)
    if "sv" in lists:
        prepare_sv(wav_dir, lists["sv"], args.out, durations, args.sv_valid_speakers, args.seed)


if __name__ == "__main__":
    main()
