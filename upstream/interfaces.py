"""Interfaces: how the L+1 hidden states of an upstream become one feature sequence for a downstream head."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .base import lengths_to_mask
from .names import Registry

INTERFACES: Registry[Interface] = Registry("interface")
register = INTERFACES.register


def build_interface(name: str, num_layers: int, hidden_size: int, **kw) -> Interface:
    """`num_layers` is the number of hidden states (L+1); options such as `output_size`, `layer` or `normalize`
    go to the interface (an unknown one is a `ValueError` naming the valid ones)."""
    return INTERFACES.build(name, num_layers, hidden_size, **kw)


class Interface(nn.Module):
    """`forward(hidden_states: L+1 x [B, T, D], lengths [B]) -> [B, T, output_size]`, padded frames set to zero.

    `output_size` defaults to the hidden size (`grouped_weighted_sum`: groups x hidden size); when the combination
    has another width, a linear layer maps it.
    """

    name: str

    def __init__(self, num_layers: int, hidden_size: int, output_size: int | None = None) -> None:
        super().__init__()
        if num_layers < 1 or hidden_size < 1:
            raise ValueError(f"num_layers and hidden_size must be positive; got {num_layers}, {hidden_size}")
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.output_size = output_size or hidden_size
        self.set_combined_size(hidden_size)

    def set_combined_size(self, size: int) -> None:
        """Declare the width `combine` returns; adds the projection to `output_size` when they differ."""
        self.project = nn.Linear(size, self.output_size) if size != self.output_size else nn.Identity()

    def combine(self, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def combine_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        """`combine` for states that arrive as one tensor `[L+1, B, T, D]`, maybe in a narrower type than the
        interface's (cached batches come as the cache stores them, float16 by default): by default the layer views
        in float32; an interface that can read the whole block at once overrides it."""
        return self.combine(list(stacked.float().unbind(0)))

    def forward(
        self, hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...] | torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """`hidden_states`: L+1 tensors `[B, T, D]`, or one `[L+1, B, T, D]` tensor."""
        if len(hidden_states) != self.num_layers:
            raise ValueError(
                f"{self.name} interface was built for {self.num_layers} hidden states, got {len(hidden_states)}"
            )
        if isinstance(hidden_states, torch.Tensor):
            combined = self.combine_stacked(hidden_states)
        else:
            combined = self.combine(list(hidden_states))
        features = self.project(combined)
        mask = lengths_to_mask(lengths.to(features.device), features.size(1))
        return features * mask[..., None].to(features.dtype)


@register("last")
class LastLayer(Interface):
    """The output of the last transformer layer, as most fine-tuning recipes use."""

    def combine(self, hidden_states):
        return hidden_states[-1]


@register("layer")
class SingleLayer(Interface):
    """One hidden state by index (negative counts from the end): for layer-wise probing."""

    def __init__(self, num_layers: int, hidden_size: int, layer: int = -1, output_size: int | None = None):
        super().__init__(num_layers, hidden_size, output_size)
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"layer {layer} is out of range for {num_layers} hidden states")
        self.layer = layer

    def combine(self, hidden_states):
        return hidden_states[self.layer]

    def extra_repr(self) -> str:
        return f"layer={self.layer}"


def weighted_sum(weights: torch.Tensor, hidden_states: list[torch.Tensor], normalize: bool) -> torch.Tensor:
    """sum_i weights[i] * h_i over states `[B, T, D]`, each layer-normed per frame (no affine) first if `normalize`."""
    total = 0.0
    # A running sum instead of a stacked [L+1, B, T, D] copy: half the peak memory for large models.
    for weight, state in zip(weights, hidden_states, strict=True):
        if normalize:
            state = F.layer_norm(state, state.shape[-1:])
        total = total + weight * state
    return total


class _BlockWeightedSum(torch.autograd.Function):
    """`weights [L] @ block [L, N]` for a block stored in a narrower type than the weights: chunks of columns are
    converted to the weights' type in one buffer that stays in the CPU cache, forward and for the weights' gradient,
    so the block is never copied whole in float32 (it is frozen: only the weights get a gradient)."""

    CHUNK = 1 << 14  # columns: 13 layers x 16,384 x 4 bytes, 0.8 MiB (1.3x faster than 1 << 15 on a 2 MiB L2)

    @staticmethod
    def chunks(block: torch.Tensor, dtype: torch.dtype) -> Iterator[tuple[slice, torch.Tensor]]:
        """(columns, `block[:, columns]` in `dtype`) chunk by chunk, each written into the same buffer."""
        width = min(block.size(1), _BlockWeightedSum.CHUNK)
        buffer = torch.empty(block.size(0), width, dtype=dtype, device=block.device)
        for start in range(0, block.size(1), width):
            columns = slice(start, min(start + width, block.size(1)))
            chunk = buffer[:, : columns.stop - start]
            yield columns, chunk.copy_(block[:, columns])

    @staticmethod
    def forward(ctx, weights: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(block)
        out = weights.new_empty(block.size(1))
        for columns, chunk in _BlockWeightedSum.chunks(block, weights.dtype):
            torch.mv(chunk.t(), weights, out=out[columns])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (block,) = ctx.saved_tensors
        weights_grad = grad.new_zeros(block.size(0))
        for columns, chunk in _BlockWeightedSum.chunks(block, grad.dtype):
            weights_grad += torch.mv(chunk, grad[columns])
        return weights_grad, None


def block_weighted_sum(weights: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """`sum_i weights[i] * block[i]` over a `[L, N]` block of frozen states, in the weights' type: one pass over the
    block forward and one for the weights' gradient (the running sum of `weighted_sum` writes a product and a new
    total per layer; on a cached epoch that is most of the time)."""
    if block.dtype == weights.dtype or block.requires_grad or block.device.type != "cpu":
        return torch.matmul(weights, block.to(weights.dtype))  # on a GPU, one conversion kernel beats many chunks
    return _BlockWeightedSum.apply(weights, block)


@register("weighted_sum")
class WeightedSum(Interface):
    """SUPERB's featurizer: softmax(w) over layers, w initialised to zero (a plain mean at the start), optionally
    after a per-frame layer norm without affine parameters on each layer."""

    def __init__(self, num_layers: int, hidden_size: int, normalize: bool = False, output_size: int | None = None):
        super().__init__(num_layers, hidden_size, output_size)
        self.normalize = normalize
        self.weight_logits = nn.Parameter(torch.zeros(num_layers))

    def layer_weights(self) -> torch.Tensor:
        """The normalised weights `[L+1]` (they sum to one), for plots."""
        return F.softmax(self.weight_logits, dim=0)

    def combine(self, hidden_states):
        return weighted_sum(self.layer_weights(), hidden_states, self.normalize)

    def combine_stacked(self, stacked):
        if self.normalize:
            return super().combine_stacked(stacked)
        layers, *shape = stacked.shape
        return block_weighted_sum(self.layer_weights(), stacked.reshape(layers, -1)).view(shape)


@register("concat")
class Concat(Interface):
    """All layers side by side per frame, then a linear map to `output_size`."""

    def __init__(self, num_layers: int, hidden_size: int, output_size: int | None = None):
        super().__init__(num_layers, hidden_size, output_size)
        self.set_combined_size(num_layers * hidden_size)

    def combine(self, hidden_states):
        return torch.cat(hidden_states, dim=-1)


def hconv_depth(num_states: int) -> int:
    """floor(log3(num_states)), at least 1, in integers so that powers of three are exact."""
    depth = 0
    while 3 ** (depth + 1) <= num_states:
        depth += 1
    return max(depth, 1)


@register("hconv")
class HierarchicalConv(Interface):
    """Hierarchical convolution over the layer axis (Shih & Harwath, "Interface Design for Self-Supervised Speech
    Models", Interspeech 2024).

    Each frame's L+1 hidden states are a length-(L+1) sequence with D channels. Conv1d(kernel 5, stride 3,
    padding 2) + ReLU blocks shrink it, floor(log3(L+1)) of them, so depth grows with the log of the layer count.
    The last block narrows the channels so that channels x remaining positions is about D; the flattened result
    goes through a linear layer when it is not exactly `output_size`.
    """

    KERNEL, STRIDE, PADDING = 5, 3, 2

    def __init__(self, num_layers: int, hidden_size: int, output_size: int | None = None):
        super().__init__(num_layers, hidden_size, output_size)
        self.depth = hconv_depth(num_layers)
        positions = num_layers
        for _ in range(self.depth):
            positions = (positions + 2 * self.PADDING - self.KERNEL) // self.STRIDE + 1
        last_channels = max(1, round(hidden_size / positions))
        blocks = []
        for i in range(self.depth):
            out_channels = last_channels if i == self.depth - 1 else hidden_size
            blocks += [
                nn.Conv1d(hidden_size, out_channels, self.KERNEL, self.STRIDE, self.PADDING),
                nn.ReLU(),
            ]
        self.convs = nn.Sequential(*blocks)
        self.remaining_positions = positions
        self.set_combined_size(last_channels * positions)

    def combine(self, hidden_states):
        stacked = torch.stack(hidden_states, dim=2)  # [B, T, L+1, D]
        batch, frames, layers, dim = stacked.shape
        x = stacked.reshape(batch * frames, layers, dim).transpose(1, 2)  # [B*T, D, L+1]
        x = self.convs(x)  # [B*T, C, P]
        return x.reshape(batch, frames, -1)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, depth={self.depth}, remaining_positions={self.remaining_positions}"


def group_sizes(num_states: int, groups: int) -> list[int]:
    """Sizes of `groups` contiguous groups of `num_states` states, as equal as possible: the first
    `num_states % groups` groups (the lower layers) take one state more, as `torch.tensor_split` does."""
    if not 1 <= groups <= num_states:
        raise ValueError(
            f"groups must be between 1 and the number of hidden states ({num_states}); got {groups} "
            "(set the interface's groups option)"
        )
    size, extra = divmod(num_states, groups)
    return [size + 1 if i < extra else size for i in range(groups)]


@register("grouped_weighted_sum")
class GroupedWeightedSum(Interface):
    """The L+1 states in `groups` contiguous groups (see `group_sizes`), a SUPERB weighted sum within each group,
    the G sums side by side: G x D wide, so that layers of different groups do not collide in one vector.
    `output_size` defaults to G x D; another value adds a linear map. `groups=1` is `weighted_sum`.
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        groups: int = 2,
        normalize: bool = False,
        output_size: int | None = None,
    ):
        sizes = group_sizes(num_layers, groups)
        super().__init__(num_layers, hidden_size, output_size or groups * hidden_size)
        self.groups, self.sizes, self.normalize = groups, sizes, normalize
        stops = [sum(sizes[: i + 1]) for i in range(groups)]
        self.bounds = [(stop - size, stop) for size, stop in zip(sizes, stops, strict=True)]
        # Not named weight_logits: `strata weights` reads that as one softmax over all layers.
        self.group_logits = nn.Parameter(torch.zeros(num_layers))
        self.set_combined_size(groups * hidden_size)

    def layer_weights(self) -> torch.Tensor:
        """The weights `[L+1]`, a softmax within each group (each group's slice sums to one), for plots."""
        return torch.cat([F.softmax(logits, dim=0) for logits in self.group_logits.split(self.sizes)])

    def combine(self, hidden_states):
        weights = self.layer_weights().split(self.sizes)
        sums = [
            weighted_sum(group_weights, hidden_states[start:stop], self.normalize)
            for group_weights, (start, stop) in zip(weights, self.bounds, strict=True)
        ]
        return torch.cat(sums, dim=-1)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, group_sizes={self.sizes}, normalize={self.normalize}"


@register("concat_projection")
class ConcatProjection(Concat):
    """Concatenation + projection as its own baseline: `concat` whose linear map to `output_size` is always there,
    even where the widths already match (one hidden state, or `output_size` = (L+1) x D)."""

    def set_combined_size(self, size: int) -> None:
        self.project = nn.Linear(size, self.output_size)


@register("layer_attention")
class LayerAttention(Interface):
    """A small transformer encoder over the layer axis (Shih & Harwath 2024): for each frame the sequence
    [CLS, h_0, ..., h_L], with a learnable CLS vector and learnable layer-position embeddings; the CLS output is
    the frame's feature, mapped to `output_size` (default D).

    Each state is layer-normed per frame (no affine: SSL layers differ in scale by orders of magnitude) and mapped
    by one shared linear layer to `attention_size` (4 heads, feed-forward 4x, pre-LN, no dropout), so the encoder
    sees [B*T, L+2, attention_size], not D-wide states. Frames never attend to one another: padding cannot leak.
    """

    HEADS = 4

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        attention_size: int = 128,
        attention_layers: int = 1,
        output_size: int | None = None,
    ):
        super().__init__(num_layers, hidden_size, output_size)
        if attention_size < 1 or attention_size % self.HEADS:
            raise ValueError(f"attention_size must be a positive multiple of {self.HEADS}; got {attention_size}")
        if attention_layers < 1:
            raise ValueError(f"attention_layers must be at least 1; got {attention_layers}")
        self.attention_size, self.attention_layers = attention_size, attention_layers
        self.input = nn.Linear(hidden_size, attention_size)
        self.cls = nn.Parameter(torch.randn(attention_size) * 0.02)
        self.positions = nn.Parameter(torch.randn(num_layers + 1, attention_size) * 0.02)  # CLS, then each layer
        layer = nn.TransformerEncoderLayer(
            attention_size, self.HEADS, 4 * attention_size, dropout=0.0, batch_first=True, norm_first=True
        )
        # The nested-tensor fast path only serves padded sequences, and these are all L+2 long.
        self.encoder = nn.TransformerEncoder(layer, attention_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(attention_size)  # pre-LN leaves the residual stream unnormalised
        self.set_combined_size(attention_size)

    def combine(self, hidden_states):
        # Project before stacking: a [B, T, L+1, attention_size] copy, never [B, T, L+1, D].
        x = torch.stack([self.input(F.layer_norm(h, h.shape[-1:])) for h in hidden_states], dim=2)
        batch, frames, layers, width = x.shape
        x = torch.cat([self.cls.expand(batch, frames, 1, width), x], dim=2) + self.positions
        x = self.encoder(x.reshape(batch * frames, layers + 1, width))  # [B*T, L+2, attention_size]
        return self.norm(x[:, 0]).reshape(batch, frames, width)

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, attention_size={self.attention_size}, "
            f"attention_layers={self.attention_layers}, heads={self.HEADS}"
        )
