"""The processes of one job started by `torchrun` (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK), for
the work that splits into independent pieces outside Lightning's trainer: feature extraction.

`ProcessGroup.from_env()` is the single process of a plain run (every method a no-op), or, under a launcher, joins
torch.distributed's default group (gloo on the CPU, nccl on GPUs) and leaves it when the block ends. A failure in
one process is gathered and raised in every process, so no process waits forever at a barrier for a dead peer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist


class PeerFailed(RuntimeError):
    """Another process of the job failed; the message is its error."""


@dataclass
class ProcessGroup:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    _joined: bool = False

    @classmethod
    def from_env(cls) -> ProcessGroup:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> ProcessGroup:
        if self.size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self._joined = True
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._joined:
            dist.destroy_process_group()
            self._joined = False

    def device(self, name: str) -> torch.device:
        """`auto`: this process's GPU (LOCAL_RANK) when there are GPUs, else the CPU; `cuda` without an index: this
        process's GPU too (so N processes do not share GPU 0); any other name as given."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda":
            return torch.device(f"cuda:{self.local_rank}")
        return torch.device(name)

    def share(self, value: Any) -> Any:
        """The main process's `value`, in every process."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def settle(self, error: BaseException | None) -> None:
        """Every process reports how its part ended; all raise if any failed (the failed one its own error, the others
        `PeerFailed` naming the first failure). Also the barrier: no process returns before all have reported."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        reports: list[str | None] = [None] * self.size
        dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if failed:
            rank, report = failed[0]
            raise PeerFailed(f"process {rank} of {self.size} failed: {report}")
