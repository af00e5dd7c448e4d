"""FeatEx (feature exchange): soft targets over the doubled label space, the exchange itself, and the spectrum
branch, which reads each clip's valid samples only."""

import pytest
import torch
import torch.nn.functional as F

from downstream.asd import FeatExHead, PooledEmbedding, SpectrumEmbedding, featex_targets
from downstream.losses import build_loss


def test_featex_targets_keep_matching_pairs_and_split_exchanged_ones_over_the_second_half():
    targets = torch.tensor([0, 1, 2, 1])
    partners = torch.tensor([0, 2, 3, 1])  # row 0 kept; 1 carries clip 2's features; 2 clip 3's; 3 clip 1's
    expected = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],  # classes 1 and 2, exchanged
            [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],  # classes 2 and 1
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # both halves of class 1, still exchanged
        ]
    )
    assert torch.equal(featex_targets(targets, partners, 3), expected)


def make_head(probability: float, classes: int = 3) -> FeatExHead:
    classifier, criterion = build_loss("aam", 16, 2 * classes)
    return FeatExHead(PooledEmbedding(8, 8), SpectrumEmbedding(8, num_bins=64), classifier, criterion, probability)


def batch(size: int = 6):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(size, 5, 8, generator=generator)
    wavs = torch.randn(size, 4000, generator=generator)
    return features, torch.full((size,), 5), wavs, torch.full((size,), 4000)


def test_exchange_happens_only_in_training_with_the_configured_probability_and_never_with_itself():
    torch.manual_seed(0)
    inputs = batch(64)
    head = make_head(1.0).train()
    partners = head(*inputs).partners
    assert (partners != torch.arange(64)).all()
    head.exchange_probability = 0.5
    exchanged = torch.stack([(head(*inputs).partners != torch.arange(64)).float().mean() for _ in range(20)])
    assert 0.4 < exchanged.mean().item() < 0.6
    head.eval()
    output = head(*inputs)
    assert torch.equal(output.partners, torch.arange(64)) and output.logits.shape == (64, 6)
    assert torch.allclose(output.embeddings, head.embed(*inputs)) and output.embeddings.shape == (64, 16)
    halves = output.embeddings.split(8, dim=1)  # each half of unit length, so neither branch outweighs the other
    assert all(torch.allclose(half.norm(dim=1), torch.ones(64)) for half in halves)


def test_the_classifier_of_an_exchanged_row_sees_its_partners_feature_half():
    torch.manual_seed(1)
    head = make_head(1.0).train()
    head.spectrum_branch.eval()  # batch statistics would differ between the two calls
    head.feature_branch.eval()
    inputs = batch(4)
    output = head(*inputs)
    halves = F.normalize(head.feature_branch(*inputs[:2]), dim=1), F.normalize(head.spectrum_branch(*inputs[2:]), dim=1)
    pairs = torch.cat([halves[0][output.partners], halves[1]], dim=1)
    assert torch.allclose(output.logits, head.classifier(pairs))


def test_spectrum_of_a_padded_clip_equals_the_clip_alone():
    branch = SpectrumEmbedding(8, num_bins=64).eval()
    clip = torch.randn(3000, generator=torch.Generator().manual_seed(2))
    padded = torch.zeros(2, 4000)
    padded[0, :3000], padded[1] = clip, torch.randn(4000)
    alone = branch.spectra(clip[None], torch.tensor([3000]))
    together = branch.spectra(padded, torch.tensor([3000, 4000]))
    assert torch.allclose(alone[0], together[0], atol=1e-6)
    assert torch.allclose(
        branch(clip[None], torch.tensor([3000]))[0], branch(padded, torch.tensor([3000, 4000]))[0], atol=1e-5
    )


def test_spectrum_embedding_refuses_too_few_bands_and_featex_a_bad_probability():
    with pytest.raises(ValueError, match="num_bins >= 64"):
        SpectrumEmbedding(8, num_bins=16)
    with pytest.raises(ValueError, match="exchange_probability"):
        make_head(1.5)
