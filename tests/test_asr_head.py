"""CTC head: shapes, padding never changes an output in eval mode, greedy and beam decoding, SpecAugment, and a tiny
problem the head learns to transcribe."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from downstream.asr import (
    BLANK_ID,
    PADDING_LOG_PROB,
    BeamSearchDecoder,
    CTCHead,
    CTCHeadConfig,
    SpecAugment,
    greedy_decode,
)

SMALL = CTCHeadConfig(projection_size=12, hidden_size=16, num_layers=2, dropout=0.1)


def small_head(vocab_size: int = 7, config: CTCHeadConfig = SMALL) -> CTCHead:
    torch.manual_seed(0)
    return CTCHead(20, vocab_size, config).eval()


def one_hot_log_probs(paths: list[list[int]], vocab_size: int) -> torch.Tensor:
    """`[B, T, V]` log-probabilities that put 0.9 on each frame's token of `paths` (equal lengths)."""
    probs = torch.full((len(paths), len(paths[0]), vocab_size), 0.1 / (vocab_size - 1))
    probs.scatter_(2, torch.tensor(paths)[..., None], 0.9)
    return probs.log()


def test_head_gives_a_log_distribution_per_frame_and_keeps_the_lengths():
    head = small_head()
    lengths = torch.tensor([31, 12, 5])
    output = head(torch.randn(3, 31, 20), lengths)
    assert output.log_probs.shape == (3, 31, 7)
    assert torch.equal(output.lengths, lengths)
    valid = torch.arange(31)[None, :] < lengths[:, None]
    sums = output.log_probs.exp().sum(-1)
    assert torch.allclose(sums[valid], torch.ones(int(lengths.sum())), atol=1e-5)
    # Padded frames say "certainly blank", finitely.
    padded = output.log_probs[~valid]
    assert torch.isfinite(padded).all()
    assert (padded[:, BLANK_ID] == 0).all() and (padded[:, 1:] == PADDING_LOG_PROB).all()


@pytest.mark.parametrize(
    "config", [SMALL, CTCHeadConfig(hidden_size=8, num_layers=1, dropout=0.0, bidirectional=False)]
)
def test_padding_does_not_change_the_output_in_eval_mode(config):
    head = small_head(config=config)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([40, 23, 6])
    features = torch.randn(3, 40, 20, generator=generator) * 3  # noise in the padding, not zeros
    with torch.no_grad():
        batched = head(features, lengths).log_probs
        for i, n in enumerate(lengths.tolist()):
            alone = head(features[i : i + 1, :n], lengths[i : i + 1]).log_probs
            assert (batched[i, :n] - alone[0]).abs().max() < 1e-5
        unmasked = head(features, torch.full((3,), 40)).log_probs
    # The check has teeth: a backward LSTM that read the padding would change every valid frame of a shorter
    # utterance; a forward-only one never looks ahead.
    change = (batched[1, :23] - unmasked[1, :23]).abs().max()
    assert change > 1e-3 if config.bidirectional else change == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"projection_size": -1}, "projection_size"),
        ({"hidden_size": 0}, "hidden_size and num_layers must be positive"),
        ({"num_layers": 0}, "hidden_size and num_layers must be positive"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_head_configs_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        CTCHeadConfig(**options)


def test_bad_inputs_to_the_head_are_errors():
    head = small_head()
    with pytest.raises(ValueError, match=r"batch index \[1\] have no frames"):
        head(torch.randn(2, 5, 20), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="built for 20-d features, got 8"):
        head(torch.randn(2, 5, 8), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="exceeds the padded number of frames 5"):
        head(torch.randn(2, 5, 20), torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="vocab_size must count the blank"):
        CTCHead(20, 1)


def test_greedy_decoding_collapses_repeats_drops_blanks_and_ignores_padding():
    # 0 is the blank. Utterance 0: "a a - a b b - - c" -> a, a, b, c (the blank keeps the second a); its padding
    # holds tokens that must not appear. Utterance 1: only blanks and one repeated token.
    paths = [[1, 1, 0, 1, 2, 2, 0, 0, 3, 3, 2, 1], [0, 3, 3, 3, 0, 0, 0, 2, 2, 1, 1, 2]]
    log_probs = one_hot_log_probs(paths, 4)
    assert greedy_decode(log_probs, torch.tensor([9, 6])) == [[1, 1, 2, 3], [3]]
    assert greedy_decode(log_probs, torch.tensor([12, 12])) == [[1, 1, 2, 3, 2, 1], [3, 2, 1, 2]]
    assert greedy_decode(one_hot_log_probs([[0, 0, 0]], 4), torch.tensor([3])) == [[]]
    # Another blank id: 3 is now the blank, 0 a token.
    assert greedy_decode(log_probs, torch.tensor([9, 6]), blank=3) == [[1, 0, 1, 2, 0], [0, 0]]


def test_spec_augment_is_the_identity_in_eval_mode():
    augment = SpecAugment(time_width=0.5, feature_width=0.5).eval()
    features = torch.randn(2, 50, 16)
    assert augment(features, torch.tensor([50, 30])) is features


def test_spec_augment_masks_only_valid_frames_and_is_reproducible():
    augment = SpecAugment(time_masks=3, time_width=0.3, feature_masks=2, feature_width=0.4).train()
    lengths = torch.tensor([60, 35, 12])
    features = torch.randn(3, 60, 16) + 5.0  # nothing is 0 before masking
    torch.manual_seed(3)
    masked = augment(features, lengths)
    torch.manual_seed(3)
    assert torch.equal(augment(features, lengths), masked)
    zeroed = masked == 0
    valid = torch.arange(60)[None, :] < lengths[:, None]
    assert not zeroed[~valid].any()
    assert torch.equal(masked[~valid], features[~valid])
    assert torch.equal(masked[~zeroed], features[~zeroed])
    assert zeroed.any()
    # A masked frame is zero across all of D, a masked band across every valid frame.
    time_masked = zeroed.all(-1)
    band_masked = (zeroed | ~valid[..., None]).all(1)
    assert torch.equal(zeroed, (time_masked[..., None] | band_masked[:, None, :]) & valid[..., None])


def test_spec_augment_masks_about_the_configured_amount():
    # Widths are uniform in {0..W}: each time mask covers time_width / 2 of an utterance on average, each band
    # feature_width / 2 of D (here W = 10 of 100); two masks each, less their overlaps.
    torch.manual_seed(0)
    augment = SpecAugment(time_masks=2, time_width=0.05, feature_masks=2, feature_width=0.1)
    lengths = torch.randint(400, 1001, (300,))
    time, bands = augment.masks(lengths, 1000, 100)
    valid = torch.arange(1000)[None, :] < lengths[:, None]
    assert not time[~valid].any()
    time_fraction = (time.sum(1) / lengths).mean()
    assert 0.04 < time_fraction < 0.055
    assert 0.085 < bands.float().mean() < 0.11
    # No single span is wider than its bound: at most 2 * floor(0.05 * length) masked frames per utterance.
    assert (time.sum(1) <= 2 * (0.05 * lengths).floor()).all()
    assert (bands.sum(1) <= 20).all()


def test_bad_spec_augment_settings_are_errors():
    with pytest.raises(ValueError, match="time_width is a fraction"):
        SpecAugment(time_width=2.0)
    with pytest.raises(ValueError, match="feature_width is a fraction of the feature width D"):
        SpecAugment(feature_width=27)
    with pytest.raises(ValueError, match="time_masks and feature_masks must be >= 0"):
        SpecAugment(time_masks=-1)


def test_head_learns_to_transcribe_a_tiny_problem():
    torch.manual_seed(0)
    labels = [[1, 2, 3], [4, 4, 1], [2, 5], [3, 1, 5, 2]]
    lengths = torch.tensor([24, 20, 16, 28])
    features = torch.randn(4, 28, 10)
    head = CTCHead(10, 6, CTCHeadConfig(hidden_size=32, num_layers=1, dropout=0.0))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    targets = torch.tensor([token for label in labels for token in label])
    target_lengths = torch.tensor([len(label) for label in labels])
    for _ in range(120):
        output = head(features, lengths)
        loss = F.ctc_loss(output.log_probs.transpose(0, 1), targets, output.lengths, target_lengths, blank=BLANK_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    head.eval()
    with torch.no_grad():
        output = head(features, lengths)
    assert greedy_decode(output.log_probs, output.lengths) == labels


def flashlight_available() -> bool:
    try:
        importlib.import_module("flashlight.lib.text.decoder")
    except ImportError:
        return False
    return True


def test_beam_search_decodes_a_hand_made_matrix_or_says_what_to_install():
    tokens = ["<blank>", "▁", "a", "b"]
    # "▁ a a - a ▁ b b -" with padding. The boundaries the decoder adds at both ends are not returned; the "▁" on
    # the first frame merges with the leading one, so it goes too (greedy keeps it; sentencepiece decodes the same).
    paths = [[1, 2, 2, 0, 2, 1, 3, 3, 0, 2, 2], [0, 3, 0, 3, 3, 1, 2, 0, 0, 0, 0]]
    log_probs = one_hot_log_probs(paths, 4)
    lengths = torch.tensor([9, 7])
    if not flashlight_available():
        with pytest.raises(ImportError, match="pip install flashlight-text.*greedy_decode works without it"):
            BeamSearchDecoder(tokens)
        return
    decoder = BeamSearchDecoder(tokens, beam_size=10)
    assert decoder.decode(log_probs, lengths) == [[2, 2, 1, 3], [3, 3, 1, 2]]
    assert decoder.decode(log_probs, lengths)[1] == greedy_decode(log_probs, lengths)[1]
    without_boundary = BeamSearchDecoder(tokens, beam_size=10, sil_token=None)
    assert without_boundary.decode(log_probs, lengths) == greedy_decode(log_probs, lengths)


@pytest.mark.parametrize(
    ("tokens", "options", "message"),
    [
        (["a", "<blank>", "▁"], {}, r"tokens\[0\] must be the blank token '<blank>'"),
        (["<blank>", "▁", "a", "a"], {}, r"token\(s\) \['a'\] appear more than once"),
        (["<blank>", "a"], {}, "sil_token '▁' is not in the vocabulary"),
        (["<blank>", "▁"], {"beam_size": 0}, "beam_size must be positive"),
    ],
)
def test_bad_beam_search_settings_are_errors_with_or_without_flashlight(tokens, options, message):
    with pytest.raises(ValueError, match=message):
        BeamSearchDecoder(tokens, **options)


def test_reverse_valid_flips_each_utterance_within_its_length_and_is_its_own_inverse():
    from downstream.asr import reverse_valid

    x = torch.arange(8.0).reshape(2, 4, 1)
    flipped = reverse_valid(x, torch.tensor([4, 2]))
    assert flipped[..., 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]  # padding (6, 7) stays where it was
    torch.testing.assert_close(reverse_valid(flipped, torch.tensor([4, 2])), x)
