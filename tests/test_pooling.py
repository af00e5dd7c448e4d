"""Poolings compute their statistics over valid frames only, so padding never changes an utterance's vector."""

import math

import pytest
import torch

from downstream.pooling import POOLINGS, AttentiveStatsPooling, EcapaPooling, build_pooling
from downstream.speaker import EcapaConfig

# One utterance of three 2-d frames; per dimension the values are [1, 3, 5] and [2, 4, 9].
FRAMES = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]])
THREE = torch.tensor([3])


def test_mean_pooling_is_the_mean_of_the_frames():
    assert build_pooling("mean", 2)(FRAMES, THREE)[0].tolist() == pytest.approx([3.0, 5.0])


def test_mean_std_pooling_appends_the_population_standard_deviation():
    out = build_pooling("mean_std", 2)(FRAMES, THREE)
    # [1, 3, 5]: squared deviations 4 + 0 + 4 = 8; [2, 4, 9]: 9 + 1 + 16 = 26; divided by N = 3, not N - 1.
    assert out.shape == (1, 4)
    assert out[0].tolist() == pytest.approx([3.0, 5.0, math.sqrt(8 / 3), math.sqrt(26 / 3)], abs=1e-5)


def test_a_one_frame_utterance_has_std_sqrt_eps_and_finite_gradients():
    frames = torch.randn(1, 1, 3, requires_grad=True)
    out = build_pooling("mean_std", 3, eps=1e-4)(frames, torch.tensor([1]))
    assert torch.allclose(out[0, 3:], torch.full((3,), 1e-2))
    out.sum().backward()
    assert torch.isfinite(frames.grad).all()


def test_attentive_stats_pooling_matches_okabe_equations_by_hand():
    pooling = AttentiveStatsPooling(2, attention_size=1)
    with torch.no_grad():  # score e_t = 2 * tanh(x_t0 - 3) + 0.5: frames score 2 tanh(-2) + .5, .5, 2 tanh(2) + .5
        pooling.attention[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        pooling.attention[0].bias.fill_(-3.0)
        pooling.attention[2].weight.fill_(2.0)
        pooling.attention[2].bias.fill_(0.5)
    scores = [2 * math.tanh(x - 3) + 0.5 for x in (1.0, 3.0, 5.0)]
    alpha = [math.exp(s) / sum(math.exp(v) for v in scores) for s in scores]
    expected = []
    for d in range(2):
        xs = FRAMES[0, :, d].tolist()
        mu = sum(a * x for a, x in zip(alpha, xs, strict=True))
        expected.append((mu, math.sqrt(sum(a * x * x for a, x in zip(alpha, xs, strict=True)) - mu * mu)))
    out = pooling(FRAMES, THREE)
    assert out[0].tolist() == pytest.approx([expected[0][0], expected[1][0], expected[0][1], expected[1][1]], abs=1e-5)
    assert pooling.attention_weights(FRAMES, THREE)[0].tolist() == pytest.approx(alpha, abs=1e-6)


def test_attentive_stats_with_constant_scores_equals_mean_std():
    pooling = build_pooling("attentive_stats", 2, attention_size=4)
    with torch.no_grad():
        pooling.attention[2].weight.zero_()
    assert torch.allclose(pooling(FRAMES, THREE), build_pooling("mean_std", 2)(FRAMES, THREE), atol=1e-6)


def two_utterances(garbage: float | None):
    """Utterances of 6 and 3 frames, batched to [2, 6, 4] with the 3 padded frames set to `garbage`."""
    generator = torch.Generator().manual_seed(0)
    long, short = torch.randn(6, 4, generator=generator), torch.randn(3, 4, generator=generator) + 2.0
    pad = 1e6 * torch.randn(3, 4, generator=generator) if garbage is None else torch.full((3, 4), garbage)
    batch = torch.stack([long, torch.cat([short, pad])])
    return batch, torch.tensor([6, 3]), long, short


@pytest.mark.parametrize("name", sorted(POOLINGS))
@pytest.mark.parametrize("garbage", [None, float("nan"), float("inf")], ids=["large", "nan", "inf"])
def test_padding_with_garbage_does_not_change_the_pooled_vector(name, garbage):
    torch.manual_seed(0)
    pooling = build_pooling(name, 4).eval()  # ECAPA's BatchNorms take batch statistics in train mode
    batch, lengths, long, short = two_utterances(garbage)
    out = pooling(batch, lengths)
    assert out.shape == (2, pooling.output_size)
    assert torch.allclose(out[0], pooling(long[None], torch.tensor([6]))[0], atol=1e-5)
    assert torch.allclose(out[1], pooling(short[None], torch.tensor([3]))[0], atol=1e-5)


def test_attention_weights_sum_to_one_over_valid_frames_and_ignore_padding():
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(4, attention_size=8)
    batch, lengths, _, short = two_utterances(None)
    weights = pooling.attention_weights(batch, lengths)
    assert weights.sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert torch.all(weights[1, 3:] == 0)
    assert torch.all(weights[1, :3] > 0)
    assert torch.allclose(weights[1, :3], pooling.attention_weights(short[None], torch.tensor([3]))[0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_gradients_reach_every_parameter_and_no_padded_frame(name):
    torch.manual_seed(0)
    # Eval mode: ECAPA's embedding BatchNorm over a batch of two maps every utterance to about +-1 in train mode,
    # which leaves the layers below it almost no gradient.
    pooling = build_pooling(name, 4).eval()
    batch, lengths, _, _ = two_utterances(None)
    batch.requires_grad_(True)
    (pooling(batch, lengths) ** 2).sum().backward()
    assert torch.all(batch.grad[1, 3:] == 0)
    assert batch.grad[:, :3].abs().sum() > 0
    for parameter in pooling.parameters():
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def test_an_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown pooling 'max'.*'attentive_stats', 'ecapa', 'mean', 'mean_std'"):
        build_pooling("max", 4)


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_an_utterance_without_frames_is_an_error_not_nan(name):
    with pytest.raises(ValueError, match=r"batch index \[1\] have no frames"):
        build_pooling(name, 2)(torch.randn(2, 3, 2), torch.tensor([3, 0]))


def test_lengths_longer_than_the_padded_frames_are_an_error():
    with pytest.raises(ValueError, match="exceeds the padded number of frames 3"):
        build_pooling("mean", 2)(torch.randn(2, 3, 2), torch.tensor([4, 2]))


SMALL_ECAPA = EcapaConfig(channels=16, embedding_size=12, res2net_scale=4, se_channels=8, attention_channels=8)


def test_ecapa_pooling_is_registered_and_outputs_its_embedding_size():
    pooling = build_pooling("ecapa", 10, config=SMALL_ECAPA)
    assert isinstance(pooling, EcapaPooling) and pooling.output_size == 12
    assert pooling(torch.randn(3, 20, 10), torch.tensor([20, 11, 4])).shape == (3, 12)
    # Sizes may come as a plain mapping (a checkpoint's config); its defaults are the paper's 192-d embedding.
    assert build_pooling("ecapa", 10, config={"channels": 16, "res2net_scale": 4}).output_size == 192


def test_ecapa_pooling_of_a_padded_batch_equals_each_utterance_alone_in_eval_mode():
    torch.manual_seed(0)
    pooling = build_pooling("ecapa", 10, config=SMALL_ECAPA)
    pooling(torch.randn(4, 30, 10), torch.tensor([30, 25, 20, 15]))  # one training step moves the running stats
    pooling.eval()
    long, short = torch.randn(30, 10), torch.randn(9, 10)
    batch = torch.stack([long, torch.cat([short, 1e3 * torch.randn(21, 10)])])
    out = pooling(batch, torch.tensor([30, 9]))
    assert (out[0] - pooling(long[None], torch.tensor([30]))[0]).abs().max() < 1e-5
    assert (out[1] - pooling(short[None], torch.tensor([9]))[0]).abs().max() < 1e-5


def test_ecapa_pooling_trains_on_one_utterance_with_the_utterance_norms_running_statistics():
    pooling = build_pooling("ecapa", 10, config=SMALL_ECAPA).train()
    norms = [pooling.extractor.pooling_norm, pooling.extractor.embedding_norm]
    before = [norm.running_mean.clone() for norm in norms]
    out = pooling(torch.randn(1, 20, 10), torch.tensor([20]))
    out.sum().backward()
    assert out.shape == (1, pooling.output_size) and torch.isfinite(out).all()
    assert all(torch.equal(norm.running_mean, mean) for norm, mean in zip(norms, before, strict=True))
    assert all(norm.training for norm in norms)  # back in train mode for the next batch
    pooling(torch.randn(2, 20, 10), torch.tensor([20, 15]))
    assert not torch.equal(norms[1].running_mean, before[1])  # a batch of two updates them
