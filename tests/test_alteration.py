"""TERA's alterations: time blocks cover about 15 % of the frames in blocks of 7 (80 % zeroed, 10 % replaced, 10 %
kept), one contiguous frequency band of at most 20 % of the bins, noise on about 15 % of the utterances, padding
never touched; the L1 loss reads the altered positions only."""

import pytest
import torch

from recipes.pretrain.alteration import (
    KEPT,
    REPLACED,
    ZEROED,
    AlterationConfig,
    alter,
    reconstruction_loss,
    time_blocks,
)


def batch(utterances: int = 8, frames: int = 1000, bins: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.linspace(frames // 2, frames, utterances).long()
    features = torch.randn(utterances, frames, bins, generator=generator) + 3.0  # no zeros of their own
    features[torch.arange(frames)[None, :] >= lengths[:, None]] = 0
    return features, lengths


def test_time_blocks_cover_about_fifteen_percent_in_blocks_of_seven_split_80_10_10():
    generator = torch.Generator().manual_seed(1)
    config = AlterationConfig()
    kinds, covered, total = [], 0, 0
    for _ in range(200):
        blocks = time_blocks(700, config, generator)
        assert all(0 <= start <= 700 - 7 for start, _ in blocks)
        assert len({start for start, _ in blocks}) == len(blocks)  # distinct starts
        frames = torch.zeros(700, dtype=torch.bool)
        for start, kind in blocks:
            frames[start : start + 7] = True
            kinds.append(kind)
        covered, total = covered + int(frames.sum()), total + 700
    assert 0.12 < covered / total <= 0.15  # overlapping blocks cover a little less than 15 %
    fractions = {kind: kinds.count(kind) / len(kinds) for kind in (ZEROED, REPLACED, KEPT)}
    assert abs(fractions[ZEROED] - 0.8) < 0.03 and abs(fractions[REPLACED] - 0.1) < 0.02
    assert abs(fractions[KEPT] - 0.1) < 0.02


def test_a_block_is_zeroed_replaced_by_frames_of_its_utterance_or_kept_and_always_in_the_loss():
    features, lengths = batch()
    result = alter(features, lengths, AlterationConfig.mockingjay(), torch.Generator().manual_seed(2))
    seen = set()
    for row, blocks in enumerate(result.blocks):
        for start, kind in blocks:
            altered, original = result.altered[row, start : start + 7], features[row, start : start + 7]
            assert result.loss_mask[row, start : start + 7].all()
            if any(other != start and abs(other - start) < 7 for other, _ in blocks):
                continue  # overlapping blocks: the later one wins where they meet
            if kind == ZEROED:
                assert (altered == 0).all()
            elif kind == KEPT:
                assert torch.equal(altered, original)
            else:  # seven consecutive frames of the same utterance's original
                windows = features[row, : lengths[row]].unfold(0, 7, 1).transpose(1, 2)
                assert any(torch.equal(altered, window) for window in windows)
            seen.add(kind)
    assert seen == {ZEROED, REPLACED, KEPT}
    # Outside the blocks nothing changes (time alteration only), and the loss reads no other frame.
    untouched = ~result.loss_mask.any(-1)
    assert torch.equal(result.altered[untouched], features[untouched])


def test_the_frequency_band_is_contiguous_at_most_a_fifth_of_the_bins_and_on_every_valid_frame():
    features, lengths = batch(utterances=200, frames=50)
    config = AlterationConfig(time_prob=0.0, noise_prob=0.0)
    result = alter(features, lengths, config, torch.Generator().manual_seed(3))
    widths = []
    for row, (first, width) in enumerate(result.bands):
        zeroed = (result.altered[row, : lengths[row]] == 0).all(0).nonzero().flatten().tolist()
        assert zeroed == list(range(first, first + width))  # one contiguous band
        assert 0 <= width <= 16 and result.loss_mask[row, : lengths[row], first : first + width].all()
        assert int(result.loss_mask[row].sum()) == width * int(lengths[row])
        widths.append(width)
    assert len(set(widths)) > 10 and abs(sum(widths) / len(widths) - 8) < 1.0  # uniform in 0..16: mean 8


def test_noise_reaches_about_fifteen_percent_of_utterances_and_adds_no_loss_positions():
    features, lengths = batch(utterances=400, frames=20, bins=10)
    config = AlterationConfig(time_prob=0.0, frequency_fraction=0.0)
    result = alter(features, lengths, config, torch.Generator().manual_seed(4))
    assert 0.11 < float(result.noisy.float().mean()) < 0.19
    assert not result.loss_mask.any()
    changed = (result.altered != features).flatten(1).any(1)
    assert torch.equal(changed, result.noisy)
    noise = (result.altered - features)[result.noisy]
    valid = noise.abs().sum(-1) > 0
    assert abs(float(noise[valid].std()) - 0.2) < 0.02


def test_padding_is_never_altered_nor_in_the_loss():
    features, lengths = batch()
    result = alter(features, lengths, AlterationConfig(noise_prob=1.0), torch.Generator().manual_seed(5))
    padding = torch.arange(features.size(1))[None, :] >= lengths[:, None]
    assert (result.altered[padding] == 0).all() and not result.loss_mask[padding].any()
    assert result.altered.data_ptr() != features.data_ptr() and features[~padding].min() > -10  # original kept


def test_the_loss_reads_only_the_altered_positions():
    features, lengths = batch(utterances=2, frames=100, bins=20)
    result = alter(features, lengths, AlterationConfig(), torch.Generator().manual_seed(6))
    prediction = torch.zeros_like(features, requires_grad=True)
    loss = reconstruction_loss(prediction, features, result.loss_mask)
    expected = features.abs()[result.loss_mask].mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert (prediction.grad[~result.loss_mask] == 0).all() and (prediction.grad[result.loss_mask] != 0).all()
    assert float(reconstruction_loss(features, features + 1, torch.zeros_like(result.loss_mask))) == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="time_prob"):
        AlterationConfig(time_prob=1.5)
    with pytest.raises(ValueError, match="zero_prob \\+ random_prob"):
        AlterationConfig(zero_prob=0.9, random_prob=0.2)
