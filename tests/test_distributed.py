"""ProcessGroup outside a launcher is one process whose collectives are no-ops; under one it reads its rank and
places itself on its own GPU (the launched case runs in tests/test_cache_processes.py)."""

import pytest
import torch

from recipes.distributed import ProcessGroup


def test_without_a_launcher_it_is_one_process_that_raises_its_own_error(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with ProcessGroup.from_env() as group:
        assert (group.rank, group.size, group.is_main) == (0, 1, True)
        assert group.share({"a": 1}) == {"a": 1}
        group.settle(None)
        error = ValueError("clip.wav: NaN samples")
        with pytest.raises(ValueError) as raised:
            group.settle(error)
        assert raised.value is error
    assert not torch.distributed.is_initialized()


def test_under_a_launcher_each_process_takes_its_rank_and_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    group = ProcessGroup.from_env()  # not entered: no process group is joined
    assert (group.rank, group.size, group.local_rank, group.is_main) == (3, 4, 1, False)
    assert group.device("cuda") == torch.device("cuda:1")  # not GPU 0 for every process
    assert group.device("cuda:0") == torch.device("cuda:0") and group.device("cpu") == torch.device("cpu")
    expected = torch.device("cuda:1") if torch.cuda.is_available() else torch.device("cpu")
    assert group.device("auto") == expected
