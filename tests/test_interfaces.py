"""Interfaces combine layers as their definitions say, and only they and the head learn on a frozen upstream."""

import math
import re

import pytest
import torch
from torch import nn

from upstream import build_upstream
from upstream.interfaces import (
    INTERFACES,
    _BlockWeightedSum,
    block_weighted_sum,
    build_interface,
    group_sizes,
    hconv_depth,
    weighted_sum,
)


def states(num_layers=5, batch=2, frames=7, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, frames, dim, generator=generator) for _ in range(num_layers)]


LENGTHS = torch.tensor([7, 4])


def test_weighted_sum_equals_softmax_of_logits_computed_by_hand():
    hidden = states()
    interface = build_interface("weighted_sum", 5, 16)
    logits = [0.5, -1.0, 2.0, 0.0, 1.0]
    with torch.no_grad():
        interface.weight_logits.copy_(torch.tensor(logits))
    z = sum(math.exp(v) for v in logits)
    weights = [math.exp(v) / z for v in logits]
    expected = sum(w * h for w, h in zip(weights, hidden, strict=True))
    out = interface(hidden, LENGTHS)
    assert torch.allclose(out[0], expected[0], atol=1e-6)
    assert torch.allclose(out[1, :4], expected[1, :4], atol=1e-6)
    assert torch.all(out[1, 4:] == 0)  # padded frames are zeroed
    assert interface.layer_weights().sum().item() == pytest.approx(1.0)
    assert interface.layer_weights().tolist() == pytest.approx(weights)


def test_weighted_sum_starts_as_the_mean_of_layers():
    hidden = states()
    out = build_interface("weighted_sum", 5, 16)(hidden, torch.tensor([7, 7]))
    assert torch.allclose(out, torch.stack(hidden).mean(0), atol=1e-6)


def test_weighted_sum_layer_norm_is_per_frame_without_affine():
    hidden = states()
    out = build_interface("weighted_sum", 5, 16, normalize=True)(hidden, torch.tensor([7, 7]))
    normed = [
        (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5) for h in hidden
    ]
    assert torch.allclose(out, torch.stack(normed).mean(0), atol=1e-5)
    assert not any(
        isinstance(m, nn.LayerNorm) for m in build_interface("weighted_sum", 5, 16, normalize=True).modules()
    )


def test_last_and_layer_pick_the_right_state():
    hidden = states()
    lengths = torch.tensor([7, 7])
    assert torch.equal(build_interface("last", 5, 16)(hidden, lengths), hidden[-1])
    assert torch.equal(build_interface("layer", 5, 16, layer=2)(hidden, lengths), hidden[2])
    assert torch.equal(build_interface("layer", 5, 16, layer=-2)(hidden, lengths), hidden[3])
    with pytest.raises(ValueError, match="out of range"):
        build_interface("layer", 5, 16, layer=5)


def test_concat_maps_all_layers_to_the_output_size():
    interface = build_interface("concat", 5, 16, output_size=10)
    assert interface.project.in_features == 80
    assert interface(states(), LENGTHS).shape == (2, 7, 10)


@pytest.mark.parametrize("num_states,depth", [(1, 1), (2, 1), (5, 1), (9, 2), (13, 2), (25, 2), (27, 3), (49, 3)])
def test_hconv_depth_is_floor_log3_of_the_layer_count(num_states, depth):
    assert hconv_depth(num_states) == depth
    interface = build_interface("hconv", num_states, 12)
    assert sum(isinstance(m, nn.Conv1d) for m in interface.modules()) == depth


@pytest.mark.parametrize("num_states,hidden", [(5, 64), (13, 768), (25, 1024), (13, 100), (1, 80)])
def test_hconv_output_size_is_exact(num_states, hidden):
    interface = build_interface("hconv", num_states, hidden)
    out = interface(states(num_states, dim=hidden), LENGTHS)
    assert out.shape == (2, 7, hidden)
    assert (
        build_interface("hconv", num_states, hidden, output_size=33)(states(num_states, dim=hidden), LENGTHS).shape[-1]
        == 33
    )


def test_hconv_narrows_channels_so_no_projection_is_needed_when_sizes_divide():
    # 13 states -> 5 -> 2 positions; 768 / 2 = 384 channels, flattened exactly 768.
    interface = build_interface("hconv", 13, 768)
    assert interface.remaining_positions == 2
    assert isinstance(interface.project, nn.Identity)
    assert interface.convs[-2].out_channels == 384


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_every_interface_refuses_the_wrong_layer_count(name):
    with pytest.raises(ValueError, match="hidden states"):
        build_interface(name, 5, 16)(states(4), LENGTHS)


def padded_states(num_layers=5, dim=16):
    """States of a batch whose second utterance (4 of 7 frames) is padded with garbage, as an upstream may leave."""
    hidden = states(num_layers, dim=dim)
    for state in hidden:
        state[1, 4:] = 1e3 * torch.randn(3, dim)
    return hidden


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_every_interface_gives_each_utterance_the_same_frames_padded_or_alone(name):
    interface = build_interface(name, 5, 16)
    hidden = padded_states()
    batched = interface(hidden, LENGTHS)
    for index, length in enumerate(LENGTHS.tolist()):
        alone = interface([h[index : index + 1, :length] for h in hidden], LENGTHS[index : index + 1])
        assert (batched[index, :length] - alone[0]).abs().max() < 1e-5


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_every_interface_sets_padded_frames_to_zero(name):
    out = build_interface(name, 5, 16)(padded_states(), LENGTHS)
    assert torch.all(out[1, 4:] == 0) and out[1, :4].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_every_interface_trains_all_its_parameters(name):
    interface = build_interface(name, 5, 16, output_size=8)  # a projection, so that every one has parameters
    hidden = states()
    out = interface(hidden, LENGTHS)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    for parameter_name, parameter in interface.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", sorted(INTERFACES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_interface_takes_one_stacked_block_as_it_takes_the_layers(name, dtype):
    """Cached batches come as one [L+1, B, T, D] block in the cache's type: the same output and gradients as the
    layers in float32."""
    interface = build_interface(name, 5, 16, output_size=8)
    hidden = [state.to(dtype).float() for state in states()]  # values a float16 cache can hold exactly
    direction = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1))
    outputs, grads = [], []
    for given in (hidden, torch.stack(hidden).to(dtype)):
        interface.zero_grad()
        out = interface(given, LENGTHS)
        (out * direction).sum().backward()
        outputs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in interface.named_parameters()})
    assert outputs[1].dtype == torch.float32
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5
    for key, grad in grads[0].items():
        assert (grad - grads[1][key]).abs().max() < 1e-5 * max(1.0, grad.abs().max().item()), key


@pytest.mark.parametrize("columns", [1, _BlockWeightedSum.CHUNK, 2 * _BlockWeightedSum.CHUNK + 3])
def test_block_weighted_sum_in_chunks_matches_the_running_sum_and_its_weight_gradient(columns):
    generator = torch.Generator().manual_seed(2)
    block = torch.randn(13, columns, generator=generator).half()
    direction = torch.randn(columns, generator=generator)
    results = []
    for combine in (lambda w: block_weighted_sum(w, block), lambda w: weighted_sum(w, list(block.float()), False)):
        weights = torch.randn(13, generator=torch.Generator().manual_seed(3)).softmax(0).requires_grad_()
        out = combine(weights)
        (out * direction).sum().backward()
        results.append((out.detach(), weights.grad))
    (out, grad), (reference, reference_grad) = results
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 1e-5
    assert (grad - reference_grad).abs().max() < 1e-4 * reference_grad.abs().max()


@pytest.mark.parametrize(
    "name,options,width",
    [
        ("grouped_weighted_sum", {}, 2 * 16),
        ("grouped_weighted_sum", {"groups": 3}, 3 * 16),
        ("grouped_weighted_sum", {"groups": 3, "output_size": 10}, 10),
        ("concat_projection", {}, 16),
        ("concat_projection", {"output_size": 10}, 10),
        ("layer_attention", {}, 16),
        ("layer_attention", {"attention_size": 32, "attention_layers": 2, "output_size": 10}, 10),
    ],
)
def test_new_interfaces_have_their_documented_width(name, options, width):
    interface = build_interface(name, 5, 16, **options)
    assert interface.output_size == width
    assert interface(states(), LENGTHS).shape == (2, 7, width)


@pytest.mark.parametrize("num_states,groups,sizes", [(5, 2, [3, 2]), (13, 3, [5, 4, 4]), (5, 5, [1] * 5), (7, 1, [7])])
def test_groups_are_contiguous_and_as_equal_as_possible(num_states, groups, sizes):
    assert group_sizes(num_states, groups) == sizes
    assert build_interface("grouped_weighted_sum", num_states, 4, groups=groups).sizes == sizes


def test_grouped_weighted_sum_concatenates_a_softmax_weighted_sum_per_group():
    hidden = states()
    interface = build_interface("grouped_weighted_sum", 5, 16, groups=2)  # groups: states 0-2, states 3-4
    logits = [0.5, -1.0, 2.0, 0.0, 1.0]
    with torch.no_grad():
        interface.group_logits.copy_(torch.tensor(logits))
    first = torch.softmax(torch.tensor(logits[:3]), 0)
    second = torch.softmax(torch.tensor(logits[3:]), 0)
    expected = torch.cat(
        [sum(w * h for w, h in zip(first, hidden[:3], strict=True)),
         sum(w * h for w, h in zip(second, hidden[3:], strict=True))],
        dim=-1,
    )  # fmt: skip
    out = interface(hidden, torch.tensor([7, 7]))
    assert torch.allclose(out, expected, atol=1e-6)
    assert interface.layer_weights().tolist() == pytest.approx([*first.tolist(), *second.tolist()])


def test_grouped_weighted_sum_with_one_group_is_the_weighted_sum():
    hidden = states()
    grouped = build_interface("grouped_weighted_sum", 5, 16, groups=1, normalize=True)
    plain = build_interface("weighted_sum", 5, 16, normalize=True)
    with torch.no_grad():
        grouped.group_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]))
        plain.weight_logits.copy_(grouped.group_logits)
    assert torch.allclose(grouped(hidden, LENGTHS), plain(hidden, LENGTHS), atol=1e-6)


@pytest.mark.parametrize("groups", [0, -1, 6])
def test_grouped_weighted_sum_refuses_groups_outside_one_to_the_state_count(groups):
    with pytest.raises(
        ValueError, match=rf"groups must be between 1 and the number of hidden states \(5\); got {groups}"
    ):
        build_interface("grouped_weighted_sum", 5, 16, groups=groups)


def test_concat_projection_is_concat_with_a_projection_even_when_widths_match():
    hidden = states()
    concat = build_interface("concat", 5, 16)
    projection = build_interface("concat_projection", 5, 16)
    projection.load_state_dict(concat.state_dict())
    assert torch.equal(projection(hidden, LENGTHS), concat(hidden, LENGTHS))
    assert isinstance(build_interface("concat", 1, 16).project, nn.Identity)
    assert isinstance(build_interface("concat_projection", 1, 16).project, nn.Linear)


def test_layer_attention_runs_one_short_sequence_per_frame_through_the_encoder():
    interface = build_interface("layer_attention", 5, 16, attention_size=32, attention_layers=2)
    assert len(interface.encoder.layers) == 2
    seen = []
    interface.encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    interface(states(), LENGTHS)
    assert seen == [(2 * 7, 1 + 5, 32)]  # [B*T, CLS + the L+1 states, attention_size]


def test_layer_attention_reads_every_layer_and_only_its_own_frame():
    hidden = [h.requires_grad_() for h in states()]
    out = build_interface("layer_attention", 5, 16)(hidden, LENGTHS)
    out[0, 3].sum().backward()
    for state in hidden:
        assert state.grad[0, 3].abs().sum() > 0
        assert state.grad.abs().sum() == state.grad[0, 3].abs().sum()


@pytest.mark.parametrize("options", [{"attention_size": 30}, {"attention_size": 0}, {"attention_layers": 0}])
def test_layer_attention_refuses_bad_sizes(options):
    with pytest.raises(ValueError, match="attention_size must be a positive multiple of 4|attention_layers must be"):
        build_interface("layer_attention", 5, 16, **options)


@pytest.mark.parametrize(
    "name,valid",
    [
        ("grouped_weighted_sum", "['groups', 'normalize', 'output_size']"),
        ("concat_projection", "['output_size']"),
        ("layer_attention", "['attention_size', 'attention_layers', 'output_size']"),
    ],
)
def test_new_interfaces_refuse_an_unknown_option_naming_the_valid_ones(name, valid):
    with pytest.raises(
        ValueError, match=re.escape(f"unknown option(s) ['layer'] for interface {name!r}; valid options: {valid}")
    ):
        build_interface(name, 5, 16, layer=2)


@pytest.mark.parametrize("name", sorted(set(INTERFACES) - {"grouped_weighted_sum"}))
def test_every_interface_takes_a_single_hidden_state(name):
    # Surface features (fbank, mfcc) have one "layer".
    assert build_interface(name, 1, 80)(states(1, dim=80), LENGTHS).shape == (2, 7, 80)


def test_grouped_weighted_sum_on_a_single_hidden_state_needs_one_group():
    with pytest.raises(ValueError, match=r"between 1 and the number of hidden states \(1\); got 2"):
        build_interface("grouped_weighted_sum", 1, 80)
    hidden = states(1, dim=80)
    out = build_interface("grouped_weighted_sum", 1, 80, groups=1)(hidden, torch.tensor([7, 7]))
    assert torch.allclose(out, hidden[0])


@pytest.mark.parametrize(
    "name,options,width",
    [("grouped_weighted_sum", {"groups": 2}, 2), ("concat_projection", {}, 1), ("layer_attention", {}, 1)],
)
def test_new_interfaces_train_on_a_frozen_tiny_hubert(name, options, width):
    upstream = build_upstream("tiny_hubert")
    interface = build_interface(name, upstream.num_layers, upstream.hidden_size, **options)
    out = upstream(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    features = interface(out.hidden_states, out.lengths)
    assert features.shape == (2, out.lengths.max(), width * upstream.hidden_size)
    assert torch.all(features[1, out.lengths[1] :] == 0)
    features.pow(2).mean().backward()
    assert all(p.grad is not None for p in interface.parameters())
    assert all(p.grad is None for p in upstream.parameters())


def test_unknown_interface_lists_the_choices():
    with pytest.raises(ValueError, match="weighted_sum"):
        build_interface("mean", 5, 16)


def test_frozen_upstream_leaves_only_interface_and_head_with_gradients():
    upstream = build_upstream("tiny_hubert")
    interface = build_interface("weighted_sum", upstream.num_layers, upstream.hidden_size)
    head = nn.Linear(upstream.hidden_size, 3)
    upstream.train(), interface.train(), head.train()
    assert not any(m.training for m in upstream.modules() if m is not upstream)  # dropout stays off
    out = upstream(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    logits = head(interface(out.hidden_states, out.lengths).mean(1))
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is None for p in upstream.parameters())
    assert interface.weight_logits.grad is not None and interface.weight_logits.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def trainable_names(upstream):
    return {name for name, p in upstream.named_parameters() if p.requires_grad}


def test_top_k_leaves_exactly_the_top_k_layers_trainable():
    upstream = build_upstream("tiny_hubert", trainable="top:2")
    names = trainable_names(upstream)
    layers = {name.split(".")[3] for name in names if name.startswith("model.encoder.layers.")}
    assert layers == {"2", "3"}
    # Besides those layers only the final norm of the pre-LN encoder trains.
    assert {n for n in names if not n.startswith("model.encoder.layers.")} == {
        "model.encoder.layer_norm.weight",
        "model.encoder.layer_norm.bias",
    }
    out = upstream(torch.randn(1, 8000))
    out.hidden_states[-1].sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in upstream.parameters())


def test_all_trains_everything_but_the_cnn_unless_asked(tiny_dirs):
    upstream = build_upstream(f"torchaudio:{tiny_dirs['hubert']}", trainable="all")
    names = trainable_names(upstream)
    assert names and not any(n.startswith("model.feature_extractor.") for n in names)
    assert all(p.requires_grad for n, p in upstream.named_parameters() if n.startswith("model.encoder."))
    with_cnn = build_upstream("tiny_wavlm", trainable="all", train_cnn=True)
    assert all(p.requires_grad for p in with_cnn.parameters() if p is not with_cnn.model.masked_spec_embed)


def test_trainable_upstream_follows_train_and_eval():
    upstream = build_upstream("tiny_hubert", trainable="top:1")
    wav = torch.randn(1, 8000)
    with torch.no_grad():  # built in eval mode: no dropout until a trainer asks
        assert torch.equal(upstream(wav).hidden_states[-1], upstream(wav).hidden_states[-1])
    upstream.train()
    assert upstream.model.training and upstream.model.encoder.layers[3].training
    # The frozen CNN and the frozen layers below the top one keep dropout off.
    assert not upstream.model.feature_extractor.training
    assert not any(layer.training for layer in upstream.model.encoder.layers[:3])
    upstream.eval()
    assert not upstream.model.training


@pytest.mark.parametrize("source", ["tiny_hubert", "torchaudio:hubert"])
def test_top_k_builds_no_graph_below_the_trained_layers(source, tiny_dirs):
    if source.startswith("torchaudio:"):
        source = f"torchaudio:{tiny_dirs['hubert']}"
    upstream = build_upstream(source, trainable="top:1").train()
    out = upstream(torch.randn(2, 8000), torch.tensor([8000, 5000]))
    assert not any(state.requires_grad for state in out.hidden_states[:-2])
    assert out.hidden_states[-1].requires_grad
    layers = upstream.transformer_layers()
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for layer in layers[:-1] for p in layer.parameters())


def test_train_cnn_needs_a_trainable_upstream():
    with pytest.raises(ValueError, match="train_cnn"):
        build_upstream("tiny_hubert", train_cnn=True)


@pytest.mark.parametrize("bad", ["top:0", "top:x", "some", "top:9"])
def test_bad_trainable_values_are_refused(bad):
    with pytest.raises(ValueError, match="trainable|layers"):
        build_upstream("tiny_hubert", trainable=bad)


def test_post_ln_encoders_keep_their_input_norm_frozen_under_top_k(tiny_dirs):
    # data2vec-audio normalises before the first layer; only pre-LN encoders train a final norm with the top layers.
    upstream = build_upstream(f"hf:{tiny_dirs['data2vec-audio']}", trainable="top:1")
    assert upstream.final_norm() is None
    assert not upstream.model.encoder.layer_norm.weight.requires_grad
