"""Speaker-verification trial lists in the VoxCeleb convention, `<1|0> <enroll> <test>` one a line.

`read_trials` maps the two tokens of every trial to entries of a manifest and returns them as index tensors;
`make_trials` draws a balanced list from speaker labels and `write_trials` saves one.

A token names a manifest entry by, in this order:
1. its id, exactly;
2. a VoxCeleb path, `id10270/5r0dWxy17C8/00001.wav`: the path with its extension dropped, taken as it is
   (`id10270/5r0dWxy17C8/00001`), with `/` as `-` (`id10270-5r0dWxy17C8-00001`, the Kaldi / ESPnet style) or
   with `/` as `_` (`id10270_5r0dWxy17C8_00001`);
3. the end of the entry's audio path: its last components, as many as the token has, extensions dropped on both
   sides (`.../wav/id10270/5r0dWxy17C8/00001.wav` or `.../00001.flac` for the token above). A tail that ends
   several audio paths names none of them and is an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from . import atomic
from .textfiles import numbered_lines

FORMAT = "`<1|0> <enroll> <test>`"
SHOW_MISSING = 5  # ids listed in the error for tokens that name no utterance


class TrialsError(ValueError):
    """A trials file that cannot be used; the message names the file and, where there is one, the line."""


@dataclass
class Trials:
    """Trials as indices into a manifest's entries: `labels [N]` (1 target, 0 non-target), `enroll [N]`, `test [N]`."""

    path: Path
    labels: torch.Tensor
    enroll: torch.Tensor
    test: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()


def _stem(token: str) -> str:
    path = PurePosixPath(token)
    return str(path.with_suffix("")) if path.suffix else token


def _id_forms(token: str) -> list[str]:
    stem = _stem(token)
    return [token, stem, stem.replace("/", "-"), stem.replace("/", "_")]


class _Resolver:
    """Token -> manifest index by id, then VoxCeleb path forms, then audio-path tails (see the module docstring)."""

    AMBIGUOUS = -1

    def __init__(self, ids: Sequence[str], audio: Sequence[str] | None) -> None:
        if audio is not None and len(audio) != len(ids):
            raise ValueError(f"{len(audio)} audio paths for {len(ids)} ids")
        self.index = {utterance: i for i, utterance in enumerate(ids)}
        self.audio = audio
        self.tails: dict[int, dict[tuple[str, ...], int]] = {}  # component count -> tail -> index, built on demand

    def tail_index(self, count: int) -> dict[tuple[str, ...], int]:
        if count not in self.tails:
            table: dict[tuple[str, ...], int] = {}
            for i, path in enumerate(self.audio or ()):
                tail = PurePosixPath(_stem(Path(path).as_posix())).parts[-count:]
                table[tail] = self.AMBIGUOUS if tail in table else i
            self.tails[count] = table
        return self.tails[count]

    def __call__(self, token: str) -> int | None:
        for form in _id_forms(token):
            if form in self.index:
                return self.index[form]
        if self.audio is None:
            return None
        parts = PurePosixPath(_stem(token)).parts
        return self.tail_index(len(parts)).get(parts)


def read_trials(
    path: str | Path,
    ids: Sequence[str],
    audio: Sequence[str] | None = None,
    manifest: str | Path | None = None,
) -> Trials:
    """Read a trials file against a manifest's `ids` (and its `audio` paths, to match path-style tokens).

    `manifest` only names the manifest in error messages. Raises `TrialsError` on a missing or empty file, a
    malformed line (naming it), tokens that name no utterance (one error with their count and the first few) or
    a token that ends several audio paths, and on trials without both a target and a non-target (no EER).
    """
    path = Path(path)
    if not path.is_file():
        raise TrialsError(f"trials file {path} does not exist")
    resolve = _Resolver(ids, audio)
    source = f"manifest {manifest}" if manifest is not None else "the manifest"
    labels, enroll, test = [], [], []
    missing: dict[str, int] = {}  # token -> first line
    for number, text in numbered_lines(path, TrialsError):
        fields = text.split()
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) != 3:
            raise TrialsError(f"{where}: expected 3 fields {FORMAT}, got {len(fields)}: {text.strip()!r}")
        label, *tokens = fields
        if label not in ("0", "1"):
            raise TrialsError(f"{where}: label {label!r} is not 1 (target) or 0 (non-target)")
        indices = []
        for token in tokens:
            index = resolve(token)
            if index == _Resolver.AMBIGUOUS:
                raise TrialsError(
                    f"{where}: {token!r} matches the end of several audio paths in {source}; "
                    "use the utterance ids (or longer paths) in the trials"
                )
            if index is None:
                missing.setdefault(token, number)
            indices.append(index)
        labels.append(int(label))
        enroll.append(indices[0])
        test.append(indices[1])
    if not labels:
        raise TrialsError(f"trials file {path} has no trials; expected {FORMAT} one a line")
    if missing:
        first = ", ".join(f"{token} (line {line})" for token, line in list(missing.items())[:SHOW_MISSING])
        raise TrialsError(
            f"{path}: {len(missing)} trial ids are not in {source} ({len(ids)} utterances), first: {first}; "
            "check that the trials belong to that manifest (ids, VoxCeleb paths or audio paths are matched)"
        )
    targets = sum(labels)
    if targets in (0, len(labels)):
        kind = "target (1)" if targets == 0 else "non-target (0)"
        raise TrialsError(f"{path} has no {kind} trial among {len(labels)}: the EER is undefined without both kinds")
    return Trials(
        path=path,
        labels=torch.tensor(labels, dtype=torch.long),
        enroll=torch.tensor(enroll, dtype=torch.long),
        test=torch.tensor(test, dtype=torch.long),
    )


def _pair_offsets(size: int) -> np.ndarray:
    # Pairs (a, b), a < b, of `size` items in row order: row a starts at a * size - a * (a + 1) / 2.
    rows = np.arange(size)
    return rows * size - rows * (rows + 1) // 2


def make_trials(
    ids: Sequence[str], speakers: Sequence[str], seed: int = 0, max_targets: int | None = None
) -> list[tuple[int, str, str]]:
    """Balanced trials `(label, enroll id, test id)` from the speaker of each utterance.

    Targets are same-speaker pairs, each once with the earlier utterance (in `ids` order) enrolled and never an
    utterance with itself: all of them, or `max_targets` drawn without repetition. Non-targets are as many
    different-speaker pairs, drawn without repetition (fewer targets are kept if the different-speaker pairs
    run short). The draws come from `numpy.random.default_rng(seed)`, so a seed gives the same list; the list is
    sorted by the enrolled then the test utterance's position in `ids`.
    """
    if len(ids) != len(speakers):
        raise ValueError(f"{len(speakers)} speakers for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        repeated = sorted(u for u, n in Counter(ids).items() if n > 1)[:SHOW_MISSING]
        raise ValueError(f"ids must be unique to make trials; repeated: {', '.join(repeated)}")
    if max_targets is not None and max_targets < 1:
        raise ValueError(f"max_targets must be positive, got {max_targets}")
    by_speaker: dict[str, list[int]] = {}
    for index, speaker in enumerate(speakers):
        by_speaker.setdefault(speaker, []).append(index)
    if len(by_speaker) < 2:
        raise ValueError(f"non-target trials need at least 2 speakers; got {len(by_speaker)}")
    members = [np.array(indices) for indices in by_speaker.values() if len(indices) > 1]
    if not members:
        raise ValueError(f"target trials need a speaker with 2 utterances; all {len(by_speaker)} have one")
    counts = np.array([len(m) * (len(m) - 1) // 2 for m in members])
    total = int(counts.sum())
    available = len(ids) * (len(ids) - 1) // 2 - total
    count = min(total, available, max_targets or total)
    rng = np.random.default_rng(seed)

    # Targets: flat indices over every speaker's pairs, decoded without listing the pairs (large speakers).
    flat = np.arange(total) if count == total else np.sort(rng.choice(total, size=count, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    which = np.searchsorted(starts, flat, side="right") - 1
    pairs: list[tuple[int, int, int]] = []
    for group, utterances in enumerate(members):
        within = flat[which == group] - starts[group]
        offsets = _pair_offsets(len(utterances))
        rows = np.searchsorted(offsets, within, side="right") - 1
        columns = within - offsets[rows] + rows + 1
        pairs += [(1, int(a), int(b)) for a, b in zip(utterances[rows], utterances[columns], strict=True)]

    # Non-targets: rejection sampling of index pairs; different-speaker pairs usually far outnumber the draws.
    speaker_of = np.unique(np.asarray(speakers), return_inverse=True)[1]
    drawn: set[tuple[int, int]] = set()
    while len(drawn) < count:
        for a, b in np.sort(rng.integers(len(ids), size=(2 * (count - len(drawn)) + 16, 2)), axis=1).tolist():
            if speaker_of[a] != speaker_of[b] and (a, b) not in drawn:
                drawn.add((a, b))
                if len(drawn) == count:
                    break
    pairs += [(0, a, b) for a, b in drawn]
    pairs.sort(key=lambda pair: (pair[1], pair[2]))
    return [(label, ids[a], ids[b]) for label, a, b in pairs]


def write_trials(path: str | Path, trials: Iterable[tuple[int, str, str]]) -> None:
    """Write `(label, enroll, test)` trials one a line, under a temporary name then renamed (never half a file)."""
    path = Path(path)
    lines = []
    for number, (label, enroll, test) in enumerate(trials, start=1):
        if label not in (0, 1):
            raise ValueError(f"trial {number}: label {label!r} is not 1 (target) or 0 (non-target)")
        for token in (enroll, test):
            if not token or len(str(token).split()) != 1:
                raise ValueError(f"trial {number}: {token!r} cannot be a trials token (empty or has whitespace)")
        lines.append(f"{int(label)} {enroll} {test}\n")
    atomic.write_text(path, "".join(lines))
