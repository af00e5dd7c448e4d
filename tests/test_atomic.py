"""A write that fails half-way (a full disk, a crash) leaves the previous file whole and no temporary behind."""

import errno
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from recipes import atomic
from recipes.data import write_jsonl
from recipes.results import Results
from recipes.tokenizer import train_tokenizer


def disk_full_after(monkeypatch, written: int = 10) -> None:
    """Every text or bytes write puts `written` characters on disk, then fails as a full disk does."""

    def half_write(self, data, *args, **kwargs):
        with open(self, "w" if isinstance(data, str) else "wb") as handle:
            handle.write(data[:written])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half_write)
    monkeypatch.setattr(Path, "write_bytes", half_write)


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = atomic.write_text(tmp_path / "a.txt", "the first version\n")
    disk_full_after(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_text(path, "a second version, much longer\n")
    assert path.read_bytes() == b"the first version\n" and leftovers(tmp_path) == []


def test_results_manifests_and_tokenizers_survive_a_failed_rewrite(tmp_path, monkeypatch):
    results = Results(task="emotion", upstream="fbank", interface="weighted_sum", trainable="frozen",
                      metrics={"UA": 50.0}, dataset="d", seed=0, num_utterances=4)  # fmt: skip
    results.write(tmp_path)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": "a.wav", "duration": 1.0, "text": "AB BA"}])
    tokenizer = tmp_path / "chars.model"
    train_tokenizer(["AB BA", "BAD CAB"], tokenizer)
    before = {path: path.read_bytes() for path in (tmp_path / "results.json", manifest, tokenizer)}
    disk_full_after(monkeypatch)
    with pytest.raises(OSError):
        Results(task="emotion", upstream="fbank", interface="weighted_sum", trainable="frozen",
                metrics={"UA": 99.0}).write(tmp_path)  # fmt: skip
    with pytest.raises(OSError):
        write_jsonl(manifest, [{"id": "b", "audio": "a.wav", "duration": 2.0}])
    with pytest.raises(OSError):
        train_tokenizer(["A B C D E F"], tokenizer)
    assert {path: path.read_bytes() for path in before} == before
    assert json.loads((tmp_path / "results.json").read_text())["UA"] == 50.0
    assert leftovers(tmp_path) == []


def test_a_checkpoint_write_that_fails_leaves_the_last_checkpoint_loadable(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    first = {"state_dict": model.state_dict(), "epoch": 0}
    checkpoint_io = L.pytorch.plugins.TorchCheckpointIO()
    path = tmp_path / "last.ckpt"
    checkpoint_io.save_checkpoint(first, path)
    import fsspec.implementations.local as local

    def failing_write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local.LocalFileOpener, "write", failing_write)
    with pytest.raises(OSError):
        checkpoint_io.save_checkpoint({"state_dict": torch.nn.Linear(2, 2).state_dict(), "epoch": 1}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 0 and torch.equal(loaded["state_dict"]["weight"], first["state_dict"]["weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
