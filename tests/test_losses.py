"""Speaker losses: the additive angular margin follows ArcFace's formula, with its fallback past theta + m = pi."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from downstream.losses import LOSSES, AAMSoftmaxLoss, CosineClassifier, SoftmaxLoss, aam_logits, build_loss

# Sample 2's target angle acos(-0.99) = 3.0 rad; with m = 0.2 it passes pi, so the fallback applies there.
COSINES = torch.tensor([[0.5, 0.2, -0.1], [0.3, 0.9, 0.0], [-0.99, 0.1, 0.4]], dtype=torch.float64)
TARGETS = torch.tensor([0, 1, 0])


def test_aam_logits_match_arcface_by_hand_including_the_fallback_past_pi():
    margin, scale = 0.2, 10.0
    expected = (scale * COSINES).tolist()
    expected[0][0] = scale * math.cos(math.acos(0.5) + margin)
    expected[1][1] = scale * math.cos(math.acos(0.9) + margin)
    assert math.acos(-0.99) + margin > math.pi
    expected[2][0] = scale * (-0.99 - margin * math.sin(margin))
    logits = aam_logits(COSINES, TARGETS, margin, scale)
    for row, want in zip(logits.tolist(), expected, strict=True):
        assert row == pytest.approx(want, abs=1e-9)


def test_soft_targets_put_the_margin_on_every_weighted_column_and_mix_the_cross_entropy():
    margin, scale = 0.2, 10.0
    soft = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    logits = aam_logits(COSINES, soft, margin, scale)
    assert torch.allclose(logits[[0, 2]], aam_logits(COSINES, TARGETS, margin, scale)[[0, 2]], atol=1e-12)
    assert logits[1, 0].item() == pytest.approx(scale * 0.3)  # no weight, no margin
    assert logits[1, 1].item() == pytest.approx(scale * math.cos(math.acos(0.9) + margin))
    assert logits[1, 2].item() == pytest.approx(scale * math.cos(math.acos(0.0) + margin))
    loss = AAMSoftmaxLoss(margin, scale)(COSINES, soft)
    expected = -(soft * logits.log_softmax(dim=1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    with pytest.raises(ValueError, match=r"targets \[B\] or \[B, C\]"):
        aam_logits(COSINES, soft[:, :2], margin, scale)


def test_aam_fallback_keeps_the_target_logit_decreasing_in_the_angle():
    angles = torch.linspace(0.0, math.pi, 200, dtype=torch.float64)
    cosines = torch.stack([torch.cos(angles), torch.zeros_like(angles)], dim=1)
    target_logits = aam_logits(cosines, torch.zeros(200, dtype=torch.long), margin=0.5, scale=1.0)[:, 0]
    assert (target_logits.diff() < 0).all()


def test_aam_with_zero_margin_is_the_scaled_cosine():
    assert torch.allclose(aam_logits(COSINES, TARGETS, margin=0.0, scale=30.0), 30.0 * COSINES, atol=1e-9)


def test_aam_loss_is_the_cross_entropy_of_the_aam_logits():
    loss = AAMSoftmaxLoss(margin=0.3, scale=16.0)(COSINES, TARGETS)
    logits = aam_logits(COSINES, TARGETS, 0.3, 16.0)
    log_softmax = logits.log_softmax(dim=1)
    expected = -sum(log_softmax[i, int(t)] for i, t in enumerate(TARGETS)) / len(TARGETS)
    assert loss.item() == pytest.approx(float(expected), abs=1e-9)


def test_aam_loss_is_larger_than_the_scaled_cosine_softmax():
    generator = torch.Generator().manual_seed(0)
    cosines = torch.rand(16, 5, generator=generator) * 2 - 1
    targets = torch.randint(0, 5, (16,), generator=generator)
    plain = F.cross_entropy(30.0 * cosines, targets)
    assert AAMSoftmaxLoss(margin=0.2, scale=30.0)(cosines, targets) > plain + 0.1


def test_aam_gradients_are_finite_at_cosine_one_and_minus_one():
    cosines = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, 1.0]], requires_grad=True)
    AAMSoftmaxLoss()(cosines, torch.tensor([0, 0, 0])).backward()
    assert torch.isfinite(cosines.grad).all()
    assert cosines.grad.abs().sum() > 0


def test_aam_loss_rejects_a_negative_margin_or_scale():
    with pytest.raises(ValueError, match="margin"):
        AAMSoftmaxLoss(margin=-0.1)
    with pytest.raises(ValueError, match="scale"):
        AAMSoftmaxLoss(scale=0.0)


def test_cosine_classifier_gives_cosines_independent_of_the_embedding_norm():
    classifier = CosineClassifier(4, 3)
    embeddings = torch.randn(5, 4)
    cosines = classifier(embeddings)
    expected = F.cosine_similarity(embeddings[:, None, :], classifier.weight[None, :, :], dim=-1)
    assert cosines.shape == (5, 3)
    assert torch.allclose(cosines, expected, atol=1e-6)
    assert torch.allclose(classifier(7.0 * embeddings), cosines, atol=1e-6)


def test_softmax_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (math.e + 1))) / 2
    assert SoftmaxLoss()(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_build_loss_gives_a_classifier_and_criterion_that_fit_together(name):
    classifier, criterion = build_loss(name, embedding_size=8, num_classes=6)
    outputs = classifier(torch.randn(4, 8))
    assert outputs.shape == (4, 6)
    loss = criterion(outputs, torch.tensor([0, 5, 2, 3]))
    assert loss.shape == () and torch.isfinite(loss)


def test_build_loss_aam_passes_margin_and_scale_and_uses_cosines():
    classifier, criterion = build_loss("aam", 8, 6, margin=0.35, scale=20.0)
    assert isinstance(classifier, CosineClassifier) and isinstance(criterion, AAMSoftmaxLoss)
    assert (criterion.margin, criterion.scale) == (0.35, 20.0)
    classifier, _ = build_loss("softmax", 8, 6)
    assert isinstance(classifier, nn.Linear)


def test_build_loss_rejects_an_unknown_name_listing_the_choices():
    with pytest.raises(ValueError, match=r"unknown loss 'arcface'.*\['aam', 'softmax'\]"):
        build_loss("arcface", 8, 6)


def test_build_loss_rejects_an_option_the_loss_does_not_take():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['margin'\] for loss 'softmax'"):
        build_loss("softmax", 8, 6, margin=0.2)
    with pytest.raises(ValueError, match=r"\['margin', 'scale'\]"):
        build_loss("aam", 8, 6, marign=0.2)
