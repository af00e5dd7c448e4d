"""`strata extract` under torchrun: N processes write disjoint shards into one cache equal to a single process's, a
failure in one stops all with its reason, a folder another job writes is refused by all, and a rerun with another
number of processes finishes what a killed one left."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from recipes.cache import FeatureCache, extract
from recipes.data import read_manifest, write_jsonl
from recipes.locking import LOCK, FolderLock

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["--upstream", "tiny_hubert", "--dtype", "float32", "--batch-seconds", "4", "--shard-seconds", "5"]


@pytest.fixture
def small(mini_corpus, tmp_path) -> Path:
    """Sixteen emotion utterances of the mini corpus (several shards of 5 s), with absolute audio paths."""
    manifest = read_manifest(mini_corpus / "emotion" / "train.jsonl")
    entries = [{**e, "audio": str(Path(e["audio"]).resolve())} for e in manifest.entries[:16]]
    return write_jsonl(tmp_path / "small.jsonl", entries)


def torchrun(processes: int, manifest: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "recipes.cli", "extract", *SETTINGS, "--manifest", str(manifest), "--out", str(out)]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_two_processes_split_the_shards_into_the_cache_one_process_writes(small, tmp_path):
    extract("tiny_hubert", [small], tmp_path / "one", dtype="float32", batch_seconds=4, shard_seconds=5,
            progress=False)  # fmt: skip
    run = torchrun(2, small, tmp_path / "two")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("cached 16 utterances") == 1  # the first process reports for both
    one, two = FeatureCache(tmp_path / "one"), FeatureCache(tmp_path / "two")
    assert len(one.index.shards) >= 4 and two.index.shards == one.index.shards
    assert two.index.utterances == one.index.utterances and two.index.fingerprint == one.index.fingerprint
    for utterance in one.index.utterances:
        # equal up to float rounding: the processes run one thread each, this test's process more
        torch.testing.assert_close(two.hidden(utterance), one.hidden(utterance), rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "two" / LOCK).exists()


def test_a_failure_in_one_process_stops_both_with_its_reason_and_a_rerun_finishes_the_rest(small, tmp_path, capsys):
    entries = read_manifest(small).entries
    reference = tmp_path / "reference"
    extract("tiny_hubert", [small], reference, dtype="float32", batch_seconds=4, shard_seconds=5, progress=False)
    shards = len(FeatureCache(reference).index.shards)
    longest = max(entries, key=lambda e: float(e["duration"]))  # in the last shard
    wav, rate = soundfile.read(longest["audio"], dtype="float32")
    wav[len(wav) // 2] = np.nan  # found only when the clip is read, inside a process's shards
    soundfile.write(str(tmp_path / "nan.wav"), wav, rate, subtype="FLOAT")
    nan = str(tmp_path / "nan.wav")
    broken = write_jsonl(tmp_path / "broken.jsonl", [{**e, "audio": nan} if e is longest else e for e in entries])
    out = tmp_path / "cache"
    run = torchrun(2, broken, out)
    assert run.returncode != 0
    assert "nan.wav" in run.stderr and "failed" in run.stderr  # the failing process's error, and its peer's
    assert not (out / "index.json").exists() and not (out / LOCK).exists()
    finished = sorted(p.name for p in out.glob("shard_*.safetensors"))
    assert len(finished) == shards - 1  # every shard but the broken one: both processes finished their others
    before = {name: (out / name).stat().st_mtime_ns for name in finished}
    extract("tiny_hubert", [small], out, dtype="float32", batch_seconds=4, shard_seconds=5)  # fixed audio, 1 process
    assert f"{shards - 1} of {shards} shards were already written" in capsys.readouterr().out
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in before.items())  # not redone
    assert FeatureCache(out).index.utterances == FeatureCache(reference).index.utterances


def test_a_folder_another_job_writes_is_refused_by_every_process(small, tmp_path):
    out = tmp_path / "cache"
    with FolderLock(out, "strata extract (another job)"):
        run = torchrun(2, small, out)
    assert run.returncode != 0
    assert "is being written by strata extract (another job)" in run.stderr
    assert "process 0 of 2 failed" in run.stderr  # the second process stops with the first's reason
    assert not list(out.glob("shard_*"))
