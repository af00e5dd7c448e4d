"""Classification metrics against hand-computed values: UA weighs classes equally, WA weighs utterances equally."""

import pytest
import torch

from downstream.metrics import accuracy, confusion_matrix, unweighted_accuracy, weighted_accuracy

# Unbalanced references: class 0 has 6 utterances (5 right), class 1 has 3 (1 right), class 2 has 1 (wrong).
TARGETS = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
PREDICTIONS = [0, 0, 0, 0, 0, 1, 1, 0, 2, 0]


def test_confusion_rows_are_references_and_columns_are_predictions():
    confusion = confusion_matrix(torch.tensor(PREDICTIONS), torch.tensor(TARGETS), 3)
    assert confusion.dtype == torch.long
    assert confusion.tolist() == [[5, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert confusion_matrix([1], [0], 2).tolist() == [[0, 1], [0, 0]]  # reference 0 predicted as 1


def test_wa_is_overall_accuracy_and_ua_is_mean_recall():
    confusion = confusion_matrix(PREDICTIONS, TARGETS, 3)
    # WA = (5 + 1 + 0) / 10 = 0.6; UA = (5/6 + 1/3 + 0/1) / 3 = 7/18 ~ 0.389: the majority class flatters WA.
    assert weighted_accuracy(confusion) == pytest.approx(0.6)
    assert unweighted_accuracy(confusion) == pytest.approx(7 / 18)
    assert accuracy(PREDICTIONS, TARGETS) == pytest.approx(0.6)
    assert all(isinstance(v, float) for v in (weighted_accuracy(confusion), unweighted_accuracy(confusion)))


def test_a_class_absent_from_the_references_is_left_out_of_ua():
    # Class 3 is only ever predicted: recalls 2/2, 1/2, 1/1 over the three present classes -> UA = 2.5 / 3, not / 4.
    confusion = confusion_matrix([0, 0, 1, 3, 2], [0, 0, 1, 1, 2], 4)
    assert unweighted_accuracy(confusion) == pytest.approx(2.5 / 3)
    assert weighted_accuracy(confusion) == pytest.approx(0.8)


def test_accuracy_accepts_lists_and_tensors():
    assert accuracy([1, 2, 3], torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("predictions", "targets", "message"),
    [
        ([0, 3], [0, 1], r"prediction label\(s\) \[3\] are outside \[0, 3\)"),
        ([0, 1], [-1, 1], r"target label\(s\) \[-1\] are outside"),
        ([0, 1, 2], [0, 1], "3 predictions for 2 targets"),
        ([0.0, 1.0], [0, 1], "must be integer class indices"),
    ],
)
def test_bad_labels_are_errors(predictions, targets, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(predictions, targets, 3)


def test_metrics_of_nothing_are_errors():
    empty = torch.zeros(3, 3, dtype=torch.long)
    for metric in (weighted_accuracy, unweighted_accuracy):
        with pytest.raises(ValueError, match="empty"):
            metric(empty)
    with pytest.raises(ValueError, match="square"):
        weighted_accuracy(torch.ones(2, 3))
    with pytest.raises(ValueError, match="undefined"):
        accuracy([], [])
    with pytest.raises(ValueError, match="1 predictions for 2 targets"):
        accuracy([0], [0, 1])
