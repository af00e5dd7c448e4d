"""The raw-waveform families beyond the first four: every layer is the model's own, frame counts are the model's,
padding leaves valid frames alone and top:K trains exactly K layers."""

import pytest
import torch
from transformers import AutoModel, Wav2Vec2FeatureExtractor

from upstream import PRESETS, UpstreamLoadError, build_upstream
from upstream.base import normalize_waveforms
from upstream.hf import MODEL_TYPES, tiny_model

# name -> (model_type, config overrides); layer-norm CNNs, so every family takes a padding mask.
FAMILY_CONFIGS = {
    "unispeech": ("unispeech", {}),
    "unispeech-sat": ("unispeech-sat", {}),
    "unispeech-sat-post-ln": ("unispeech-sat", {"do_stable_layer_norm": False}),
    "conformer-relpos": ("wav2vec2-conformer", {"position_embeddings_type": "relative"}),
    "conformer-rope": ("wav2vec2-conformer", {"position_embeddings_type": "rotary"}),
    "sew": ("sew", {}),
    "sew-d": ("sew-d", {}),
}
SQUEEZED = {"sew", "sew-d"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for name, (model_type, overrides) in FAMILY_CONFIGS.items():
        path = root / name
        tiny_model(model_type, seed=2, **overrides).save_pretrained(path)
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def bare_states(model, wav: torch.Tensor, squeezed: bool) -> list[torch.Tensor]:
    """What transformers itself returns for one normalised utterance `[1, S]`."""
    lengths = torch.tensor([wav.size(1)])
    with torch.no_grad():
        out = model(normalize_waveforms(wav, lengths), attention_mask=torch.ones_like(wav).long(),
                    output_hidden_states=True)  # fmt: skip
    if squeezed:  # SEW's last_hidden_state is upsampled to the CNN rate; its layers' own states are not
        return list(out.hidden_states)
    return [*out.hidden_states[:-1], out.last_hidden_state]  # last: after a final norm


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_every_hidden_state_is_the_bare_models_own(family_dirs, name, batch):
    # Against each utterance alone: in a padded batch transformers' conformer lets padding into the valid frames
    # (see below), which strata's does not. 38 and 24 CNN frames: whole pooled frames for SEW, as transformers pools.
    wavs, lengths = batch
    upstream = build_upstream(f"hf:{family_dirs[name]}")
    model = AutoModel.from_pretrained(family_dirs[name]).eval()
    assert upstream.use_attention_mask and upstream.normalize
    ours = upstream(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        theirs = bare_states(model, wavs[i : i + 1, :n], name in SQUEEZED)
        assert len(ours.hidden_states) == len(theirs) == model.config.num_hidden_layers + 1
        frames = int(ours.lengths[i])
        for layer, (a, b) in enumerate(zip(ours.hidden_states, theirs, strict=True)):
            assert b.size(1) == frames
            diff = (a[i, :frames] - b[0]).abs().max().item()
            assert diff < 1e-4, f"{name} layer {layer} utterance {i}: {diff}"


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_frame_lengths_are_the_frames_the_model_makes_of_each_utterance(family_dirs, name):
    upstream = build_upstream(f"hf:{family_dirs[name]}")
    model = AutoModel.from_pretrained(family_dirs[name]).eval()
    squeeze = model.config.squeeze_factor if name in SQUEEZED else 1
    assert upstream.downsample_rate == 320 * squeeze and upstream.frame_rate == 50 / squeeze
    samples = torch.tensor([upstream.min_samples, upstream.min_samples + 319, 8321, 12345, 16000])
    frames = upstream.frame_lengths(samples)
    assert frames.tolist() == (model._get_feat_extract_output_lengths(samples) // squeeze).tolist()
    assert frames[0] == 1 and frames[1] == 1
    for n, expected in zip(samples.tolist(), frames.tolist(), strict=True):
        with torch.no_grad():
            alone = model(torch.randn(1, n), output_hidden_states=True).hidden_states
        assert alone[0].size(1) == alone[-1].size(1) == expected
    with pytest.raises(ValueError, match=f"fewer than {upstream.min_samples} samples"):
        upstream(torch.zeros(1, upstream.min_samples - 1))


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_padding_does_not_change_valid_frames(family_dirs, name):
    # 38 and 25 CNN frames: for SEW the shorter one ends in half a pooled frame, which the batch pads.
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([12345, 8321])
    wavs = torch.randn(2, 12345, generator=generator) * 0.1
    wavs[1, 8321:] = 0
    upstream = build_upstream(f"hf:{family_dirs[name]}")
    padded = upstream(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = upstream(wavs[i : i + 1, :n])
        frames = int(padded.lengths[i])
        assert frames == alone.hidden_states[0].size(1) == int(alone.lengths[0])
        for layer, (p, a) in enumerate(zip(padded.hidden_states, alone.hidden_states, strict=True)):
            diff = (p[i, :frames] - a[0]).abs().max().item()
            assert diff < 1e-4, f"{name} layer {layer} of utterance {i} moved by {diff}"


def test_conformer_padding_needs_its_depthwise_convolutions_masked(family_dirs):
    # Without zeroing the padding before each depthwise convolution the last valid frames move: the hooks matter.
    upstream = build_upstream(f"hf:{family_dirs['conformer-relpos']}")
    upstream._masks_convs = False
    lengths = torch.tensor([12345, 8321])
    wavs = torch.randn(2, 12345) * 0.1
    padded = upstream(wavs, lengths).hidden_states[-1][1, : int(upstream.frame_lengths(lengths)[1])]
    alone = upstream(wavs[1:, :8321]).hidden_states[-1][0]
    assert (padded - alone).abs().max() > 1e-3


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_top_k_trains_exactly_the_top_k_layers_and_their_final_norm(family_dirs, name):
    upstream = build_upstream(f"hf:{family_dirs[name]}", trainable="top:2").train()
    layers = upstream.transformer_layers()
    assert len(layers) == 4
    final_norm = upstream.final_norm()
    pre_ln = name.startswith(("unispeech", "conformer")) and name != "unispeech-sat-post-ln"
    assert (final_norm is not None) == pre_ln
    expected = {id(p) for layer in layers[2:] for p in layer.parameters()}
    if final_norm is not None:
        expected |= {id(p) for p in final_norm.parameters()}
    trainable = {id(p) for p in upstream.parameters() if p.requires_grad}
    assert trainable == expected
    out = upstream(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    sum(state.sum() for state in out.hidden_states).backward()
    for parameter in upstream.parameters():
        assert (parameter.grad is not None) == (id(parameter) in expected)


@pytest.mark.parametrize("name", ["sew", "sew-d", "conformer-rope"])
def test_all_trains_every_parameter_that_makes_a_returned_state(family_dirs, name):
    # SEW's upsampling after the last layer makes nothing returned: it stays frozen, so DDP finds no unused weights.
    upstream = build_upstream(f"hf:{family_dirs[name]}", trainable="all").train()
    out = upstream(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    sum(state.sum() for state in out.hidden_states).backward()
    unused = [n for n, p in upstream.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    cnn = upstream.model.feature_extractor
    assert not any(p.requires_grad for p in cnn.parameters())
    if name in SQUEEZED:
        assert not any(p.requires_grad for p in upstream.model.encoder.upsample.parameters())


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("tiny_")])
def test_tiny_presets_of_every_family_match_their_listing(name, batch):
    wavs, lengths = batch
    upstream = build_upstream(name)
    preset = PRESETS[name]
    out = upstream(wavs, lengths)
    assert upstream.num_layers == preset.num_layers == len(out.hidden_states)
    assert upstream.hidden_size == preset.hidden_size and upstream.frame_rate == preset.frame_rate
    model = getattr(upstream, "model", None) or upstream.encoder  # Whisper keeps only its encoder
    assert model.config.model_type in MODEL_TYPES  # a family `hf:` reads


def test_unknown_model_types_are_refused_with_the_families_read(tmp_path):
    from transformers import SpeechT5Config, SpeechT5Model

    SpeechT5Model(SpeechT5Config(hidden_size=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)).save_pretrained(
        tmp_path
    )  # fmt: skip
    with pytest.raises(ValueError, match="'speecht5' model; the transformers backend reads .*sew-d"):
        build_upstream(f"hf:{tmp_path}")


def test_s3prl_names_and_the_older_ones_name_the_same_checkpoints(monkeypatch, tmp_path):
    for s3prl, older, hub_id in [
        ("hubert_large_ll60k", "hubert_large", "facebook/hubert-large-ll60k"),
        ("wav2vec2_large_lv60", "wav2vec2_large", "facebook/wav2vec2-large-lv60"),
    ]:
        assert PRESETS[s3prl].source == PRESETS[older].source == f"hf:{hub_id}"
    assert PRESETS["xls_r_1b"].num_layers == PRESETS["mms_1b"].num_layers == 49
    assert PRESETS["distilhubert"].num_layers == 3 and PRESETS["distilhubert"].hidden_size == 768
    # A new preset offline: the same readable error as the old ones, naming its hub id.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UpstreamLoadError, match="microsoft/unispeech-sat-base-plus"):
        build_upstream("unispeech_sat_base_plus", local_files_only=True)


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_inspect_reads_a_saved_directory_of_every_family(family_dirs, name, capsys):
    from recipes.cli import main

    assert main(["inspect", "--upstream", f"hf:{family_dirs[name]}"]) == 0
    out = capsys.readouterr().out
    rate = 25 if name in SQUEEZED else 50  # SEW's layers run on pairs of CNN frames
    assert f"5 hidden states of size 64, {rate} frames/s" in out
