"""Speaker extractors: right shapes, padding never changes an embedding in eval mode, and cosine scoring."""

import math

import pytest
import torch
from torch import nn

from downstream.embedding import EmbeddingHead
from downstream.losses import build_loss
from downstream.speaker import (
    EXTRACTORS,
    EcapaConfig,
    EcapaTdnn,
    XVector,
    XVectorConfig,
    build_extractor,
    cosine_scores,
    length_normalize,
)

SMALL = {
    "xvector": {"channels": (32, 32, 32, 32), "stats_channels": 48, "embedding_size": 16},
    "ecapa": {"channels": 32, "embedding_size": 16, "res2net_scale": 4, "se_channels": 8, "attention_channels": 8},
}


def small_extractor(name: str, input_size: int = 20) -> nn.Module:
    """A small extractor in eval mode, with random BatchNorm statistics so that every layer shifts its padding."""
    torch.manual_seed(0)
    extractor = build_extractor(name, input_size, **SMALL[name])
    for module in extractor.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.bias)
    return extractor.eval()


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_extractors_map_features_to_one_embedding_per_utterance(name):
    extractor = small_extractor(name)
    embeddings = extractor(torch.randn(3, 37, 20), torch.tensor([37, 20, 9]))
    assert extractor.embedding_size == 16
    assert embeddings.shape == (3, 16)
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_padding_does_not_change_an_embedding_in_eval_mode(name):
    extractor = small_extractor(name)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([50, 31, 7])
    # Padding holds noise, not zeros: the extractor must ignore whatever is there.
    features = torch.randn(3, 50, 20, generator=generator) * 3
    with torch.no_grad():
        batched = extractor(features, lengths)
        alone = torch.cat([extractor(features[i : i + 1, :n], lengths[i : i + 1]) for i, n in enumerate(lengths)])
        unmasked = extractor(features, torch.full((3,), 50))
    assert (batched - alone).abs().max() < 1e-4
    # The check has teeth: reading the noise as frames does change the short utterances' embeddings.
    assert (unmasked[1:] - alone[1:]).abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_utterances_of_one_to_a_few_frames_give_finite_padding_independent_embeddings(name):
    extractor = small_extractor(name)
    features = torch.randn(4, 4, 20)
    lengths = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        batched = extractor(features, lengths)
        alone = torch.cat([extractor(features[i : i + 1, :n], lengths[i : i + 1]) for i, n in enumerate(lengths)])
    assert torch.isfinite(batched).all()
    assert (batched - alone).abs().max() < 1e-4


def test_extractors_reject_features_of_the_wrong_width():
    with pytest.raises(ValueError, match="20-d features, got 21"):
        small_extractor("ecapa")(torch.randn(2, 5, 21), torch.tensor([5, 5]))


def test_default_ecapa_has_the_papers_parameter_counts():
    # Desplanques et al. 2020: 6.2M parameters for C = 512 and 14.7M for C = 1024 (aggregation kept at 1536).
    count = sum(p.numel() for p in EcapaTdnn(80).parameters())
    assert 6.1e6 < count < 6.3e6
    large = EcapaTdnn(80, EcapaConfig(channels=1024, aggregation_channels=1536))
    assert 14.5e6 < sum(p.numel() for p in large.parameters()) < 14.9e6


def test_default_configs_follow_the_papers():
    xvector = XVector(30)
    assert [layer.conv.dilation[0] for layer in xvector.frames] == [1, 2, 3, 1, 1]
    assert [layer.conv.out_channels for layer in xvector.frames] == [512, 512, 512, 512, 1500]
    assert xvector.segment6.in_features == 3000 and xvector.embedding_size == 512
    ecapa = EcapaTdnn(80)
    assert ecapa.embedding_size == 192 and len(ecapa.blocks) == 3
    assert ecapa.aggregation.conv.out_channels == 1536


def test_build_extractor_rejects_an_unknown_option_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['chanels'\].*'ecapa'.*'channels'"):
        build_extractor("ecapa", 20, chanels=32)
    with pytest.raises(ValueError, match=r"choose from \['ecapa', 'xvector'\]"):
        build_extractor("resnet", 20)


def test_configs_reject_inconsistent_sizes():
    with pytest.raises(ValueError, match="divide channels"):
        EcapaConfig(channels=30, res2net_scale=8)
    with pytest.raises(ValueError, match="odd"):
        XVectorConfig(kernel_sizes=(4, 3, 3, 1, 1))
    with pytest.raises(ValueError, match="but the last"):
        XVectorConfig(channels=(512, 512))


def test_speaker_embedding_head_returns_embeddings_and_logits():
    extractor = small_extractor("ecapa")
    classifier, criterion = build_loss("aam", extractor.embedding_size, num_classes=7)
    head = EmbeddingHead(extractor, classifier, criterion).eval()
    features, lengths = torch.randn(3, 25, 20), torch.tensor([25, 12, 3])
    out = head(features, lengths)
    assert out.embeddings.shape == (3, 16) and out.logits.shape == (3, 7)
    assert torch.allclose(head.embed(features, lengths), out.embeddings)
    assert torch.allclose(out.embeddings, extractor(features, lengths))  # the head adds nothing to the embedding
    assert torch.allclose(out.logits, classifier(out.embeddings))  # logits are the classifier's cosines of it
    assert (out.logits.abs() <= 1 + 1e-6).all()
    assert torch.isfinite(criterion(out.logits, torch.tensor([0, 3, 6])))
    assert head.loss(out, torch.tensor([0, 3, 6])) == criterion(out.logits, torch.tensor([0, 3, 6]))


def test_cosine_scores_by_hand():
    enroll = torch.tensor([[3.0, 4.0], [1.0, 0.0], [2.0, 2.0]])
    test = torch.tensor([[6.0, 8.0], [0.0, 5.0], [-1.0, -1.0]])
    assert cosine_scores(enroll, test).tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)


def test_cosine_scores_subtract_the_mean_before_normalising():
    enroll = torch.tensor([[2.0, 1.0]])
    test = torch.tensor([[1.0, 2.0]])
    mean = torch.tensor([1.0, 1.0])
    # Centred: [1, 0] and [0, 1] are orthogonal, although the raw vectors have cosine 4 / 5.
    assert cosine_scores(enroll, test).item() == pytest.approx(0.8, abs=1e-6)
    assert cosine_scores(enroll, test, mean=mean).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_scores(torch.tensor([[4.0, 2.0]]), torch.tensor([[2.0, 3.0]]), mean).item() == pytest.approx(
        (3 * 1 + 1 * 2) / (math.sqrt(10) * math.sqrt(5)), abs=1e-6
    )


def test_length_normalize_gives_unit_rows():
    assert length_normalize(torch.tensor([[3.0, 4.0], [0.0, -2.0]])).flatten().tolist() == pytest.approx(
        [0.6, 0.8, 0.0, -1.0]
    )


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_training_step_gives_finite_gradients_with_padded_batches(name):
    extractor = small_extractor(name).train()
    classifier, criterion = build_loss("aam", 16, num_classes=4)
    features = torch.randn(4, 30, 20, requires_grad=True)
    head = EmbeddingHead(extractor, classifier, criterion)
    criterion(head(features, torch.tensor([30, 17, 5, 1])).logits, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.isfinite(features.grad).all()
    assert features.grad[1, 17:].abs().max() == 0  # padded frames get no gradient
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
