"""Random bytes and random JSON fed to every reader of user files (manifests, trials, Kaldi data dirs, CSVs): each
either loads or raises the project's own error, with the line at fault where there is one; never another
exception (a traceback instead of a message)."""

import json
import string
import tempfile
from pathlib import Path

import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes.data import ManifestError, read_manifest
from recipes.manifests import from_csv, from_kaldi
from recipes.trials import TrialsError, read_trials

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ("id", "audio", "duration", "start", "end", "emotion", "speaker", "text")
# Objects shaped like manifest lines (the usual keys with values of any type), so validation is reached.
ENTRY = st.dictionaries(st.sampled_from(FIELDS), JSON | st.just("a.wav") | st.floats(0, 5), max_size=6)
TEXT = st.text(alphabet=string.printable + "é\u00a0\x00", max_size=200)


def folder() -> Path:
    path = Path(tempfile.mkdtemp(prefix="fuzz"))
    soundfile.write(str(path / "a.wav"), [0.0] * 1600, 16000)  # one real file for entries that name it
    return path


def assert_owned(error: Exception, kind: type, with_line: bool = True) -> None:
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    if with_line and "line" not in str(error):
        assert any(words in str(error) for words in ("no utterances", "does not exist", "no rows", "not in")), error


@SETTINGS
@given(st.binary(max_size=300) | TEXT.map(str.encode))
def test_random_bytes_as_a_manifest(data):
    path = folder() / "m.jsonl"
    path.write_bytes(data)
    try:
        read_manifest(path)
    except ManifestError as error:
        assert_owned(error, ManifestError)


@SETTINGS
@given(st.lists(ENTRY | JSON, min_size=1, max_size=4))
def test_random_json_lines_as_a_manifest(lines):
    path = folder() / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    try:
        read_manifest(path, fields={"emotion": str})
    except ManifestError as error:
        assert_owned(error, ManifestError)


@SETTINGS
@given(st.binary(max_size=300) | TEXT.map(str.encode))
def test_random_bytes_as_trials(data):
    path = folder() / "trials.txt"
    path.write_bytes(data)
    try:
        read_trials(path, ids=["a", "b", "c"])
    except TrialsError as error:
        assert_owned(error, TrialsError)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["wav.scp", "segments", "utt2spk", "text"]), st.binary(max_size=200) |
                       TEXT.map(str.encode), min_size=1))  # fmt: skip
def test_random_kaldi_data_dirs(files):
    directory = folder()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    try:
        from_kaldi(directory, root=directory)
    except ManifestError as error:
        assert_owned(error, ManifestError)


@SETTINGS
@given(st.binary(max_size=300) | TEXT.map(str.encode))
def test_random_bytes_as_a_csv(data):
    path = folder() / "list.csv"
    path.write_bytes(data)
    try:
        from_csv(path)
    except ManifestError as error:
        assert_owned(error, ManifestError)
