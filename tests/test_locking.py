"""One writer per folder: a live writer's lock refuses a second, a dead writer's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.cli import main
from recipes.locking import LOCK, FolderLock, FolderLockedError

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": "strata extract", "started": "now"}
    (folder / LOCK).write_text(json.dumps({**record, **fields}))


def test_the_lock_is_held_inside_the_block_and_refuses_a_second_writer(tmp_path):
    with FolderLock(tmp_path / "out", "strata extract --upstream fbank") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "strata extract --upstream fbank"
        with pytest.raises(FolderLockedError, match=rf"out is being written by strata extract --upstream fbank \(pid "
                                                    rf"{os.getpid()} on {socket.gethostname()}"):  # fmt: skip
            FolderLock(tmp_path / "out", "strata extract").acquire()
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_lock_of_a_process_that_is_gone_or_half_written_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path / "a", pid=pid)
    with FolderLock(tmp_path / "a", "strata extract") as lock:
        assert lock.took_over["pid"] == pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / LOCK).write_text("")  # killed between creating and writing it
    with FolderLock(tmp_path / "b", "strata extract") as lock:
        assert lock.took_over == {}


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    write_lock(tmp_path, host="node-7", pid=1)
    with pytest.raises(FolderLockedError, match=rf"pid 1 on node-7.*remove {tmp_path / LOCK} if that process is gone"):
        FolderLock(tmp_path, "strata extract").acquire()


def test_strata_extract_into_a_folder_another_extraction_writes_is_refused(mini_corpus, tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "cache", pid=sleeper.pid, command="strata extract --upstream tiny_hubert")
        manifest = str(mini_corpus / "emotion" / "test.jsonl")
        code = main(["extract", "--upstream", "fbank", "--manifest", manifest, "--out", str(tmp_path / "cache")])
        assert code == 2
        error = capsys.readouterr().err
        assert f"is being written by strata extract --upstream tiny_hubert (pid {sleeper.pid}" in error
        assert not list((tmp_path / "cache").glob("shard_*"))  # nothing interleaved
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["extract", "--upstream", "fbank", "--manifest", manifest, "--out", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "cache" / "index.json").is_file() and not (tmp_path / "cache" / LOCK).exists()
