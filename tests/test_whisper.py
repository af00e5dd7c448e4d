"""Whisper's encoder as an upstream: the feature extractor's log-mel in torch, every state the encoder's own on valid
frames over consecutive windows, the ceil(n / 320) frame rule, batching that changes nothing, top:K."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

from recipes.cli import main
from upstream import PRESETS, build_upstream
from upstream.whisper import WhisperLogMel, WhisperUpstream, tiny_whisper_config

WINDOW = 16000  # the test models' window: max_source_positions=50 -> 100 mel frames -> 1 s


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> str:
    """A tiny Whisper with large-v3's 128 mel bins and a 1 s window, saved as the hub's checkpoints are."""
    path = tmp_path_factory.mktemp("whisper")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = WhisperForConditionalGeneration(tiny_whisper_config(num_mel_bins=128, max_source_positions=50))
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=128, chunk_length=1).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(whisper_dir):
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    return model.model.encoder, WhisperFeatureExtractor.from_pretrained(whisper_dir)


def clips(*seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([round(s * 16000) for s in seconds])
    wavs = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=generator)
    return wavs * (torch.arange(wavs.size(1))[None] < lengths[:, None]), lengths


def encoder_states_by_window(encoder, extractor, wav: torch.Tensor) -> list[torch.Tensor]:
    """What transformers gives, window by window: the extractor on each 1 s piece, the encoder's hidden states,
    the valid frames (the extractor's mask -> the model's length rule), concatenated."""
    pieces = []
    for start in range(0, wav.numel(), WINDOW):
        chunk = wav[start : start + WINDOW].numpy()
        features = extractor(chunk, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
        frames = int(encoder._get_feat_extract_output_lengths(features.attention_mask.sum(-1))[0])
        with torch.no_grad():
            states = encoder(features.input_features, output_hidden_states=True).hidden_states
        pieces.append([state[0, :frames] for state in states])
    return [torch.cat(layer) for layer in zip(*pieces, strict=True)]


def test_log_mel_is_the_feature_extractors(reference):
    _, extractor = reference
    wavs, lengths = clips(0.37, 1.0)
    windows = torch.zeros(2, WINDOW)
    windows[0, : lengths[0]] = wavs[0, : lengths[0]]
    windows[1] = wavs[1]
    ours = WhisperLogMel(extractor)(windows)
    for i, n in enumerate(lengths.tolist()):
        theirs = extractor(wavs[i, :n].numpy(), sampling_rate=16000, return_tensors="pt").input_features[0]
        assert ours.shape[1:] == theirs.shape == (128, 100)
        assert (ours[i] - theirs).abs().max() < 1e-5


def test_every_state_is_the_encoders_own_over_consecutive_windows(whisper_dir, reference):
    encoder, extractor = reference
    wavs, lengths = clips(2.5, 0.3)  # three windows, the last half full; one short clip in the same batch
    upstream = build_upstream(f"hf:{whisper_dir}")
    assert isinstance(upstream, WhisperUpstream) and upstream.log_mel.num_mel_bins == 128
    out = upstream(wavs, lengths)
    assert len(out.hidden_states) == upstream.num_layers == 5
    for i, n in enumerate(lengths.tolist()):
        expected = encoder_states_by_window(encoder, extractor, wavs[i, :n])
        assert int(out.lengths[i]) == expected[0].size(0)
        for layer, (ours, theirs) in enumerate(zip(out.hidden_states, expected, strict=True)):
            diff = (ours[i, : int(out.lengths[i])] - theirs).abs().max().item()
            assert diff < 1e-4, f"layer {layer} of utterance {i} is off by {diff}"
    # The last state is the encoder's output, after its final layer norm.
    last = encoder_states_by_window(encoder, extractor, wavs[0])[-1]
    assert torch.allclose(out.hidden_states[-1][0, : last.size(0)], last, atol=1e-4)


def test_frames_are_ceil_of_samples_over_320_as_the_extractors_mask_and_the_model_count_them(whisper_dir, reference):
    encoder, extractor = reference
    upstream = build_upstream(f"hf:{whisper_dir}")
    lengths = [1, 159, 160, 161, 319, 320, 321, 640, 15999, 16000, 16001, 16321, 47999]
    frames = upstream.frame_lengths(torch.tensor(lengths)).tolist()
    assert frames == [math.ceil(n / 320) for n in lengths]
    for n, count in zip(lengths, frames, strict=True):
        mel = [
            extractor(
                torch.zeros(min(WINDOW, n - s)).numpy(), sampling_rate=16000, return_attention_mask=True
            ).attention_mask.sum()
            for s in range(0, n, WINDOW)
        ]  # valid mel frames of each window, as the extractor's mask counts them
        assert sum(mel) == math.ceil(n / 160)
        assert count == int(encoder._get_feat_extract_output_lengths(torch.tensor(mel)).sum())
    assert upstream.downsample_rate == 320 and upstream.frame_rate == 50.0
    assert upstream(torch.zeros(1, 16321)).hidden_states[0].shape == (1, 52, 64)


def test_batching_does_not_change_valid_frames_as_every_window_is_padded_with_silence(whisper_dir):
    wavs, lengths = clips(1.7, 0.45, 1.0)
    upstream = build_upstream(f"hf:{whisper_dir}")
    batched = upstream(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = upstream(wavs[i : i + 1, :n])
        frames = int(batched.lengths[i])
        assert frames == alone.hidden_states[0].size(1)
        for p, a in zip(batched.hidden_states, alone.hidden_states, strict=True):
            assert (p[i, :frames] - a[0]).abs().max() < 1e-5


def test_no_context_crosses_a_window_boundary(whisper_dir):
    wavs, lengths = clips(1.6)
    upstream = build_upstream(f"hf:{whisper_dir}")
    whole = upstream(wavs, lengths).hidden_states[-1][0]
    second = upstream(wavs[:, WINDOW:]).hidden_states[-1][0]
    assert torch.allclose(whole[50:], second, atol=1e-5)  # the second window alone is the second window
    shifted = upstream(wavs[:, 8000:]).hidden_states[-1][0]
    assert not torch.allclose(whole[25:50], shifted[:25], atol=1e-3)  # the same audio in another window differs


def test_top_k_trains_the_top_k_layers_and_the_final_norm(whisper_dir):
    upstream = build_upstream(f"hf:{whisper_dir}", trainable="top:2")
    encoder = upstream.encoder
    trained = {name for name, p in upstream.named_parameters() if p.requires_grad}
    expected = {f"encoder.{n}" for n, _ in encoder.named_parameters() if n.startswith(("layers.2.", "layers.3."))}
    assert trained == expected | {"encoder.layer_norm.weight", "encoder.layer_norm.bias"}
    upstream.train()
    assert not encoder.layers[0].training and encoder.layers[3].training
    out = upstream(*clips(1.2))
    out.hidden_states[-1].sum().backward()
    assert all(p.grad is not None for n, p in upstream.named_parameters() if n in trained)
    assert all(p.grad is None for n, p in upstream.named_parameters() if n not in trained)
    everything = build_upstream(f"hf:{whisper_dir}", trainable="all")
    frozen = {n for n, p in everything.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight", "encoder.conv2.bias",
                      "encoder.embed_positions.weight"}  # fmt: skip


def test_hf_dispatch_refuses_options_whisper_does_not_take(whisper_dir):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['normalize'\].*whisper"):
        build_upstream(f"hf:{whisper_dir}", normalize=True)


def test_a_checkpoint_without_a_preprocessor_config_gets_its_mel_bins_and_window(tmp_path):
    config = tiny_whisper_config(max_source_positions=50)
    WhisperForConditionalGeneration(config).save_pretrained(tmp_path)
    upstream = build_upstream(f"hf:{tmp_path}")
    assert upstream.log_mel.num_mel_bins == 80 and upstream.window_samples == WINDOW
    WhisperFeatureExtractor(feature_size=128, chunk_length=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="128 mel bins"):
        build_upstream(f"hf:{tmp_path}")


def test_tiny_preset_reads_a_real_30_s_window():
    upstream = build_upstream("tiny_whisper")
    assert upstream.window_samples == 480000 and upstream.window_frames == 1500
    out = upstream(*clips(0.5, 31.0))
    assert out.lengths.tolist() == [25, 1550]
    assert out.hidden_states[0].shape == (2, 1550, PRESETS["tiny_whisper"].hidden_size)


def test_presets_name_the_released_sizes():
    sizes = {name: (PRESETS[name].num_layers, PRESETS[name].hidden_size) for name in PRESETS if "whisper" in name}
    assert sizes == {"whisper_tiny": (5, 384), "whisper_base": (7, 512), "whisper_small": (13, 768),
                     "whisper_medium": (25, 1024), "whisper_large_v3": (33, 1280), "tiny_whisper": (5, 64)}  # fmt: skip
    assert PRESETS["whisper_large_v3"].source == "hf:openai/whisper-large-v3"


def test_inspect_runs_a_whisper_directory(whisper_dir, capsys):
    assert main(["inspect", "--upstream", f"hf:{whisper_dir}"]) == 0
    out = capsys.readouterr().out
    assert "5 hidden states of size 64, 50 frames/s" in out
    assert re.search(r"\| 4 +\| 50 +\|", out)  # a 1 s tone: 50 frames in every layer


def test_hf_names_every_model_type_it_reads_for_one_it_does_not(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"'bert' model; .*hubert.*wav2vec2-bert.*whisper"):
        build_upstream(f"hf:{tmp_path}")


def test_a_fresh_interpreter_builds_a_saved_whisper_from_hf_and_imports_no_backend_until_then(whisper_dir):
    # The registry imports its backends on first build: `hf:` must still know the model types whisper.py adds.
    script = (
        "import sys\nimport upstream\n"
        "assert 'transformers' not in sys.modules and 'upstream.whisper' not in sys.modules, 'imported too early'\n"
        f"print(type(upstream.build_upstream('hf:{whisper_dir}')).__name__)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "WhisperUpstream"
