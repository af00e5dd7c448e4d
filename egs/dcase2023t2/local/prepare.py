"""DCASE 2023 Task 2 (first-shot anomalous sound detection) manifests, all machines together.

    python local/prepare.py --root /data/dcase2023t2 --out data/dcase2023t2 [--ground-truth /data/evaluator]

Reads `<root>/dev_data/raw/<machine>/{train,test}/*.wav` (the development archives `dev_<machine>.zip` unzipped into
`dev_data/raw`) and, when there, `<root>/eval_data/raw/<machine>/{train,test}/` (the additional training
`eval_data_<machine>_train.zip` and evaluation `eval_data_<machine>_test.zip` archives). Writes
`<out>/dev_train.jsonl`, `<out>/dev_valid.jsonl` (`--valid-fraction` of each machine's source training clips,
seeded) and `<out>/dev_test.jsonl`, and with eval_data `<out>/eval_{train,valid}.jsonl` and
`<out>/eval_test.jsonl` (only eval_train when no evaluation test clips were unzipped yet), with the fields of
`recipes.dcase.manifest_entries` and absolute audio paths. Evaluation test clips (`section_<SS>_<NNNN>.wav`) carry
no label or domain in their names; they get them from `--ground-truth`, a folder in the official evaluator's
layout (`ground_truth_data/ground_truth_<machine>_section_<SS>_test.csv`, and `ground_truth_domain/` alike), for
the machines it has files for; the others stay unlabelled, which strata scores without metrics. Prints clips per
machine, split, domain and label.
"""

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from recipes.data import write_jsonl
from recipes.dcase import manifest_entries, parse_dcase_name

SETS = ("dev_data", "eval_data")
LABEL_DIR = "ground_truth_data"
DOMAIN_DIR = "ground_truth_domain"


def machines_of(raw: Path) -> list[str]:
    return sorted(path.name for path in raw.iterdir() if path.is_dir())


def has_wavs(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.wav"))


def check_tree(root: Path) -> dict[str, dict[str, list[str]]]:
    """dev_data / eval_data -> machine -> the split folders to read; raises one error naming everything missing.

    Every machine needs train/ and test/ with .wav files, except that eval_data may lack test/ on every machine
    (the evaluation archives came out after the additional training ones).
    """
    if not root.is_dir():
        raise ValueError(f"DCASE root {root} is not a folder")
    dev_raw = root / "dev_data" / "raw"
    if not dev_raw.is_dir():
        raise ValueError(
            f"{dev_raw} is not a folder: --root is the folder that holds dev_data/raw/<machine>/{{train,test}}/ "
            "(unzip the dev_<machine>.zip archives into <root>/dev_data/raw)"
        )
    problems: list[str] = []
    tree: dict[str, dict[str, list[str]]] = {}
    for name in SETS:
        raw = root / name / "raw"
        if name != "dev_data" and not raw.is_dir():
            continue
        machines = machines_of(raw)
        if not machines:
            problems.append(f"{raw} has no machine folders")
            continue
        tests = [m for m in machines if (raw / m / "test").exists()]
        optional_test = name == "eval_data" and not tests
        tree[name] = {}
        for machine in machines:
            splits = ["train"] if optional_test else ["train", "test"]
            problems += [
                f"{raw / machine / split} has no .wav files" for split in splits if not has_wavs(raw / machine / split)
            ]
            tree[name][machine] = splits
    if problems:
        raise ValueError("incomplete DCASE tree:\n  " + "\n  ".join(problems))
    return tree


def truth_files(ground_truth: Path, folder: str, machine: str, sections: Sequence[str]) -> list[Path] | None:
    """The machine's CSVs in `ground_truth/folder`, one per section; None if it has none for the machine."""
    paths = [ground_truth / folder / f"ground_truth_{machine}_section_{section}_test.csv" for section in sections]
    found = [path for path in paths if path.is_file()]
    if not found:
        return None
    if len(found) < len(paths):
        missing = ", ".join(str(path) for path in paths if not path.is_file())
        raise ValueError(f"{ground_truth / folder} has ground truth for some sections of {machine} but not {missing}")
    return found


def eval_test_entries(raw: Path, machine: str, ground_truth: Path | None) -> list[dict[str, Any]]:
    """Evaluation test entries, labelled (and given domains) from the ground truth where it covers the machine."""
    if ground_truth is None:
        return manifest_entries(raw, machine, "test")
    sections = sorted({parse_dcase_name(path).section for path in (raw / machine / "test").glob("*.wav")})
    labels = truth_files(ground_truth, LABEL_DIR, machine, sections)
    domains = truth_files(ground_truth, DOMAIN_DIR, machine, sections)
    if labels is None and domains is None:
        print(f"note: no ground truth for {machine} in {ground_truth}; its evaluation test clips stay unlabelled")
    return manifest_entries(raw, machine, "test", ground_truth=labels, domain_truth=domains)


def check_ground_truth(ground_truth: Path | None) -> None:
    if ground_truth is not None and not (ground_truth / LABEL_DIR).is_dir():
        raise ValueError(
            f"{ground_truth / LABEL_DIR} is not a folder: --ground-truth is the folder holding "
            f"{LABEL_DIR}/ground_truth_<machine>_section_<SS>_test.csv (and {DOMAIN_DIR}/), "
            "as in the official evaluator"
        )


def summary(machine: str, manifest: str, entries: list[dict[str, Any]]) -> str:
    """`fan  dev_test  200 clips: source normal 50, source anomaly 50, ...` (unlabelled clips counted as such)."""
    counts = Counter(
        " ".join(part for part in (e.get("domain"), e.get("label", "unlabelled")) if part) for e in entries
    )
    parts = ", ".join(f"{key} {count}" for key, count in sorted(counts.items()))
    return f"  {machine:<12} {manifest:<10} {len(entries):>5} clips: {parts}"


def hold_out(entries: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """`(train, valid)`: a seeded `fraction` of each machine's source training clips held out to validate the
    auxiliary classifier (DCASE gives no validation split; the few target clips all stay in training)."""
    generator = np.random.default_rng(seed)
    held: set[str] = set()
    for machine in sorted({entry["machine"] for entry in entries}):
        ids = sorted(e["id"] for e in entries if e["machine"] == machine and e.get("domain") == "source")
        count = max(round(fraction * len(ids)), 1) if len(ids) > 1 else 0  # one at least, never a machine's last
        held.update(generator.permutation(ids)[:count].tolist())
    return [e for e in entries if e["id"] not in held], [e for e in entries if e["id"] in held]


def prepare(
    root: Path, out: Path, ground_truth: Path | None = None, valid_fraction: float = 0.1, seed: int = 0
) -> dict[str, Path]:
    """Write the manifests (see the module docstring); manifest name -> path."""
    tree = check_tree(root)
    check_ground_truth(ground_truth)
    manifests: dict[str, list[dict[str, Any]]] = {}
    lines = []
    jobs = [
        (name, machine, split)
        for name, machines in tree.items()
        for machine, splits in machines.items()
        for split in splits
    ]
    for name, machine, split in tqdm(jobs, desc="reading headers", unit="folder"):
        raw = Path(os.path.abspath(root / name / "raw"))  # absolute audio paths; symlinks kept
        manifest = f"{name.removesuffix('_data')}_{split}"
        if name == "eval_data" and split == "test":
            entries = eval_test_entries(raw, machine, ground_truth)
        else:
            entries = manifest_entries(raw, machine, split)
        manifests.setdefault(manifest, []).extend(entries)
        lines.append(summary(machine, manifest, entries))
    if ground_truth is not None and "eval_test" not in manifests:
        print(f"note: no evaluation test clips under {root / 'eval_data' / 'raw'}; --ground-truth not used")
    for name in ("dev", "eval"):
        if f"{name}_train" in manifests and valid_fraction > 0:
            manifests[f"{name}_train"], valid = hold_out(manifests[f"{name}_train"], valid_fraction, seed)
            if valid:
                manifests[f"{name}_valid"] = valid
    written = {}
    print("clips per machine:\n" + "\n".join(lines))
    for manifest, entries in manifests.items():
        written[manifest] = write_jsonl(out / f"{manifest}.jsonl", entries)
        hours = sum(entry["duration"] for entry in entries) / 3600
        machines = len({entry["machine"] for entry in entries})
        print(f"wrote {written[manifest]}: {len(entries)} clips, {hours:.2f} h, {machines} machines")
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the folder holding dev_data/ (and eval_data/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/dcase2023t2")
    parser.add_argument(
        "--ground-truth", type=Path, help=f"folder with {LABEL_DIR}/ and {DOMAIN_DIR}/ (official evaluator layout)"
    )
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="source training clips held out (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out clips (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        prepare(args.root, args.out, args.ground_truth, args.valid_fraction, args.seed)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
