"""DCASE 2023 Task 2 (first-shot unsupervised anomalous sound detection) file names and manifests.

Development clips, `dev_data/raw/<machine>/{train,test}/`, are named

    section_<SS>_<source|target>_<train|test>_<normal|anomaly>_<NNNN>[_<key>_<value>...].wav

e.g. `section_00_target_test_anomaly_0003_m-n_W.wav`: the attributes are `key_value` pairs joined by `_`, read
left to right (key, value, key, value ...), so a value is one token and may hold `-` or `.` but not `_`. Some
machines have none (`section_00_source_train_normal_0000.wav`); DCASE 2024 writes that as `noAttribute`, which is
read as no attributes too. Evaluation clips are `section_<SS>_<NNNN>.wav`: no domain, split or label, which the
organisers publish afterwards as `ground_truth_data/ground_truth_<machine>_section_<SS>_test.csv` (`<file name>,<0|1>`,
1 anomalous) and their domains as `ground_truth_domain/ground_truth_<machine>_section_<SS>_test.csv` (same form, 1 the
target domain), as the official evaluator reads them. Without the domain file an evaluation entry has no `domain`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import soundfile

# The task fields of an ASD manifest, for `recipes.data.read_manifest`. `label` is not among them: evaluation clips
# without ground truth have none.
MANIFEST_FIELDS: dict[str, type] = {"machine": str, "section": str, "domain": str, "attributes": dict}
# Evaluation clips have no domain (see the module docstring).
EVAL_MANIFEST_FIELDS: dict[str, type] = {"machine": str, "section": str, "attributes": dict}

DEV_PATTERN = re.compile(
    r"section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_(?P<label>normal|anomaly)"
    r"_(?P<index>\d+)(?:_(?P<attributes>.+))?"
)
EVAL_PATTERN = re.compile(r"section_(?P<section>\d+)_(?P<index>\d+)")
NO_ATTRIBUTES = "noAttribute"
EXPECTED = (
    "expected section_<SS>_<source|target>_<train|test>_<normal|anomaly>_<NNNN>[_<key>_<value>...].wav "
    "or section_<SS>_<NNNN>.wav"
)
LABELS = {"0": "normal", "1": "anomaly"}
DOMAINS = {"0": "source", "1": "target"}


@dataclass
class DcaseName:
    """The fields of a DCASE clip name; `domain`, `split` and `label` are None for an evaluation clip."""

    section: str
    domain: str | None
    split: str | None
    label: str | None
    index: str
    attributes: dict[str, str] = field(default_factory=dict)


def parse_dcase_name(name_or_path: str | PurePath) -> DcaseName:
    """The fields of a DCASE clip's file name (a bare name or a path; the `.wav` extension is optional).

    Raises ValueError naming the file for a name that is neither form, and for attributes that are not key/value
    pairs (an odd number of tokens, or an empty one).
    """
    name = PurePath(name_or_path).name
    stem = name[: -len(".wav")] if name.lower().endswith(".wav") else name
    match = EVAL_PATTERN.fullmatch(stem)
    if match:
        return DcaseName(match["section"], None, None, None, match["index"], {})
    match = DEV_PATTERN.fullmatch(stem)
    if not match:
        raise ValueError(f"{name_or_path}: not a DCASE clip name; {EXPECTED}")
    text = match["attributes"]
    tokens = [] if text is None or text == NO_ATTRIBUTES else text.split("_")
    if "" in tokens:
        raise ValueError(f"{name_or_path}: empty attribute key or value in {text!r} (a doubled or trailing '_')")
    if len(tokens) % 2:
        raise ValueError(
            f"{name_or_path}: attributes {text!r} have {len(tokens)} tokens, not key_value pairs "
            "(a value cannot contain '_')"
        )
    attributes = dict(zip(tokens[::2], tokens[1::2], strict=True))
    if len(attributes) < len(tokens) // 2:
        raise ValueError(f"{name_or_path}: attribute key repeated in {text!r}")
    return DcaseName(match["section"], match["domain"], match["split"], match["label"], match["index"], attributes)


def read_ground_truth(path: str | Path, values: dict[str, str] = LABELS) -> dict[str, str]:
    """File name -> "normal" / "anomaly" from a DCASE ground-truth CSV, `<file name>,<0|1>` one a line (1 anomalous);
    with `values=DOMAINS`, file name -> "source" / "target" from a domain CSV of the same form (1 target).

    The published files have no header; a first line whose value is not 0 or 1 is taken for one and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ground-truth file {path} does not exist")
    meaning = " / ".join(f"{code} {value}" for code, value in values.items())
    truth: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            fields = [part.strip() for part in text.strip().split(",")]
            if len(fields) != 2:
                raise ValueError(f"{path} line {number}: expected `<file name>,<0|1>`, got {text.strip()!r}")
            name, code = fields
            if code not in values:
                if number == 1 and not truth:
                    continue  # a header
                raise ValueError(f"{path} line {number}: value {code!r} is not {meaning}")
            truth[PurePath(name).name] = values[code]
    if not truth:
        raise ValueError(f"ground-truth file {path} has no entries")
    return truth


# One ground-truth CSV, or several (one per section of a machine).
TruthFiles = str | Path | Sequence[str | Path] | None


def _read_truths(given: TruthFiles, values: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The merged `file name -> value` of one or several ground-truth CSVs, and how to name them in errors."""
    paths = [] if given is None else [Path(given)] if isinstance(given, str | Path) else [Path(p) for p in given]
    truth: dict[str, str] = {}
    for path in paths:
        for name, value in read_ground_truth(path, values).items():
            if name in truth:
                raise ValueError(f"{path} gives {name} again: it is in another of the ground-truth files too")
            truth[name] = value
    described = None if not paths else str(paths[0]) if len(paths) == 1 else " / ".join(map(str, paths))
    return truth, described


def _check_truth(truth: dict[str, str], path: str | Path | None, names: set[str], folder: Path) -> None:
    unknown = sorted(set(truth) - names)
    if unknown:
        raise ValueError(
            f"{path} names {len(unknown)} file(s) that are not in {folder}, e.g. {unknown[0]} "
            "(is it the ground truth of another machine or section?)"
        )


def _merge(name_value: str | None, truth: dict[str, str], path: Path, csv: str | Path | None, what: str) -> str | None:
    """The clip's label or domain: from its name, else from the ground truth, which must agree with the name."""
    if path.name in truth:
        if name_value is not None and name_value != truth[path.name]:
            given = truth[path.name]
            raise ValueError(f"{csv} gives {path.name} the {what} {given!r}, but its name says {name_value!r}")
        return truth[path.name]
    if csv is not None and name_value is None:
        raise ValueError(f"{csv} has no {what} for {path}")
    return name_value


def manifest_entries(
    root: str | Path,
    machine: str,
    split_dir: str,
    ground_truth: TruthFiles = None,
    domain_truth: TruthFiles = None,
) -> list[dict[str, Any]]:
    """Manifest entries for every `*.wav` in `root/<machine>/<split_dir>/`, sorted by file name.

    `root` is the folder that holds the machines (`dev_data/raw` in the DCASE layout). Each entry is
    `{"id": "<machine>/<stem>", "audio": path, "duration": seconds, "machine", "section", "domain", "label",
    "attributes"}`; `label` is left out where neither the name nor `ground_truth` gives one, and `domain` where the
    name has none (evaluation clips). `ground_truth` (a DCASE ground-truth CSV) labels evaluation clips and
    `domain_truth` (a ground-truth domain CSV) gives their domains (either may be a list: one CSV per section); each
    must cover every clip without one, name no other file, and agree with what a name carries.
    """
    folder = Path(root) / machine / split_dir
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected the DCASE layout <root>/<machine>/{{train,test}}/")
    paths = sorted(folder.glob("*.wav"))
    if not paths:
        raise ValueError(f"{folder} has no .wav files")
    names = {path.name for path in paths}
    labels, label_files = _read_truths(ground_truth, LABELS)
    domains, domain_files = _read_truths(domain_truth, DOMAINS)
    _check_truth(labels, label_files, names, folder)
    _check_truth(domains, domain_files, names, folder)
    entries = []
    for path in paths:
        parsed = parse_dcase_name(path)
        label = _merge(parsed.label, labels, path, label_files, "label")
        domain = _merge(parsed.domain, domains, path, domain_files, "domain")
        info = soundfile.info(str(path))
        entry: dict[str, Any] = {
            "id": f"{machine}/{path.stem}",
            "audio": str(path),
            "duration": info.frames / info.samplerate,
            "machine": machine,
            "section": parsed.section,
        }
        if domain is not None:
            entry["domain"] = domain
        if label is not None:
            entry["label"] = label
        entry["attributes"] = parsed.attributes
        entries.append(entry)
    return entries
