"""One test per private API or version-dependent behaviour in upstream.compat: an upgrade that breaks one fails here."""

import lightning as L
import pytest
import torch
import torchaudio

from upstream import compat
from upstream.base import conv_output_lengths
from upstream.hf import FAMILIES, tiny_model


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_transformers_frame_lengths_are_the_conv_formula_and_the_frames_it_makes(model_type):
    model = tiny_model(model_type)
    lengths = torch.tensor([400, 401, 16000, 12345])
    kernels_strides = list(zip(model.config.conv_kernel, model.config.conv_stride, strict=True))
    frames = compat.feat_extract_output_lengths(model, lengths)
    assert frames.dtype == torch.long
    assert frames.tolist() == conv_output_lengths(lengths, kernels_strides).tolist() == [1, 1, 49, 38]
    with torch.no_grad():
        assert model.feature_extractor(torch.zeros(1, 12345)).size(-1) == 38


def test_transformers_cnn_output_needs_grad_only_when_told():
    cnn = tiny_model("hubert").feature_extractor.train()
    for parameter in cnn.parameters():
        parameter.requires_grad_(False)
    compat.set_feature_encoder_grad(cnn, True)
    assert cnn(torch.randn(1, 800)).requires_grad  # the flag alone makes the frozen CNN's output need grad
    compat.set_feature_encoder_grad(cnn, False)
    assert not cnn(torch.randn(1, 800)).requires_grad


def test_pre_layer_norm_encoders_are_told_apart_by_class():
    assert compat.is_pre_layer_norm_encoder(tiny_model("hubert", do_stable_layer_norm=True).encoder)
    assert not compat.is_pre_layer_norm_encoder(tiny_model("hubert", do_stable_layer_norm=False).encoder)
    assert compat.is_pre_layer_norm_encoder(tiny_model("unispeech-sat", do_stable_layer_norm=True).encoder)
    # The conformer normalises after its last layer with no such class name: hf.FAMILIES says so instead.
    assert not compat.is_pre_layer_norm_encoder(tiny_model("wav2vec2-conformer").encoder)


def test_conformer_depthwise_convolutions_are_found_and_see_padding_unless_zeroed():
    model = tiny_model("wav2vec2-conformer")
    convs = compat.conformer_depthwise_convs(model)
    assert len(convs) == model.config.num_hidden_layers
    assert all(isinstance(c, torch.nn.Conv1d) and c.groups == c.in_channels == 64 for c in convs)
    assert compat.conformer_depthwise_convs(tiny_model("hubert")) == []
    # transformers zeroes padded frames before the first layer only; inside a layer they are not zero by the
    # time they reach the depthwise convolution.
    seen = []
    convs[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    mask = (torch.arange(8000)[None] < torch.tensor([[8000], [5000]])).long()
    with torch.no_grad():
        model(torch.randn(2, 8000), attention_mask=mask)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(5000)))
    assert seen[0][1, :, frames:].abs().sum() > 0


def test_only_data2vec_audio_stacks_positional_convolutions():
    assert len(compat.positional_conv_layers(tiny_model("data2vec-audio"))) == 5
    assert compat.positional_conv_layers(tiny_model("hubert")) == []


def test_transformers_5_keeps_the_pre_norm_value_in_the_last_hidden_state():
    model = tiny_model("hubert", do_stable_layer_norm=True)
    with torch.no_grad():
        out = model(torch.randn(1, 4000), output_hidden_states=True)
    states = compat.encoder_output_states(out)
    assert len(states) == len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(states[-1], out.last_hidden_state)
    with torch.no_grad():
        assert torch.allclose(model.encoder.layer_norm(out.hidden_states[-1]), out.last_hidden_state, atol=1e-6)
    assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)


def test_torchaudio_encoder_input_zeroes_padding_and_masks_it():
    model = torchaudio.models.hubert_base().eval()
    features = torch.randn(2, 10, 512)
    with torch.no_grad():
        x, mask = compat.torchaudio_encoder_input(model.encoder, features, torch.tensor([10, 6]))
        unmasked, no_mask = compat.torchaudio_encoder_input(model.encoder, features, None)
        y = compat.torchaudio_transformer_input(model.encoder.transformer, x)
    assert x.shape == (2, 10, 768) and no_mask is None
    assert torch.equal(x[1, 6:], torch.zeros(4, 768))
    assert torch.equal(x[0], unmasked[0])
    assert mask.shape == (2, 1, 10, 10)  # additive: -10000 on padded keys (torchaudio 2.11), 0 elsewhere
    assert (mask[1, 0, :, 6:] == -10000.0).all() and (mask[1, 0, :, :6] == 0).all() and (mask[0] == 0).all()
    # The positional convolution is added (and, post-LN, normalised): shape kept, values changed.
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_fairseq_keys_are_renamed_to_torchaudios():
    weight = torch.randn(4, 4)
    converted = compat.convert_fairseq_state_dict(
        {
            "encoder.layers.0.self_attn.k_proj.weight": weight,
            "feature_extractor.conv_layers.0.0.weight": weight,
            "post_extract_proj.weight": weight,
        }
    )
    assert torch.equal(converted["encoder.transformer.layers.0.attention.k_proj.weight"], weight)
    assert "feature_extractor.conv_layers.0.conv.weight" in converted
    assert "encoder.feature_projection.projection.weight" in converted


def test_normalising_bundles_are_unwrapped_to_their_encoder():
    from torchaudio.pipelines._wav2vec2.utils import _extend_model

    encoder = torchaudio.models.hubert_base()
    wrapped = _extend_model(encoder, normalize_waveform=True)  # what HUBERT_LARGE.get_model() returns
    assert compat.bundle_encoder(wrapped) is encoder and compat.bundle_encoder(encoder) is encoder


def test_torchaudio_bundles_name_their_weights_file_and_normalisation():
    assert compat.bundle_weights_file(torchaudio.pipelines.HUBERT_BASE).endswith(".pth")
    assert not compat.bundle_normalizes_waveform(torchaudio.pipelines.HUBERT_BASE)
    assert compat.bundle_normalizes_waveform(torchaudio.pipelines.HUBERT_LARGE)


def test_hubert_runs_sdpa_attention_by_default_and_it_matches_eager():
    from upstream import build_upstream

    upstream = build_upstream("tiny_hubert")
    assert compat.attention_implementation(upstream.model) == "sdpa"  # transformers' default: no option needed
    config = upstream.model.config.__class__.from_dict(
        {**upstream.model.config.to_dict(), "attn_implementation": "eager"}
    )
    eager = type(upstream.model)(config).eval()
    eager.load_state_dict(upstream.model.state_dict())
    assert compat.attention_implementation(eager) == "eager"
    wavs = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        fast = upstream.model(wavs, output_hidden_states=True).hidden_states
        slow = eager(wavs, output_hidden_states=True).hidden_states
    assert max(float((a - b).abs().max()) for a, b in zip(fast, slow, strict=True)) < 1e-5


def test_lightning_counts_the_batches_processed_in_the_current_epoch(tmp_path):
    class Counting(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.seen = torch.nn.Linear(2, 1), []

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            self.seen.append((self.current_epoch, compat.batches_processed_in_epoch(self.trainer)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Counting()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(torch.randn(3, 2), batch_size=1))
    assert module.seen == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]  # a batch counts once its step is done


@pytest.mark.parametrize("flag", [True, False])
def test_lightning_trainer_keeps_use_distributed_sampler(flag, tmp_path):
    trainer = L.Trainer(
        accelerator="cpu", devices=1, use_distributed_sampler=flag, logger=False, default_root_dir=tmp_path
    )
    assert compat.trainer_uses_distributed_sampler(trainer) is flag


@pytest.mark.parametrize("layout", ["conditional_generation", "model"])
def test_whisper_encoder_loads_alone_from_either_checkpoint_layout(layout, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from upstream.whisper import tiny_whisper_config

    model = WhisperForConditionalGeneration(tiny_whisper_config(max_source_positions=50))
    (model if layout == "conditional_generation" else model.model).save_pretrained(tmp_path)
    encoder = compat.load_whisper_encoder(str(tmp_path))
    expected = model.model.encoder.state_dict()
    assert encoder.state_dict().keys() == expected.keys()
    assert all(torch.equal(p, expected[name]) for name, p in encoder.state_dict().items())


def test_a_whisper_checkpoint_without_encoder_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import WhisperForConditionalGeneration

    from upstream.whisper import tiny_whisper_config

    WhisperForConditionalGeneration(tiny_whisper_config(max_source_positions=50)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    decoder = {name: w for name, w in weights.items() if not name.startswith("model.encoder.")}
    save_file(decoder, tmp_path / "model.safetensors", metadata={"format": "pt"})  # a decoder without its encoder
    with pytest.raises(ValueError, match="no Whisper encoder weights"):
        compat.load_whisper_encoder(str(tmp_path))


def test_whisper_encoder_ties_its_last_hidden_state_to_the_final_layer_norm():
    from transformers import WhisperModel

    from upstream.whisper import tiny_whisper_config

    encoder = WhisperModel(tiny_whisper_config(max_source_positions=50)).encoder.eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 80, 100), output_hidden_states=True)
        before_norm = encoder.layers[-1](out.hidden_states[-2], None)
    assert len(out.hidden_states) == encoder.config.encoder_layers + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert torch.allclose(encoder.layer_norm(before_norm), out.last_hidden_state, atol=1e-5)
    assert torch.equal(compat.encoder_output_states(out)[-1], out.last_hidden_state)
