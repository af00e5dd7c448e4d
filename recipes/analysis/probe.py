"""Layer-wise probing: one cheap classifier per hidden layer, to show which layers hold which information.

The method of Pasad et al. (2021, 2023) and of SUPERB's learned layer weights, done with probes cheap enough to
train one per layer in seconds on a CPU: features `[N, D]` read from the feature cache, labels `[N]`.

Probes are full-batch and trained with Adam for a fixed number of steps. Not L-BFGS, although the linear probe is
convex: Adam serves both probes (the MLP's dropout makes every step's loss noisy, which breaks L-BFGS's line
search), a fixed step count makes the run time of a 12-layer sweep predictable, and Adam does not stop on a
tolerance whose meaning changes with the loss scale.

Frame-level probing (phones, characters) reads an `alignment` field from each manifest entry: a list of
`[start, end, label]` segments, times in seconds from the start of the entry's audio, e.g.
`"alignment": [[0.0, 0.12, "sil"], [0.12, 0.19, "HH"], [0.19, 0.31, "AH"]]` (from a forced or CTC alignment).
`frame_labels` turns it into one label per upstream frame; frames outside every segment get None and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upstream.names import Registry

PROBES: Registry[nn.Module] = Registry("probe")
register = PROBES.register

# A feature that is constant on the train set carries no information; dividing it by ~0 would turn float noise
# in the test set into huge values, so it is centred and left unscaled.
_MIN_STD = 1e-6
# Overlaps below this (seconds) are rounding in the alignment tool's output, not two labels for one instant.
_OVERLAP_TOLERANCE_S = 1e-6


def build_probe(name: str, input_size: int, num_classes: int) -> nn.Module:
    """-> an unstandardised classifier `[N, D]` -> logits `[N, C]`; `train_probe` adds the standardisation."""
    return PROBES.build(name, input_size, num_classes)


@register("linear")
def linear_probe(input_size: int, num_classes: int) -> nn.Module:
    """Multinomial logistic regression: what a layer holds linearly, the usual probing question."""
    return nn.Linear(input_size, num_classes)


@register("mlp")
def mlp_probe(input_size: int, num_classes: int, hidden_size: int = 256, dropout: float = 0.1) -> nn.Module:
    """One hidden layer: information a layer holds but not linearly separably."""
    return nn.Sequential(
        nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_classes)
    )


class StandardizedProbe(nn.Module):
    """A probe with the train set's per-dimension mean and std as buffers, so test features get the same scaling
    and a saved probe is complete. Layers differ in scale by orders of magnitude; without this one learning rate
    cannot serve them all."""

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        """`x [N, D]` -> logits `[N, C]`."""
        return self.net((x.to(self.mean.dtype) - self.mean) / self.std)


def _check_xy(x: Tensor, y: Tensor, num_classes: int, what: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{what} features must be [N, D]; got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what} labels must be [N] with N = {x.shape[0]} (the features' rows); got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} set is empty")
    if y.dtype != torch.long:
        raise TypeError(f"{what} labels must be class indices (torch.long); got {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{what} labels must lie in [0, {num_classes}); got [{int(y.min())}, {int(y.max())}]")
    if not torch.isfinite(x).all():
        rows = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
        raise ValueError(f"{what} features hold NaN or inf in {rows.numel()} row(s), first at row {int(rows[0])}")


def train_probe(
    kind: str,
    x_train: Tensor,
    y_train: Tensor,
    num_classes: int,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    seed: int = 0,
    balanced: bool = False,
) -> nn.Module:
    """Fit a `kind` probe on `x_train [N, D]`, `y_train [N]`; return it in eval mode, on `x_train`'s device.

    `weight_decay` is an L2 penalty on the weights (not the biases): with D ~ N the linear probe can separate the
    train set, and without it the weights grow until the test accuracy depends on how many steps were run.
    `balanced` weights each class's loss by N / (classes present * class count), for skewed label sets judged by UA.
    The global RNG is left as it was; the same seed gives the same probe.
    """
    _check_xy(x_train, y_train, num_classes, "train")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    x = x_train.float()
    y = y_train.to(x.device)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > _MIN_STD, std, torch.ones_like(std))

    class_weight = None
    if balanced:
        counts = torch.bincount(y, minlength=num_classes).float()
        present = counts > 0
        class_weight = torch.zeros(num_classes, device=x.device)
        class_weight[present] = y.numel() / (int(present.sum()) * counts[present])

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        probe = StandardizedProbe(build_probe(kind, x.shape[1], num_classes), mean, std).to(x.device)
        decay = [p for n, p in probe.named_parameters() if n.endswith("weight")]
        rest = [p for n, p in probe.named_parameters() if not n.endswith("weight")]
        optimizer = torch.optim.Adam(
            [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
        )
        # Standardised once, not in every step's forward: it would double the linear probe's time.
        x = (x - mean) / std
        probe.train()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(probe.net(x), y, weight=class_weight)
            loss.backward()
            optimizer.step()
    return probe.eval()


def _scores(predicted: Tensor, y: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and UA (unweighted average recall: the mean per-class recall, over classes present in `y`)."""
    correct = (predicted == y).float()
    hits = torch.bincount(y, weights=correct, minlength=num_classes)
    counts = torch.bincount(y, minlength=num_classes)
    present = counts > 0
    return {
        "accuracy": float(correct.mean()),
        "UA": float((hits[present] / counts[present]).mean()),
    }


@torch.no_grad()
def evaluate_probe(probe: nn.Module, x_test: Tensor, y_test: Tensor, num_classes: int) -> dict[str, float]:
    """-> {"accuracy", "UA"} of `probe` on `x_test [N, D]`, `y_test [N]`."""
    _check_xy(x_test, y_test, num_classes, "test")
    probe.eval()
    device = next(probe.parameters()).device
    predicted = probe(x_test.to(device)).argmax(dim=1).cpu()
    return _scores(predicted, y_test.cpu(), num_classes)


def chance_level(y_train: Tensor, y_test: Tensor, num_classes: int) -> dict[str, float]:
    """-> {"accuracy", "UA"} of always predicting the train set's majority class: the floor a layer must beat.

    Its UA is 1 / (classes present in `y_test`) (when the majority class is among them), the same for every
    constant guess, which is why UA is the metric to read on skewed label sets.
    """
    if y_train.numel() == 0 or y_test.numel() == 0:
        raise ValueError("chance_level needs non-empty train and test labels")
    majority = int(torch.bincount(y_train.cpu(), minlength=num_classes).argmax())
    y = y_test.cpu()
    return {
        "accuracy": float((y == majority).float().mean()),
        "UA": 1.0 / int(torch.unique(y).numel()),
    }


def probe_layers(
    train: dict[int, Tensor],
    y_train: Tensor,
    test: dict[int, Tensor],
    y_test: Tensor,
    num_classes: int,
    kind: str = "linear",
    seed: int = 0,
    **opts,
) -> list[dict]:
    """Train and score one probe per layer: `train[l] [N, D]`, `test[l] [M, D]` -> rows `{"layer", "accuracy",
    "UA"}` sorted by layer. `opts` (steps, lr, weight_decay, balanced) go to `train_probe`; every layer gets the
    same seed, so layers differ only in their features."""
    PROBES[kind]  # an unknown name is an error before any training
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise ValueError(
            f"train and test must hold the same layers; only in train: {only_train}, only in test: {only_test}"
        )
    rows = []
    for layer in sorted(train):
        probe = train_probe(kind, train[layer], y_train, num_classes, seed=seed, **opts)
        rows.append({"layer": layer, **evaluate_probe(probe, test[layer], y_test, num_classes)})
    return rows


def encode(labels_train: Sequence[str], labels_test: Sequence[str]) -> tuple[Tensor, Tensor, list[str]]:
    """-> (y_train [N], y_test [M], classes): classes are the sorted train labels, indices into them.

    A test label the train set lacks is an error: a probe cannot predict a class it never saw, and dropping those
    samples silently would overstate the accuracy.
    """
    classes = sorted(set(labels_train))
    if not classes:
        raise ValueError("no train labels to probe")
    index = {label: i for i, label in enumerate(classes)}
    unseen = sorted({label for label in labels_test if label not in index})
    if unseen:
        first = next(i for i, label in enumerate(labels_test) if label not in index)
        shown = ", ".join(repr(label) for label in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise ValueError(
            f"test label(s) {shown} (first at test item {first}) never occur in train, whose labels are "
            f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}; drop those items or move some to train"
        )
    y_train = torch.tensor([index[label] for label in labels_train], dtype=torch.long)
    y_test = torch.tensor([index[label] for label in labels_test], dtype=torch.long)
    return y_train, y_test, classes


def frame_labels(segments: Sequence[Sequence], num_frames: int, frame_rate: float) -> list[str | None]:
    """Label of each of `num_frames` frames from an alignment of `[start_s, end_s, label]` segments.

    Frame t belongs to the segment holding its centre (t + 0.5) / frame_rate, with segments half-open
    [start, end) so a centre on a boundary goes to the later segment; frames in no segment (gaps, past the end)
    get None. The centre ignores the CNN's receptive-field offset (wav2vec2/HuBERT: 2.5 ms at 50 Hz), far below a
    phone's length. Overlapping segments are an error: two labels for one instant mean a broken alignment.
    """
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be positive; got {frame_rate}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0; got {num_frames}")
    parsed = []
    for i, segment in enumerate(segments):
        if len(segment) != 3:
            raise ValueError(f"alignment segment {i} is {segment!r}; expected [start, end, label]")
        start, end, label = float(segment[0]), float(segment[1]), segment[2]
        if not (0 <= start <= end):
            raise ValueError(f"alignment segment {i} {list(segment)!r} needs 0 <= start <= end (seconds)")
        parsed.append((start, end, label, i))
    parsed.sort(key=lambda s: (s[0], s[1]))
    for (_, prev_end, _, i), (start, _, _, j) in zip(parsed, parsed[1:], strict=False):
        if start < prev_end - _OVERLAP_TOLERANCE_S:
            raise ValueError(f"alignment segments {i} and {j} overlap ({prev_end} > {start} s)")

    centres = (np.arange(num_frames) + 0.5) / frame_rate
    labels: list[str | None] = [None] * num_frames
    for start, end, label, _ in parsed:
        first, stop = np.searchsorted(centres, [start, end], side="left")
        labels[first:stop] = [label] * (stop - first)
    return labels
