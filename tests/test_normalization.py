import torch

from downstream.normalization import FeatureNorm


def padded(utterances: list[torch.Tensor], fill: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([u.size(0) for u in utterances])
    batch = torch.full((len(utterances), int(lengths.max()), utterances[0].size(1)), fill)
    for i, u in enumerate(utterances):
        batch[i, : u.size(0)] = u
    return batch, lengths


def test_running_statistics_equal_those_of_every_valid_frame_seen():
    generator = torch.Generator().manual_seed(0)
    utterances = [torch.randn(n, 3, generator=generator) * 4 + 10 for n in [5, 9, 2, 7, 11]]
    norm = FeatureNorm(3).train()
    norm(*padded(utterances[:2]))
    norm(*padded(utterances[2:]))  # padding filled with 1e6 must not count
    frames = torch.cat(utterances).double()
    assert torch.allclose(norm.mean, frames.mean(0))
    assert torch.allclose(norm.var, frames.var(0, unbiased=False))


def test_eval_uses_the_fixed_statistics_and_keeps_padding_zero():
    utterances = [torch.arange(12.0).view(4, 3), torch.ones(2, 3)]
    norm = FeatureNorm(3).train()
    norm(*padded(utterances))
    norm.eval()
    before = norm.mean.clone()
    batch, lengths = padded([utterances[0] + 100, utterances[1]])
    out = norm(batch, lengths)
    assert torch.equal(norm.mean, before)
    expected = (utterances[1] - norm.mean.float()) / (norm.var.float() + 1e-5).sqrt()
    assert torch.allclose(out[1, :2], expected, atol=1e-5)
    assert out[1, 2:].abs().sum() == 0


def test_training_output_has_zero_mean_unit_variance_on_a_single_batch():
    utterances = [torch.randn(6, 4) * 3 - 7, torch.randn(3, 4) * 3 - 7]
    out = FeatureNorm(4).train()(*padded(utterances))
    frames = torch.cat([out[0, :6], out[1, :3]])
    assert torch.allclose(frames.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(frames.std(0, unbiased=False), torch.ones(4), atol=1e-3)


def test_before_any_statistics_features_pass_through():
    x = torch.randn(2, 5, 3)
    assert torch.equal(FeatureNorm(3).eval()(x, torch.tensor([5, 5])), x)
