"""The learning-rate schedule every strata LightningModule uses."""

from __future__ import annotations

from typing import Any

import torch


def with_linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> dict[str, Any]:
    """What `configure_optimizers` returns: `optimizer` with its rates ramped linearly from 1/(warmup + 1) of the
    set value to all of it over `warmup_steps` optimizer steps, then held (no warm-up for 0)."""
    warmup = max(warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
