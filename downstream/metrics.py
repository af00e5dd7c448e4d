"""Evaluation metrics: plain tensors or lists in, Python floats out (no Lightning, no state).

Classification: `confusion_matrix`, `weighted_accuracy` (WA), `unweighted_accuracy` (UA), `accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Labels = torch.Tensor | Sequence[int]


def as_labels(values: Labels, what: str) -> torch.Tensor:
    """A 1-D long tensor of class indices; floats are refused rather than truncated."""
    tensor = torch.as_tensor(values).cpu()
    # An empty list becomes a float tensor; it has no labels to truncate.
    if tensor.numel() and (tensor.is_floating_point() or tensor.is_complex()):
        raise ValueError(f"{what} must be integer class indices; got dtype {tensor.dtype} (take argmax of logits)")
    if tensor.dim() != 1:
        raise ValueError(f"{what} must be one label per utterance, shape [N]; got {tuple(tensor.shape)}")
    return tensor.long()


def paired_labels(predictions: Labels, targets: Labels) -> tuple[torch.Tensor, torch.Tensor]:
    predictions, targets = as_labels(predictions, "predictions"), as_labels(targets, "targets")
    if predictions.numel() != targets.numel():
        raise ValueError(f"{predictions.numel()} predictions for {targets.numel()} targets")
    return predictions, targets


def confusion_matrix(predictions: Labels, targets: Labels, num_classes: int) -> torch.Tensor:
    """`[C, C]` long counts: row = reference class, column = predicted class."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive; got {num_classes}")
    predictions, targets = paired_labels(predictions, targets)
    for name, labels in (("prediction", predictions), ("target", targets)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise ValueError(f"{name} label(s) {sorted(set(bad.tolist()))} are outside [0, {num_classes})")
    counts = torch.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def check_confusion(confusion: torch.Tensor) -> torch.Tensor:
    confusion = torch.as_tensor(confusion).cpu()
    if confusion.dim() != 2 or confusion.size(0) != confusion.size(1):
        raise ValueError(f"a confusion matrix is square [C, C]; got shape {tuple(confusion.shape)}")
    if int(confusion.sum()) == 0:
        raise ValueError("the confusion matrix is empty (no utterances were scored)")
    return confusion.double()


def weighted_accuracy(confusion: torch.Tensor) -> float:
    """WA: overall accuracy, correct / total, so frequent classes weigh more."""
    confusion = check_confusion(confusion)
    return float(confusion.trace() / confusion.sum())


def unweighted_accuracy(confusion: torch.Tensor) -> float:
    """UA: the mean per-class recall, every class weighing the same whatever its size.

    The emotion-recognition convention (and sklearn's `balanced_accuracy_score`): the mean runs over the classes
    that occur in the references (rows with support > 0); a class only ever predicted adds no recall term.
    """
    confusion = check_confusion(confusion)
    support = confusion.sum(1)
    present = support > 0
    return float((confusion.diagonal()[present] / support[present]).mean())


def accuracy(predictions: Labels, targets: Labels) -> float:
    """The fraction of predictions equal to their target."""
    predictions, targets = paired_labels(predictions, targets)
    if targets.numel() == 0:
        raise ValueError("accuracy of no utterances is undefined")
    return float((predictions == targets).double().mean())
