"""`InputSpec`: what the data side needs to know of the model it feeds, handed over once.

The model is built first; `SSLTaskModule.input_spec()` describes it and the data module receives that description
(`strata fit` links it with LightningCLI's `link_arguments`; in a Trainer of your own, pass
`ManifestDataModule(..., spec=module.input_spec())`). So the data module never reads the model, and the model never
reads the data module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .tasks import Task


@dataclass(frozen=True)
class InputSpec:
    """The task (labels, fields, drops, crops) and the upstream's input contract.

    `min_samples` is the upstream's receptive field (a shorter clip makes no frame); `frame_lengths` maps sample
    counts `[B]` to the upstream's frame counts `[B]` (the length of a cached crop). `upstream`, `trainable` and
    `fingerprint` let a feature cache check that it holds this upstream's features; `fingerprint` is called only
    then, since hashing a large model's weights takes seconds. `reads_audio`: the head reads the waveform too, so
    cached features cannot stand in for the audio.
    """

    task: Task
    upstream: str
    sample_rate: int
    frame_rate: float
    frame_lengths: Callable[[torch.Tensor], torch.Tensor]
    fingerprint: Callable[[], str]
    min_samples: int = 0
    trainable: str = "frozen"
    reads_audio: bool = False
