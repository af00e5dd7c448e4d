"""Evaluation metrics: plain tensors or lists in, Python floats out (no Lightning, no state).

Classification: `confusion_matrix`, `weighted_accuracy` (WA), `unweighted_accuracy` (UA), `accuracy`.
Detection (speaker verification): `eer` and `min_dcf` from trial scores and 1/0 target labels, both built on
`operating_points`, the miss and false-alarm rates at every distinct threshold.
Transcription (ASR): `word_errors` / `character_errors` (substitutions, deletions, insertions, hits and the
reference length) and `wer` / `cer`, pooled over the corpus by jiwer. Text is compared as given: the caller
normalises references and hypotheses the same way (case, punctuation) before scoring.
Anomalous sound detection (DCASE 2023 Task 2, as its official evaluator computes them): `roc_auc` (the
Mann-Whitney statistic), `partial_auc` (McClish-standardised, as sklearn's `roc_auc_score(..., max_fpr=0.1)`),
`harmonic_mean` and `dcase_scores`, the per-machine AUC(source), AUC(target), pAUC and the official score.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np
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


Scores = torch.Tensor | np.ndarray | Sequence[float]


def as_trial_values(values: Scores, what: str) -> np.ndarray:
    """A 1-D float64 array of one value per trial, from a tensor, an array or a list."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one value per trial, shape [N]; got {array.shape}")
    return array


def detection_trials(
    scores: Scores,
    labels: Scores,
    *,
    positive: str = "target",
    negative: str = "non-target",
    metric: str = "EER and DCF",
) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores `[N]` and a boolean positive mask `[N]`, checked: finite scores, 0/1 labels, both classes.

    `positive` / `negative` name what labels 1 and 0 mean, and `metric` what is being computed, for the messages.
    """
    scores, labels = as_trial_values(scores, "scores"), as_trial_values(labels, "labels")
    if scores.size != labels.size:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(
            f"{bad.size} of {scores.size} scores are not finite (first: trial {bad[0]}, {scores[bad[0]]}); "
            "check the scoring for a division by zero (e.g. an all-zero embedding in a cosine score)"
        )
    odd = labels[(labels != 0) & (labels != 1)]
    if odd.size:
        raise ValueError(f"labels must be 1 ({positive}) or 0 ({negative}); got {sorted(set(odd.tolist()))[:5]}")
    target = labels == 1
    if not target.any() or target.all():
        missing = positive if not target.any() else negative
        raise ValueError(f"no {missing} trials among {labels.size}: {metric} need both kinds")
    return scores, target


def operating_points(scores: Scores, labels: Scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(thresholds, p_miss, p_fa)` of the decision "target if score >= threshold", ascending thresholds.

    One point per distinct score (tied scores move together: a threshold cannot split them), the first one
    accepting every trial (p_miss 0, p_fa 1), plus a last point just above the highest score that rejects every
    trial (p_miss 1, p_fa 0). p_miss(t) = targets with score < t / targets, p_fa(t) = non-targets with
    score >= t / non-targets; both are monotonic in t, so the curves cross once.
    """
    scores, target = detection_trials(scores, labels)
    target_scores, nontarget_scores = np.sort(scores[target]), np.sort(scores[~target])
    thresholds = np.append(np.unique(scores), np.nextafter(scores.max(), np.inf))
    p_miss = np.searchsorted(target_scores, thresholds, side="left") / target_scores.size
    p_fa = 1.0 - np.searchsorted(nontarget_scores, thresholds, side="left") / nontarget_scores.size
    return thresholds, p_miss, p_fa


def eer(scores: Scores, labels: Scores) -> tuple[float, float]:
    """Equal error rate and its threshold; labels 1 = target, 0 = non-target, a higher score is more target-like.

    Where the miss and false-alarm curves cross between two neighbouring operating points, both rates and the
    threshold are interpolated linearly between them (the usual reading of a DET curve's diagonal in the NIST
    and speaker-verification literature), so the EER need not be an error rate any threshold achieves: a target
    and a non-target tied at one score give 0.5, not 0 or 1. Perfect separation gives 0.0 (at the lowest target
    score); identical target and non-target score distributions give 0.5.
    """
    thresholds, p_miss, p_fa = operating_points(scores, labels)
    gap = p_fa - p_miss  # strictly decreasing, from +1 (accept all) to -1 (reject all)
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        return float(p_miss[i]), float(thresholds[i])
    weight = gap[i - 1] / (gap[i - 1] - gap[i])
    rate = p_miss[i - 1] + weight * (p_miss[i] - p_miss[i - 1])
    threshold = thresholds[i - 1] + weight * (thresholds[i] - thresholds[i - 1])
    return float(rate), float(threshold)


def min_dcf(
    scores: Scores, labels: Scores, p_target: float = 0.05, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Minimum normalised detection cost and its threshold (NIST SRE / VoxSRC: p_target 0.05 or 0.01).

    DCF(t) = c_miss p_miss(t) p_target + c_fa p_fa(t) (1 - p_target), minimised over every operating point,
    accept-all and reject-all included, and divided by min(c_miss p_target, c_fa (1 - p_target)), the cost of
    the better trivial system, so 1.0 means the scores are no better than always deciding the same way. Of
    equal minima the lowest threshold is returned; reject-all's threshold is just above the highest score.
    """
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be strictly between 0 and 1, got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    thresholds, p_miss, p_fa = operating_points(scores, labels)
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    best = int(np.argmin(cost))
    return float(cost[best] / min(c_miss * p_target, c_fa * (1 - p_target))), float(thresholds[best])


def transcripts(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    """Checked lists of paired transcripts: as many hypotheses as references, and no reference without text.

    An empty reference has no words to divide its errors by (jiwer would silently count its hypothesis as
    insertions); utterances with an empty transcript are dropped before scoring. An empty hypothesis is fine: every
    reference word is then a deletion.
    """
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(texts, str):
            raise TypeError(f"{name} must be a list of transcripts, one per utterance; got a single string")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("an error rate of no utterances is undefined (empty reference list)")
    for name, texts in (("reference", references), ("hypothesis", hypotheses)):
        odd = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if odd:
            raise TypeError(f"{name} at index {odd[0]} is a {type(texts[odd[0]]).__name__}, not a string")
    empty = [i for i, text in enumerate(references) if not text.strip()]
    if empty:
        raise ValueError(
            f"reference(s) at index {empty[:10]} are empty; drop utterances with an empty transcript before scoring"
        )
    return references, hypotheses


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, int]:
    """Word-level edit counts summed over the corpus: `substitutions`, `deletions`, `insertions`, `hits` and
    `reference_words` (= S + D + H). Words are split on whitespace. Where several minimal alignments exist
    ("sat on the mat" vs "sit on mat here"), jiwer's Levenshtein picks one, so only S + D + I is unique."""
    result = jiwer.process_words(*transcripts(references, hypotheses))
    counts = {key: int(getattr(result, key)) for key in ("substitutions", "deletions", "insertions", "hits")}
    counts["reference_words"] = counts["substitutions"] + counts["deletions"] + counts["hits"]
    return counts


def character_errors(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, int]:
    """Character-level edit counts as `word_errors`, with `reference_characters` (= S + D + H). Leading and trailing
    whitespace is stripped; a space between words counts as a character (jiwer's CER convention)."""
    result = jiwer.process_characters(*transcripts(references, hypotheses))
    counts = {key: int(getattr(result, key)) for key in ("substitutions", "deletions", "insertions", "hits")}
    counts["reference_characters"] = counts["substitutions"] + counts["deletions"] + counts["hits"]
    return counts


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate, (S + D + I) / reference words, pooled over the corpus (not a mean of per-utterance rates,
    which would weigh a one-word utterance like a long one). It exceeds 1 when insertions pile up."""
    return float(jiwer.wer(*transcripts(references, hypotheses)))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate, (S + D + I) / reference characters, pooled over the corpus like `wer`."""
    return float(jiwer.cer(*transcripts(references, hypotheses)))


def anomaly_trials(scores: Scores, labels: Scores, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked float64 scores `[N]` and a boolean anomaly mask `[N]`; labels 1 = anomaly, 0 = normal."""
    return detection_trials(scores, labels, positive="anomaly", negative="normal", metric=metric)


def roc_auc(scores: Scores, labels: Scores) -> float:
    """Area under the ROC curve; labels 1 = anomaly (positive), 0 = normal, a higher score is more anomalous.

    The Mann-Whitney statistic: the fraction of (anomaly, normal) pairs in which the anomaly scores higher, a tie
    counting 1/2, which is exactly the trapezoidal area under the ROC curve (sklearn's `roc_auc_score`).
    Perfect separation gives 1.0, reversed scores 0.0, constant scores 0.5.
    """
    scores, anomaly = anomaly_trials(scores, labels, "AUC")
    normal = np.sort(scores[~anomaly])
    positives = scores[anomaly]
    below = np.searchsorted(normal, positives, side="left")
    tied = np.searchsorted(normal, positives, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (positives.size * normal.size))


def roc_curve(scores: Scores, labels: Scores) -> tuple[np.ndarray, np.ndarray]:
    """`(fpr, tpr)` of "anomaly if score >= t" at every distinct score, descending t, starting at (0, 0).

    Tied scores move together, so a tie between an anomaly and a normal clip is a diagonal step.
    """
    scores, anomaly = anomaly_trials(scores, labels, "the ROC curve")
    order = np.argsort(-scores, kind="stable")
    scores, anomaly = scores[order], anomaly[order]
    # The last index of each run of equal scores: the point where every clip scoring >= that value is accepted.
    ends = np.append(np.flatnonzero(np.diff(scores)), scores.size - 1)
    true_positives = np.cumsum(anomaly)[ends]
    false_positives = (ends + 1) - true_positives
    tpr = np.concatenate([[0.0], true_positives / anomaly.sum()])
    fpr = np.concatenate([[0.0], false_positives / (~anomaly).sum()])
    return fpr, tpr


def trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def partial_auc(scores: Scores, labels: Scores, max_fpr: float = 0.1) -> float:
    """McClish-standardised partial AUC over false-positive rates [0, max_fpr], as DCASE reports pAUC.

    Computed as sklearn's `roc_auc_score(labels, scores, max_fpr=max_fpr)` (which the DCASE evaluator calls): the
    ROC curve is cut at max_fpr, its TPR interpolated linearly there, the trapezoidal area A up to max_fpr
    standardised as 0.5 (1 + (A - min_area) / (max_area - min_area)) with min_area = max_fpr^2 / 2 (the chance
    diagonal) and max_area = max_fpr (a perfect detector). So a perfect detector gives 1.0, a chance one 0.5, and
    a fully reversed one a little under 0.5 (0.5 (1 - max_fpr / (2 - max_fpr)), 0.4737 at max_fpr 0.1), never 0.
    max_fpr = 1 gives the plain AUC.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1]; got {max_fpr}")
    fpr, tpr = roc_curve(scores, labels)
    if max_fpr == 1:
        return trapezoid_area(fpr, tpr)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[stop - 1] <= max_fpr < fpr[stop]
    cut_tpr = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    area = trapezoid_area(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], cut_tpr))
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return float(0.5 * (1 + (area - min_area) / (max_area - min_area)))


def harmonic_mean(values: Scores) -> float:
    """n / sum(1 / v), as `scipy.stats.hmean`: DCASE averages AUCs this way so one weak machine drags the score down.

    A zero gives 0.0 (the limit; an AUC of 0 is a legitimate, if reversed, result); a negative or non-finite value,
    or no values at all, is an error.
    """
    values = as_trial_values(values, "values")
    if values.size == 0:
        raise ValueError("the harmonic mean of no values is undefined")
    if not np.isfinite(values).all() or (values < 0).any():
        bad = values[~np.isfinite(values) | (values < 0)]
        raise ValueError(f"the harmonic mean needs finite values >= 0; got {bad[:5].tolist()}")
    if (values == 0).any():
        return 0.0
    return float(values.size / np.sum(1.0 / values))


def dcase_scores(
    scores: Scores,
    labels: Scores,
    domains: Sequence[str],
    machines: Sequence[str],
    sections: Sequence[str | int] | None = None,
    max_fpr: float = 0.1,
) -> dict[str, float]:
    """DCASE 2023 Task 2 evaluation of anomaly scores, one clip each; labels 1 = anomaly, 0 = normal.

    Per machine type and section (one section per machine when `sections` is None), as the official evaluator:
    AUC(source) ranks the section's source-domain normal clips against all of its anomalous clips (both domains),
    AUC(target) the target-domain normal clips against all anomalies, and pAUC (max_fpr 0.1) all of its clips.
    Returned keys: `AUC_source/<machine>`, `AUC_target/<machine>`, `pAUC/<machine>`, each the harmonic mean over
    the machine's sections; with `sections`, also `AUC_source/<machine>/<section>` etc. per section; and
    `official_score`, the harmonic mean of every per-section AUC(source), AUC(target) and pAUC over all machines
    and sections (the challenge's ranking score).
    """
    scores, labels = as_trial_values(scores, "scores"), as_trial_values(labels, "labels")
    domains, machines = np.asarray(list(domains), dtype=object), np.asarray(list(machines), dtype=object)
    per_section = sections is not None
    sections = np.asarray([str(s) for s in sections], dtype=object) if per_section else np.full(scores.size, "")
    for name, values in (("labels", labels), ("domains", domains), ("machines", machines), ("sections", sections)):
        if values.size != scores.size:
            raise ValueError(f"{values.size} {name} for {scores.size} scores")
    if scores.size == 0:
        raise ValueError("no clips to evaluate")
    odd = sorted(set(domains.tolist()) - {"source", "target"})
    if odd:
        raise ValueError(f"domains must be 'source' or 'target'; got {odd[:5]}")
    results: dict[str, float] = {}
    every: list[float] = []
    for machine in sorted(set(machines.tolist())):
        in_machine = machines == machine
        columns: dict[str, list[float]] = {"AUC_source": [], "AUC_target": [], "pAUC": []}
        for section in sorted(set(sections[in_machine].tolist())):
            clips = in_machine & (sections == section)
            where = f"machine {machine!r}" + (f" section {section!r}" if per_section else "")
            anomaly = clips & (labels == 1)
            if not anomaly.any():
                raise ValueError(f"{where} has no anomalous clips (label 1): its AUC and pAUC are undefined")
            values = {}
            for domain in ("source", "target"):
                normal = clips & (labels == 0) & (domains == domain)
                if not normal.any():
                    raise ValueError(
                        f"{where} has no {domain}-domain normal clips (label 0): AUC({domain}) is undefined"
                    )
                chosen = normal | anomaly
                values[f"AUC_{domain}"] = roc_auc(scores[chosen], labels[chosen])
            values["pAUC"] = partial_auc(scores[clips], labels[clips], max_fpr)
            for key, value in values.items():
                columns[key].append(value)
                every.append(value)
                if per_section:
                    results[f"{key}/{machine}/{section}"] = value
        for key, column in columns.items():
            results[f"{key}/{machine}"] = harmonic_mean(column)
    results["official_score"] = harmonic_mean(every)
    return results
