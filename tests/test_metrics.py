"""Metrics against hand-computed values: UA weighs classes equally, WA weighs utterances equally; EER and minDCF
of verification scores, with the crossing interpolated and tied scores kept together; WER and CER pooled over the
corpus; AUC, McClish-standardised pAUC and the DCASE 2023 Task 2 scores."""

import jiwer
import numpy as np
import pytest
import torch

from downstream.metrics import (
    accuracy,
    cer,
    character_errors,
    confusion_matrix,
    dcase_scores,
    eer,
    harmonic_mean,
    min_dcf,
    operating_points,
    partial_auc,
    roc_auc,
    unweighted_accuracy,
    weighted_accuracy,
    wer,
    word_errors,
)

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


# Verification: 4 targets and 4 non-targets, one of each on the wrong side of the other class.
#   sorted scores  0.1 N  0.2 N  0.3 T  0.4 N  0.6 T  0.7 N  0.8 T  0.9 T
#   accept >= t     0.1   0.2   0.3   0.4   0.6   0.7   0.8   0.9   reject all
#   p_miss          0     0     0     1/4   1/4   1/2   1/2   3/4   1
#   p_fa            1     3/4   1/2   1/2   1/4   1/4   0     0     0
# EER: the curves meet at t = 0.6, both 1/4, with no interpolation.
# Normalised DCF = p_miss + (1 - p) / p * p_fa: at p = 0.05, 19 x p_fa: 19, 14.25, 9.5, 9.75, 5, 5.25, 0.5, 0.75, 1
# -> 0.5 at t = 0.8; at p = 0.01 (99 x p_fa) the same point wins, 0.5 at 0.8; at p = 0.5 (p_miss + p_fa:
# 1, .75, .5, .75, .5, .75, .5, .75, 1) the first of three 0.5s, t = 0.3.
TARGET_SCORES = [0.3, 0.6, 0.8, 0.9]
NONTARGET_SCORES = [0.1, 0.2, 0.4, 0.7]
SCORES = TARGET_SCORES + NONTARGET_SCORES
TRIAL_LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


def test_operating_points_of_the_hand_worked_trials():
    thresholds, p_miss, p_fa = operating_points(SCORES, TRIAL_LABELS)
    assert thresholds[:-1].tolist() == sorted(SCORES)
    assert thresholds[-1] > 0.9 and thresholds[-1] == pytest.approx(0.9)  # just above the top score
    assert p_miss.tolist() == [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1]
    assert p_fa.tolist() == [1, 0.75, 0.5, 0.5, 0.25, 0.25, 0, 0, 0]


def test_eer_and_min_dcf_of_the_hand_worked_trials():
    assert eer(SCORES, TRIAL_LABELS) == (0.25, 0.6)
    assert min_dcf(SCORES, TRIAL_LABELS, p_target=0.05) == (0.5, 0.8)
    assert min_dcf(SCORES, TRIAL_LABELS, p_target=0.01) == (0.5, 0.8)
    assert min_dcf(SCORES, TRIAL_LABELS, p_target=0.5) == (0.5, 0.3)
    # c_miss 10 at p 0.05: (0.5 p_miss + 0.95 p_fa) / 0.5 = p_miss + 1.9 p_fa, lowest at t = 0.8 again (0.5).
    assert min_dcf(SCORES, TRIAL_LABELS, c_miss=10.0) == (pytest.approx(0.5), 0.8)


def test_eer_between_operating_points_is_interpolated_with_its_threshold():
    # Non-target 0.4 moved up to 0.6, tied with a target: p_miss/p_fa are 1/4 / 1/2 at t = 0.6 and 1/2 / 1/4 at
    # t = 0.7; the curves cross halfway, EER 3/8 at t = 0.65.
    rate, threshold = eer([0.3, 0.6, 0.8, 0.9, 0.1, 0.2, 0.6, 0.7], TRIAL_LABELS)
    assert rate == pytest.approx(0.375)
    assert threshold == pytest.approx(0.65)


def test_tied_scores_move_together():
    # A target and a non-target at one score: accept both (p_fa 1) or reject both (p_miss 1), never one of them.
    assert eer([0.5, 0.5], [1, 0])[0] == 0.5
    assert eer([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == (pytest.approx(0.25), pytest.approx(0.7))


def test_perfect_separation_costs_nothing():
    scores, labels = [2.0, 3.0, 2.5, -1.0, 0.0, 1.9], [1, 1, 1, 0, 0, 0]
    assert eer(scores, labels) == (0.0, 2.0)
    for p_target in (0.05, 0.01):
        assert min_dcf(scores, labels, p_target=p_target) == (0.0, 2.0)


@pytest.mark.parametrize(
    ("scores", "labels"),
    [([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0]), ([1.0, 2.0, 3.0, 3.0, 2.0, 1.0], [1, 1, 1, 0, 0, 0])],
)
def test_fully_overlapped_scores_are_chance(scores, labels):
    assert eer(scores, labels)[0] == pytest.approx(0.5)
    # Identical distributions: p_miss = 1 - p_fa, so no threshold beats rejecting everything (cost 1.0).
    for p_target in (0.05, 0.01, 0.5):
        assert min_dcf(scores, labels, p_target=p_target)[0] == pytest.approx(1.0)


def test_order_of_trials_and_input_type_do_not_matter():
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 2, size=200)
    scores = generator.normal(size=200) + labels  # targets one standard deviation higher
    expected_eer, expected_dcf = eer(scores, labels), min_dcf(scores, labels)
    assert 0.2 < expected_eer[0] < 0.4
    order = generator.permutation(200)
    assert eer(scores[order], labels[order]) == expected_eer
    assert min_dcf(scores[order], labels[order]) == expected_dcf
    assert eer(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)) == pytest.approx(expected_eer, abs=1e-6)
    assert eer(scores.tolist(), labels.tolist()) == expected_eer
    assert all(type(v) is float for v in (*expected_eer, *expected_dcf))


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "no non-target trials among 2"),
        ([0.1, 0.2], [0, 0], "no target trials among 2"),
        ([0.1, float("nan"), 0.3], [1, 0, 1], r"1 of 3 scores are not finite \(first: trial 1, nan\)"),
        ([0.1, 0.2], [1, 2], r"labels must be 1 \(target\) or 0 \(non-target\); got \[2.0\]"),
        ([0.1, 0.2, 0.3], [1, 0], "3 scores for 2 labels"),
        ([[0.1, 0.2]], [[1, 0]], r"scores must be one value per trial, shape \[N\]; got \(1, 2\)"),
        ([], [], "no target trials among 0"),
    ],
)
def test_bad_trials_are_errors(scores, labels, message):
    for metric in (eer, min_dcf):
        with pytest.raises(ValueError, match=message):
            metric(scores, labels)


@pytest.mark.parametrize(("kwargs", "message"), [({"p_target": 0.0}, "p_target"), ({"c_fa": -1.0}, "positive")])
def test_bad_costs_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        min_dcf(SCORES, TRIAL_LABELS, **kwargs)


def test_word_errors_of_a_hand_aligned_pair():
    # the cat sat on the mat  /  cat sit on the mat now: "the" deleted, sat -> sit, "now" inserted; the four hits
    # cat, on, the, mat are the longest common subsequence, so no other alignment costs 3.
    counts = word_errors(["the cat sat on the mat"], ["cat sit on the mat now"])
    assert counts == {"substitutions": 1, "deletions": 1, "insertions": 1, "hits": 4, "reference_words": 6}
    assert wer(["the cat sat on the mat"], ["cat sit on the mat now"]) == 0.5


def test_wer_is_unique_where_the_alignment_is_not():
    # "sit on mat here" can be one substitution, one deletion and one insertion or three substitutions: 3 / 6 both.
    counts = word_errors(["the cat sat on the mat"], ["the cat sit on mat here"])
    assert counts["substitutions"] + counts["deletions"] + counts["insertions"] == 3
    assert counts["reference_words"] == 6
    assert wer(["the cat sat on the mat"], ["the cat sit on mat here"]) == 0.5


def test_character_errors_of_a_hand_aligned_pair():
    # "a cat" / "a bat!": c -> b and "!" inserted; the space is a character, the outer whitespace is not.
    counts = character_errors([" a cat"], ["a bat! "])
    assert counts == {"substitutions": 1, "deletions": 0, "insertions": 1, "hits": 4, "reference_characters": 5}
    assert cer([" a cat"], ["a bat! "]) == pytest.approx(2 / 5)


def test_error_rates_are_pooled_over_the_corpus_not_averaged_per_utterance():
    references, hypotheses = ["a b c d", "e"], ["a b c d", "x"]
    assert wer(references, hypotheses) == pytest.approx(1 / 5)  # a mean of per-utterance rates would give 0.5
    assert cer(references, hypotheses) == pytest.approx(1 / 8)


def test_error_rates_equal_jiwer_and_their_counts():
    references = ["the quick brown fox", "jumps over", "the lazy dog today"]
    hypotheses = ["the quack brown fox fox", "", "lazy dogs today"]
    words, characters = word_errors(references, hypotheses), character_errors(references, hypotheses)
    assert words["deletions"] >= 2  # the empty hypothesis deletes both of its reference words
    for counts, total, rate, reference in (
        (words, "reference_words", wer, jiwer.wer),
        (characters, "reference_characters", cer, jiwer.cer),
    ):
        errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
        assert rate(references, hypotheses) == pytest.approx(errors / counts[total])
        assert rate(references, hypotheses) == reference(references, hypotheses)
        assert type(rate(references, hypotheses)) is float
    assert words["reference_words"] == 10
    assert characters["reference_characters"] == sum(len(text) for text in references)


def test_an_empty_hypothesis_is_all_deletions():
    assert word_errors(["a b c"], [""]) == {
        "substitutions": 0,
        "deletions": 3,
        "insertions": 0,
        "hits": 0,
        "reference_words": 3,
    }
    assert wer(["a b c"], [""]) == 1.0
    assert cer(["ab"], [" "]) == 1.0


@pytest.mark.parametrize(
    ("references", "hypotheses", "error", "message"),
    [
        ([], [], ValueError, r"no utterances is undefined \(empty reference list\)"),
        (["a", "", "b", "  "], ["a", "x", "b", "y"], ValueError, r"reference\(s\) at index \[1, 3\] are empty"),
        (["a b"], ["a", "b"], ValueError, "2 hypotheses for 1 references"),
        ("a b", "a b", TypeError, "references must be a list of transcripts"),
        (["a b"], [None], TypeError, "hypothesis at index 0 is a NoneType, not a string"),
    ],
)
def test_bad_transcripts_are_errors(references, hypotheses, error, message):
    for metric in (wer, cer, word_errors, character_errors):
        with pytest.raises(error, match=message):
            metric(references, hypotheses)


def test_auc_is_one_for_perfect_and_zero_for_reversed_scores():
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc(torch.tensor([1.0, 2.0, 3.0, 4.0]), [1, 1, 0, 0]) == 0.0
    assert partial_auc([1, 2, 3, 4], [0, 0, 1, 1]) == pytest.approx(1.0)
    # Reversed: the area up to FPR 0.1 is 0, standardised 0.5 (1 + (0 - 0.005) / (0.1 - 0.005)) = 9/19, not 0.
    assert partial_auc([1, 2, 3, 4], [1, 1, 0, 0]) == pytest.approx(9 / 19)


def test_auc_counts_a_tie_as_half():
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert partial_auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)  # the chance diagonal
    # Anomalies 0.5, 0.9, 0.7, 0.3 against normals 0.5, 0.2, 0.1, 0.5, 0.6, 0.8: pairs won 2 + 2 * 1/2 (ties with
    # 0.5), 6, 5 and 2 = 16 of 24.
    scores = [0.5, 0.5, 0.2, 0.9, 0.7, 0.1, 0.5, 0.3, 0.6, 0.8]
    labels = [1, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    assert roc_auc(scores, labels) == pytest.approx(2 / 3)


# sklearn 1.9.1's roc_auc_score(labels, scores) and roc_auc_score(labels, scores, max_fpr=0.1) for these inputs
# (sklearn is not a dependency; the numbers were taken once and hard-coded).
SKLEARN_CASES = [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75, 0.7368421052631579),
    (
        [0.5, 0.5, 0.2, 0.9, 0.7, 0.1, 0.5, 0.3, 0.6, 0.8],
        [1, 0, 0, 1, 1, 0, 0, 1, 0, 0],
        0.6666666666666667,
        0.6052631578947368,
    ),
    (
        [3, 1, 2, 2, 5, 4, 0, 2, 1, 3, 4, 6],
        [0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1],
        0.8571428571428572,
        0.7210526315789474,
    ),
]


@pytest.mark.parametrize(("scores", "labels", "auc", "pauc"), SKLEARN_CASES)
def test_auc_and_pauc_match_sklearn(scores, labels, auc, pauc):
    assert roc_auc(scores, labels) == pytest.approx(auc, abs=1e-12)
    assert partial_auc(scores, labels, max_fpr=0.1) == pytest.approx(pauc, abs=1e-12)


def test_pauc_interpolates_the_roc_curve_at_max_fpr():
    # ROC (fpr, tpr): (0, 0) -> (0, 1/2) at 0.8 -> (1/2, 1/2) at 0.4 -> (1/2, 1) at 0.35 -> (1, 1); the area up
    # to FPR 0.1 is 0.1 * 1/2, standardised 0.5 (1 + (0.05 - 0.005) / 0.095) = 14/19. max_fpr 1 gives the plain AUC.
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert partial_auc(scores, labels) == pytest.approx(14 / 19)
    assert partial_auc(scores, labels, max_fpr=1.0) == pytest.approx(roc_auc(scores, labels))
    # Up to FPR 0.75: 1/2 * 1/2 + 1/4 * 1 = 1/2 (sklearn: 0.7333...).
    min_area, max_area = 0.75**2 / 2, 0.75
    assert partial_auc(scores, labels, 0.75) == pytest.approx(0.5 * (1 + (1 / 2 - min_area) / (max_area - min_area)))
    with pytest.raises(ValueError, match=r"max_fpr must be in \(0, 1\]"):
        partial_auc(scores, labels, max_fpr=0.0)


def test_auc_names_anomalies_and_normals_in_its_errors():
    with pytest.raises(ValueError, match="no anomaly trials among 2: AUC need both kinds"):
        roc_auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"labels must be 1 \(anomaly\) or 0 \(normal\)"):
        roc_auc([0.1, 0.2], [0, 2])


def test_harmonic_mean_is_dominated_by_the_smallest_value():
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert harmonic_mean(torch.tensor([0.25, 0.25, 1.0])) == pytest.approx(3 / 9)
    assert harmonic_mean([0.0, 1.0]) == 0.0  # scipy.stats.hmean's limit
    with pytest.raises(ValueError, match="finite values >= 0"):
        harmonic_mean([0.5, -0.1])
    with pytest.raises(ValueError, match="no values"):
        harmonic_mean([])


# One section by hand: source normals 0.1, 0.2, 0.3; target normals 0.5, 0.6; anomalies 0.4 (source), 0.7 (target).
FAN = {
    "scores": [0.1, 0.2, 0.3, 0.5, 0.6, 0.4, 0.7],
    "labels": [0, 0, 0, 0, 0, 1, 1],
    "domains": ["source", "source", "source", "target", "target", "source", "target"],
}
# AUC(source): 0.1-0.3 against both anomalies = 1. AUC(target): 0.5, 0.6 against 0.4 and 0.7 = 2/4 (against the
# target anomaly alone it would be 1). pAUC: 0.7 alone leads, tpr 1/2 up to FPR 0.2 -> 14/19 as above.
FAN_VALUES = {"AUC_source": 1.0, "AUC_target": 0.5, "pAUC": 14 / 19}


def test_dcase_scores_of_one_section_by_hand():
    results = dcase_scores(**FAN, machines=["fan"] * 7)
    assert results == pytest.approx(
        {f"{key}/fan": value for key, value in FAN_VALUES.items()} | {"official_score": 3 / (1 + 2 + 19 / 14)}
    )


def test_dcase_scores_average_sections_and_machines_harmonically():
    perfect = {"scores": [0.1, 0.2, 0.9], "labels": [0, 0, 1], "domains": ["source", "target", "target"]}
    results = dcase_scores(
        scores=FAN["scores"] + perfect["scores"] * 2,
        labels=FAN["labels"] + perfect["labels"] * 2,
        domains=FAN["domains"] + perfect["domains"] * 2,
        machines=["valve"] * 10 + ["fan"] * 3,
        sections=["01"] * 7 + ["00"] * 3 + [0] * 3,
    )
    assert results["AUC_target/valve/01"] == pytest.approx(0.5)
    assert results["AUC_target/valve/00"] == pytest.approx(1.0)
    assert results["AUC_source/valve"] == pytest.approx(1.0)
    assert results["AUC_target/valve"] == pytest.approx(2 / 3)  # hmean(1, 1/2)
    assert results["pAUC/valve"] == pytest.approx(28 / 33)  # hmean(1, 14/19)
    assert results["pAUC/fan/0"] == results["pAUC/fan"] == pytest.approx(1.0)
    # The nine per-section values: seven 1s (fan 0, valve 00, valve 01's AUC(source)), 1/2 and 14/19.
    assert results["official_score"] == pytest.approx(9 / (7 + 2 + 19 / 14))
    assert len(results) == 3 * 3 + 3 * 2 + 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": [0] * 7}, "machine 'fan' has no anomalous clips"),
        ({"domains": ["source"] * 7}, "machine 'fan' has no target-domain normal clips"),
        ({"domains": ["source"] * 6 + ["eval"]}, r"domains must be 'source' or 'target'; got \['eval'\]"),
        ({"labels": [0, 1]}, "2 labels for 7 scores"),
    ],
)
def test_dcase_scores_refuse_sections_missing_a_kind_of_clip(change, message):
    with pytest.raises(ValueError, match=message):
        dcase_scores(**(FAN | change), machines=["fan"] * 7)
