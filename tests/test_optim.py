"""The warm-up schedule both LightningModules use."""

import torch

from recipes.module import SSLTaskModule, UpstreamConfig
from recipes.optim import with_linear_warmup
from recipes.pretrain.module import HubertPretrainModule
from recipes.tasks import EmotionTask


def rates(config: dict, steps: int) -> list[float]:
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_linear_warmup_ramps_from_one_over_warmup_plus_one_to_the_set_rate_then_holds():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    config = with_linear_warmup(optimizer, 3)
    assert config["lr_scheduler"]["interval"] == "step"
    assert rates(config, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert rates(with_linear_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 0), 2) == [0.1] * 2


def test_task_and_pretraining_modules_share_the_schedule():
    task = SSLTaskModule(EmotionTask(classes=["a", "b"]), UpstreamConfig("fbank"), lr=1.0, warmup_steps=1)
    pretrain = HubertPretrainModule(lr=1.0, warmup_steps=1)
    assert rates(task.configure_optimizers(), 3) == rates(pretrain.configure_optimizers(), 3) == [0.5, 1.0, 1.0]
