"""Every backend returns L+1 layers with the right frame counts, and padding leaves valid frames alone."""

import pytest
import torch

from upstream import PRESETS, UpstreamLoadError, build_upstream, compat
from upstream.base import conv_output_lengths, normalize_waveforms

SSL_CONV = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2  # wav2vec 2.0 / HuBERT / WavLM / data2vec-audio CNN
SURFACE = [(400, 160)]


def hand_conv_lengths(n: int, layers) -> int:
    for kernel, stride in layers:
        n = (n - kernel) // stride + 1
    return n


TINY_PRESETS = ["tiny_hubert", "tiny_wav2vec2", "tiny_wavlm"]
SURFACE_PRESETS = ["fbank", "mfcc", "logmel"]


@pytest.mark.parametrize("name", TINY_PRESETS + SURFACE_PRESETS)
def test_preset_returns_every_layer_with_conv_formula_lengths(name, batch):
    wavs, lengths = batch
    upstream = build_upstream(name)
    out = upstream(wavs, lengths)
    preset = PRESETS[name]
    conv = SURFACE if name in SURFACE_PRESETS else SSL_CONV
    expected = [hand_conv_lengths(n, conv) for n in lengths.tolist()]
    assert out.lengths.tolist() == expected
    assert len(out.hidden_states) == upstream.num_layers == preset.num_layers
    assert upstream.hidden_size == preset.hidden_size
    assert upstream.frame_rate == preset.frame_rate
    for state in out.hidden_states:
        assert state.shape == (2, max(expected), preset.hidden_size)
        assert torch.isfinite(state).all()


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2", "wavlm", "data2vec-audio"])
def test_hf_backend_loads_a_saved_directory_with_its_weights(tiny_dirs, model_type, batch):
    from transformers import AutoModel

    wavs, lengths = batch
    upstream = build_upstream(f"hf:{tiny_dirs[model_type]}")
    reference = AutoModel.from_pretrained(tiny_dirs[model_type]).eval()
    for (name, p), (ref_name, ref) in zip(
        upstream.model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert name == ref_name and torch.equal(p, ref), name
    out = upstream(wavs, lengths)
    assert len(out.hidden_states) == reference.config.num_hidden_layers + 1
    assert out.lengths.tolist() == [hand_conv_lengths(n, SSL_CONV) for n in lengths.tolist()]
    assert out.lengths.tolist() == compat.feat_extract_output_lengths(reference, lengths).tolist()
    # The directory's preprocessor config decides normalisation and masking.
    assert upstream.normalize is True
    assert upstream.use_attention_mask is (model_type != "wav2vec2")


def test_a_bare_directory_path_is_read_as_a_transformers_model(tiny_dirs):
    upstream = build_upstream(tiny_dirs["hubert"])
    assert upstream.num_layers == 5


@pytest.mark.parametrize(
    "name",
    [
        "tiny_hubert",
        "tiny_wav2vec2",
        "tiny_wavlm",
        "hf:data2vec-audio",
        "torchaudio:wavlm",
        "fbank",
        "logmel",
    ],
)
def test_padding_does_not_change_valid_frames_of_masked_models(name, tiny_dirs, batch):
    if ":" in name:
        prefix, model_type = name.split(":")
        name = f"{prefix}:{tiny_dirs[model_type]}"
    wavs, lengths = batch
    upstream = build_upstream(name)
    padded = upstream(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = upstream(wavs[i : i + 1, :n])
        frames = int(padded.lengths[i])
        assert frames == alone.hidden_states[0].size(1)
        for layer, (p, a) in enumerate(zip(padded.hidden_states, alone.hidden_states, strict=True)):
            diff = (p[i, :frames] - a[0]).abs().max().item()
            assert diff < 1e-4, f"layer {layer} of utterance {i} moved by {diff}"


def test_group_norm_checkpoints_get_no_mask_as_transformers_advises(tiny_dirs, batch):
    upstream = build_upstream(f"hf:{tiny_dirs['wav2vec2']}")
    assert not upstream.use_attention_mask
    wavs, lengths = batch
    # Documented behaviour: the group norm sees the padding, so the short utterance's frames move.
    padded = upstream(wavs, lengths).hidden_states[-1][1, : int(upstream.frame_lengths(lengths)[1])]
    alone = upstream(wavs[1:, : lengths[1]]).hidden_states[-1][0]
    assert (padded - alone).abs().max() > 1e-4


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2", "wavlm"])
def test_transformers_and_torchaudio_backends_agree_for_the_same_weights(tiny_dirs, model_type, batch):
    wavs, lengths = batch
    hf = build_upstream(f"hf:{tiny_dirs[model_type]}")(wavs, lengths)
    ta = build_upstream(f"torchaudio:{tiny_dirs[model_type]}")(wavs, lengths)
    assert torch.equal(hf.lengths, ta.lengths)
    assert len(hf.hidden_states) == len(ta.hidden_states)
    for layer, (a, b) in enumerate(zip(hf.hidden_states, ta.hidden_states, strict=True)):
        for i, n in enumerate(hf.lengths.tolist()):
            diff = (a[i, :n] - b[i, :n]).abs().max().item()
            assert diff < 1e-4, f"layer {layer}: max abs diff {diff}"


def test_torchaudio_builder_loads_its_own_state_dict(tmp_path):
    import torchaudio

    model = torchaudio.models.wavlm_base()
    torch.nn.init.normal_(model.encoder.feature_projection.projection.weight)
    path = tmp_path / "wavlm_base.pt"
    torch.save(model.state_dict(), path)
    upstream = build_upstream("torchaudio:wavlm_base", checkpoint=path)
    assert upstream.num_layers == 13 and upstream.hidden_size == 768
    assert torch.equal(
        upstream.model.encoder.feature_projection.projection.weight,
        model.encoder.feature_projection.projection.weight,
    )
    out = upstream(torch.randn(1, 4000))
    assert out.lengths.tolist() == [hand_conv_lengths(4000, SSL_CONV)]
    assert out.hidden_states[0].shape == (1, 12, 768)


def test_torchaudio_builder_refuses_a_checkpoint_of_another_size(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.feature_projection.projection.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(UpstreamLoadError, match="does not fit"):
        build_upstream("torchaudio:hubert_base", checkpoint=path)


def test_offline_hub_id_gives_one_readable_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UpstreamLoadError) as info:
        build_upstream("hf:facebook/hubert-base-ls960", local_files_only=True)
    message = str(info.value)
    assert "facebook/hubert-base-ls960" in message
    assert "hf download" in message and "hf:DIR" in message
    assert "\n" not in message
    assert info.value.__suppress_context__ and info.value.__cause__ is None


def test_presets_reach_the_same_readable_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UpstreamLoadError, match="microsoft/wavlm-base-plus"):
        build_upstream("wavlm_base_plus", local_files_only=True)


def test_unknown_names_list_what_exists():
    with pytest.raises(ValueError, match="tiny_hubert"):
        build_upstream("hubert_tiny")
    with pytest.raises(ValueError, match="HUBERT_BASE"):
        build_upstream("torchaudio:NOT_A_BUNDLE")


def test_bad_input_is_refused_with_a_clear_message():
    upstream = build_upstream("tiny_hubert")
    with pytest.raises(ValueError, match="mono"):
        upstream(torch.zeros(1, 2, 16000))
    with pytest.raises(ValueError, match=r"batch index \[1\].*400 samples"):
        upstream(torch.zeros(2, 16000), torch.tensor([16000, 399]))
    with pytest.raises(ValueError, match="exceeds"):
        upstream(torch.zeros(1, 1000), torch.tensor([2000]))
    assert upstream(torch.zeros(1, 400)).lengths.tolist() == [1]


def test_waveform_normalisation_matches_the_feature_extractor(batch):
    from transformers import Wav2Vec2FeatureExtractor

    wavs, lengths = batch
    wavs = wavs + 0.3  # a DC offset to remove
    wavs[1, 8001:] = 0
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    reference = extractor(
        [w[:n].numpy() for w, n in zip(wavs, lengths.tolist(), strict=True)],
        sampling_rate=16000,
        padding=True,
        return_tensors="pt",
    ).input_values
    assert torch.allclose(normalize_waveforms(wavs, lengths), reference, atol=1e-5)


def test_conv_output_lengths_matches_the_formula():
    n = torch.tensor([400, 401, 719, 720, 16000, 16001])
    assert conv_output_lengths(n, SSL_CONV).tolist() == [hand_conv_lengths(int(x), SSL_CONV) for x in n]


def test_fbank_is_kaldi_fbank_on_16_bit_values(batch):
    from torchaudio.compliance import kaldi

    wavs, lengths = batch
    out = build_upstream("fbank")(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        reference = kaldi.fbank(wavs[i : i + 1, :n] * 32768, num_mel_bins=80, dither=0.0)
        assert torch.allclose(out.hidden_states[0][i, : reference.size(0)], reference, atol=1e-4)


@pytest.mark.parametrize("name", ["fbank", "mfcc", "logmel"])
def test_surface_cmvn_normalises_each_utterance_over_its_own_frames(batch, name):
    wavs, lengths = batch
    raw = build_upstream(name)(wavs, lengths)
    out = build_upstream(name, cmvn=True)(wavs, lengths)
    for i, n in enumerate(out.lengths.tolist()):
        x = raw.hidden_states[0][i, :n]
        expected = (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt()
        assert torch.allclose(out.hidden_states[0][i, :n], expected, atol=1e-4)
        assert out.hidden_states[0][i, n:].abs().sum() == 0  # padded frames stay zero


def test_tiny_presets_are_the_same_model_every_time():
    a, b = build_upstream("tiny_wavlm"), build_upstream("tiny_wavlm")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    state = torch.get_rng_state()
    build_upstream("tiny_hubert")
    assert torch.equal(state, torch.get_rng_state())  # building does not disturb the caller's seed


def test_torchaudio_bundle_loads_weights_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import torchaudio

    # The bundle's own loading path: torch.hub finds the weight file in its cache and downloads nothing.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    bundle = torchaudio.pipelines.HUBERT_BASE
    model = torchaudio.models.hubert_base()
    torch.nn.init.normal_(model.encoder.feature_projection.projection.weight)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(model.state_dict(), tmp_path / "hub" / "checkpoints" / compat.bundle_weights_file(bundle))
    upstream = build_upstream("torchaudio:HUBERT_BASE")
    assert torch.equal(
        upstream.model.encoder.feature_projection.projection.weight, model.encoder.feature_projection.projection.weight
    )
    assert upstream.num_layers == 13 and not upstream.normalize and not upstream.use_attention_mask
    assert upstream(torch.randn(1, 4000)).hidden_states[-1].shape == (1, 12, 768)


def test_hf_backend_returns_the_models_own_states(tiny_dirs, batch):
    from transformers import AutoModel

    wavs, lengths = batch
    upstream = build_upstream(f"hf:{tiny_dirs['wavlm']}")
    model = AutoModel.from_pretrained(tiny_dirs["wavlm"]).eval()
    normed = normalize_waveforms(wavs, lengths)
    mask = (torch.arange(wavs.size(1))[None] < lengths[:, None]).long()
    with torch.no_grad():
        reference = model(normed, attention_mask=mask, output_hidden_states=True)
    expected = [*reference.hidden_states[:-1], reference.last_hidden_state]  # last: after the final norm
    for ours, theirs in zip(upstream(wavs, lengths).hidden_states, expected, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_normalisation_follows_the_preprocessor_config_or_the_cnn_type(tmp_path, batch):
    from transformers import Wav2Vec2FeatureExtractor

    from upstream.hf import tiny_model

    wavs, lengths = batch
    tiny_model("hubert", seed=3).save_pretrained(tmp_path / "bare")  # no preprocessor config: layer-norm CNN
    bare = build_upstream(f"hf:{tmp_path / 'bare'}")
    assert bare.normalize and bare.use_attention_mask
    tiny_model("hubert", seed=3).save_pretrained(tmp_path / "raw")
    Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True).save_pretrained(tmp_path / "raw")
    raw = build_upstream(f"hf:{tmp_path / 'raw'}")
    assert not raw.normalize
    # The same weights see a differently scaled waveform: normalisation really is on in one and off in the other.
    assert not torch.allclose(bare(wavs, lengths).hidden_states[0], raw(wavs, lengths).hidden_states[0], atol=1e-3)
    assert torch.allclose(bare(wavs * 7, lengths).hidden_states[-1], bare(wavs, lengths).hidden_states[-1], atol=1e-4)


def test_models_with_a_length_changing_adapter_are_refused(tmp_path):
    from upstream.hf import tiny_model

    tiny_model("wav2vec2", add_adapter=True, output_hidden_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="adapter"):
        build_upstream(f"hf:{tmp_path}")


def test_a_missing_local_directory_is_named_as_such():
    with pytest.raises(UpstreamLoadError, match="directory ./no/such/model does not exist"):
        build_upstream("hf:./no/such/model")


def test_a_preset_without_a_family_gets_one_from_its_name_or_source():
    from upstream.registry import Preset, preset_family

    def family(name, source="", given=""):
        return preset_family(name, Preset(lambda: None, source, 2, 4, 50.0, family=given))

    assert family("hubert_large") == "hubert" and family("tiny_wavlm") == "wavlm"
    assert family("my_ssl", "hf:someone/distilhubert") == "hubert"
    assert family("whisper_base") == "whisper" and family("mms_300m") == "mms"
    assert family("hubert_base", given="custom") == "custom"
    assert PRESETS["wav2vec2_large"].family == "wav2vec2" and PRESETS["mfcc"].family == "surface"
