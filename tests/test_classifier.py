"""The utterance classifier (emotion, speaker id): projection, mask-aware pooling and MLP give per-utterance logits
that padding cannot move."""

import pytest
import torch
from torch import nn

from downstream.classifier import UtteranceClassifier
from downstream.pooling import POOLINGS, MeanStdPooling


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_logits_have_one_row_per_utterance_and_one_column_per_class(pooling):
    head = UtteranceClassifier(12, 4, projection_size=8, pooling=pooling, hidden_sizes=[16])
    assert head(torch.randn(3, 9, 12), torch.tensor([9, 5, 1])).shape == (3, 4)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_padding_does_not_change_logits_in_eval_mode(pooling):
    torch.manual_seed(0)
    head = UtteranceClassifier(6, 3, projection_size=5, pooling=pooling, hidden_sizes=[7, 7], dropout=0.5).eval()
    long, short = torch.randn(8, 6), torch.randn(3, 6)
    batch = torch.stack([long, torch.cat([short, 1e6 * torch.randn(5, 6)])])
    logits = head(batch, torch.tensor([8, 3]))
    assert torch.allclose(logits[0], head(long[None], torch.tensor([8]))[0], atol=1e-5)
    assert torch.allclose(logits[1], head(short[None], torch.tensor([3]))[0], atol=1e-5)


def test_projection_size_zero_pools_the_input_features_directly():
    head = UtteranceClassifier(6, 3, projection_size=0, pooling="mean_std")
    assert isinstance(head.projection, nn.Identity)
    assert isinstance(head.pooling, MeanStdPooling) and head.pooling.input_size == 6
    assert head.classifier[-1].in_features == 12
    assert head(torch.randn(2, 4, 6), torch.tensor([4, 2])).shape == (2, 3)


def test_hidden_sizes_build_linear_relu_dropout_blocks_before_the_output_layer():
    head = UtteranceClassifier(6, 3, projection_size=5, hidden_sizes=(7, 4), dropout=0.25)
    kinds = [type(m) for m in head.classifier]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head.classifier if isinstance(m, nn.Linear)] == [
        (5, 7),
        (7, 4),
        (4, 3),
    ]
    assert head.classifier[2].p == 0.25


def test_an_unknown_pooling_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown pooling 'median'.*mean_std"):
        UtteranceClassifier(6, 3, pooling="median")


def test_the_head_fits_a_small_separable_problem():
    # Three classes whose frames are drawn around different centres; utterances of 2-9 frames, padding garbage.
    generator = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(3, 8, generator=generator)
    targets = torch.arange(30) % 3
    lengths = torch.randint(2, 10, (30,), generator=generator)
    features = 1e3 * torch.randn(30, 9, 8, generator=generator)
    for i, (label, length) in enumerate(zip(targets, lengths, strict=True)):
        features[i, :length] = centres[label] + torch.randn(int(length), 8, generator=generator)
    torch.manual_seed(0)
    head = UtteranceClassifier(8, 3, projection_size=16, pooling="attentive_stats", hidden_sizes=[16])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features, lengths), targets).backward()
        optimizer.step()
    with torch.no_grad():
        assert torch.equal(head(features, lengths).argmax(1), targets)


def test_embed_is_the_pooled_vector_the_classifier_reads():
    head = UtteranceClassifier(6, 3, projection_size=5, pooling="mean_std").eval()
    features, lengths = torch.randn(2, 9, 6), torch.tensor([9, 4])
    embedding = head.embed(features, lengths)
    assert embedding.shape == (2, 10)
    torch.testing.assert_close(head.classifier(embedding), head(features, lengths))
