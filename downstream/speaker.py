"""Speaker embeddings from SSL features: `features [B, T, D]`, `lengths [B]` -> `embeddings [B, E]`, and their scoring.

The extractors are x-vector (Snyder et al., "X-vectors: Robust DNN Embeddings for Speaker Recognition", ICASSP 2018)
and ECAPA-TDNN (Desplanques et al., Interspeech 2020). Both are mask-aware: padded frames are zeroed before every
convolution over time, so a convolution's zero padding at the end of a short utterance sees the same zeros inside a
padded batch as alone, and every mean, standard deviation and softmax over time runs over valid frames only. In eval
mode padding therefore never changes an embedding. In train mode BatchNorm's batch statistics include the padded
frames; speaker verification trains on equal-length crops, where there are none.

Internally the layers work in Conv1d layout, `x [B, C, T]` with `mask [B, 1, T]` (True on valid frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upstream.names import Registry, check_options

from .pooling import uniform_weights, valid_frames, weighted_mean_std

EXTRACTORS: Registry[SpeakerExtractor] = Registry("speaker extractor")
register = EXTRACTORS.register


def build_extractor(name: str, input_size: int, **options) -> SpeakerExtractor:
    """`input_size` is the frame width D; `options` are fields of the extractor's config (e.g. `channels=1024`)."""
    cls = EXTRACTORS[name]
    check_options(EXTRACTORS.kind, name, options, [field.name for field in dataclasses.fields(cls.config_class)])
    return cls(input_size, cls.config_class(**options))


def _positive(name: str, values: Sequence[int]) -> None:
    if any(value < 1 for value in values):
        raise ValueError(f"{name} must be positive; got {list(values)}")


def _check_layers(kernel_sizes: Sequence[int], dilations: Sequence[int]) -> None:
    if len(kernel_sizes) != len(dilations):
        raise ValueError(f"kernel_sizes {list(kernel_sizes)} and dilations {list(dilations)} differ in length")
    _positive("kernel_sizes", kernel_sizes)
    _positive("dilations", dilations)
    if any(kernel % 2 == 0 for kernel in kernel_sizes):
        # 'same' zero padding is symmetric only for odd kernels; an even one would shift frames in time.
        raise ValueError(f"kernel_sizes must be odd; got {list(kernel_sizes)}")


@dataclass
class XVectorConfig:
    """x-vector sizes (Snyder et al. 2018), the `xvector` extractor's options.

    Frame layers are TDNNs (Conv1d over time, ReLU, BatchNorm) with the contexts [t-2, t+2], {t-2, t, t+2},
    {t-3, t, t+3}, {t}, {t}; `channels` are the widths of all but the last, whose `stats_channels` outputs are pooled
    to mean and standard deviation; the embedding is the affine "segment6" layer on the pooled statistics."""

    kernel_sizes: tuple[int, ...] = (5, 3, 3, 1, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 1, 1)
    channels: tuple[int, ...] = (512, 512, 512, 512)
    stats_channels: int = 1500
    embedding_size: int = 512
    eps: float = 1e-5

    def __post_init__(self) -> None:
        self.kernel_sizes, self.dilations, self.channels = map(
            tuple, (self.kernel_sizes, self.dilations, self.channels)
        )
        _check_layers(self.kernel_sizes, self.dilations)
        if len(self.channels) != len(self.kernel_sizes) - 1:
            raise ValueError(
                f"channels {list(self.channels)} must give a width for each frame layer but the last "
                f"({len(self.kernel_sizes) - 1} of them); the last one has stats_channels"
            )
        _positive(
            "channels, stats_channels and embedding_size", (*self.channels, self.stats_channels, self.embedding_size)
        )


@dataclass
class EcapaConfig:
    """ECAPA-TDNN sizes (Desplanques et al. 2020), the `ecapa` extractor's options.

    C = `channels` (512, or 1024 for the large model). The first kernel size / dilation is layer 1's, the last the
    aggregation layer's, and each one between makes an SE-Res2Block (three in the paper), whose outputs are
    concatenated and aggregated by a 1x1 TDNN to `aggregation_channels` (None: blocks * C, the paper's 1536 for
    C = 512). The paper's C = 1024 model keeps 1536 there (14.7M parameters); blocks * C = 3072 makes it 20.8M."""

    channels: int = 512
    embedding_size: int = 192
    res2net_scale: int = 8
    se_channels: int = 128
    attention_channels: int = 128
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    aggregation_channels: int | None = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        # `aggregation_channels` stays None when unset (resolved by `aggregation_size`): a config parser that starts
        # from the default instance and overrides `channels` must not inherit the default C's 1536.
        self.kernel_sizes, self.dilations = tuple(self.kernel_sizes), tuple(self.dilations)
        _check_layers(self.kernel_sizes, self.dilations)
        if len(self.kernel_sizes) < 3:
            raise ValueError(
                f"ECAPA needs layer 1, at least one SE-Res2Block and the aggregation layer; "
                f"got {len(self.kernel_sizes)} kernel sizes"
            )
        _positive(
            "channels, embedding_size, se_channels, attention_channels and aggregation_channels",
            (self.channels, self.embedding_size, self.se_channels, self.attention_channels, self.aggregation_size),
        )
        if self.res2net_scale < 2 or self.channels % self.res2net_scale:
            raise ValueError(
                f"res2net_scale must be >= 2 and divide channels={self.channels}; got {self.res2net_scale}"
            )

    @property
    def aggregation_size(self) -> int:
        """`aggregation_channels`, or blocks * C when unset."""
        if self.aggregation_channels is None:
            return (len(self.kernel_sizes) - 2) * self.channels
        return self.aggregation_channels


class TdnnBlock(nn.Module):
    """Conv1d over time with 'same' zero padding -> ReLU -> BatchNorm: `x [B, C_in, T]` -> `[B, C_out, T]`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding=padding)
        self.activation = nn.ReLU()
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Padded frames hold what earlier biases and BatchNorm left there; zero them so they read as end padding.
        return self.norm(self.activation(self.conv(x.masked_fill(~mask, 0.0))))


def masked_mean_std(x: torch.Tensor, weights: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`x [B, C, T]`, `weights [B, C or 1, T]` summing to one over time, zero on padding -> mean, std `[B, C]`.

    The channel-first twin of `pooling.weighted_mean_std`, for ECAPA's per-channel attention weights.
    """
    mean = (weights * x).sum(2)
    variance = (weights * (x - mean[..., None]) ** 2).sum(2)
    return mean, variance.clamp(min=eps).sqrt()


class SpeakerExtractor(nn.Module):
    """`forward(features [B, T, D], lengths [B]) -> embeddings [B, embedding_size]`; subclasses implement `extract`."""

    name: str
    config_class: type

    def __init__(self, input_size: int, embedding_size: int) -> None:
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be positive; got {input_size}")
        self.input_size = input_size
        self.embedding_size = embedding_size

    def extract(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`x [B, D, T]` with padded frames zeroed, `mask [B, 1, T]` -> `[B, embedding_size]`."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if features.size(-1) != self.input_size:
            raise ValueError(f"{self.name} was built for {self.input_size}-d features, got {features.size(-1)}")
        features, mask = valid_frames(features, lengths)
        return self.extract(features.transpose(1, 2), mask[:, None, :])

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, embedding_size={self.embedding_size}"


@register("xvector")
class XVector(SpeakerExtractor):
    """x-vector: TDNN frame layers, statistics pooling (mean and std of the valid frames), affine segment6.

    The segment7 layer and the softmax of the paper are the classifier's business (see `downstream.losses`).
    """

    config_class = XVectorConfig

    def __init__(self, input_size: int, config: XVectorConfig | None = None) -> None:
        config = config or XVectorConfig()
        super().__init__(input_size, config.embedding_size)
        self.config = config
        widths = (input_size, *config.channels, config.stats_channels)
        self.frames = nn.ModuleList(
            TdnnBlock(widths[i], widths[i + 1], kernel, dilation)
            for i, (kernel, dilation) in enumerate(zip(config.kernel_sizes, config.dilations, strict=True))
        )
        self.segment6 = nn.Linear(2 * config.stats_channels, config.embedding_size)

    def extract(self, x, mask):
        for layer in self.frames:
            x = layer(x, mask)
        frames = x.transpose(1, 2).masked_fill(~mask.transpose(1, 2), 0.0)
        stats = weighted_mean_std(frames, uniform_weights(mask[:, 0], x.dtype), self.config.eps)
        return self.segment6(stats)


class Res2NetConv(nn.Module):
    """Res2Net dilated convolution (Gao et al., TPAMI 2019): `channels` split into `scale` chunks x_1..x_s;
    y_1 = x_1, y_2 = K_2(x_2), y_i = K_i(x_i + y_{i-1}), each K a TDNN block. Later chunks see ever wider contexts
    at the cost of one conv of width channels / scale each."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        self.width = channels // scale
        self.convs = nn.ModuleList(TdnnBlock(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        first, *chunks = x.split(self.width, dim=1)
        outputs = [first]
        for chunk, conv in zip(chunks, self.convs, strict=True):
            outputs.append(conv(chunk if len(outputs) == 1 else chunk + outputs[-1], mask))
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation (Hu et al. 2018) over time: a per-channel gate from the mean of the valid frames."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv1d(channels, se_channels, 1)
        self.excite = nn.Conv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A plain mean over T would dilute a short utterance's squeeze with its padding.
        mean = x.masked_fill(~mask, 0.0).sum(2, keepdim=True) / mask.sum(2, keepdim=True)
        return x * torch.sigmoid(self.excite(torch.relu(self.squeeze(mean))))


class SERes2Block(nn.Module):
    """1x1 TDNN -> Res2Net dilated conv -> 1x1 TDNN -> squeeze-excitation, plus the input (residual)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_channels: int) -> None:
        super().__init__()
        self.reduce = TdnnBlock(channels, channels)
        self.res2net = Res2NetConv(channels, kernel_size, dilation, scale)
        self.expand = TdnnBlock(channels, channels)
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.expand(self.res2net(self.reduce(x, mask), mask), mask), mask)


class ChannelAttentiveStatsPooling(nn.Module):
    """ECAPA's channel- and context-dependent attentive statistics pooling: `x [B, C, T]` -> `[B, 2C]`.

    Each frame is scored per channel from itself and the utterance's global mean and std (the context), the
    scores are softmax-normalised over valid frames per channel, and the weighted mean and std are returned.
    """

    def __init__(self, channels: int, attention_channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.attention = TdnnBlock(3 * channels, attention_channels)
        self.scores = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~mask, 0.0)
        mean, std = masked_mean_std(x, mask / mask.sum(2, keepdim=True), self.eps)
        frames = x.size(2)
        context = torch.cat([x, mean[..., None].expand(-1, -1, frames), std[..., None].expand(-1, -1, frames)], 1)
        scores = self.scores(torch.tanh(self.attention(context, mask)))
        # -inf is safe: every utterance has at least one valid frame (checked in `valid_frames`).
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=2)
        return torch.cat(masked_mean_std(x, weights, self.eps), dim=1)


@register("ecapa")
class EcapaTdnn(SpeakerExtractor):
    """ECAPA-TDNN: TDNN layer 1, SE-Res2Blocks, multi-layer feature aggregation (the blocks' outputs concatenated,
    then a 1x1 TDNN), attentive statistics pooling -> BatchNorm -> Linear -> BatchNorm (the embedding).

    With the default config and 80-d input it has the paper's ~6.2M parameters.
    """

    config_class = EcapaConfig

    def __init__(self, input_size: int, config: EcapaConfig | None = None) -> None:
        config = config or EcapaConfig()
        super().__init__(input_size, config.embedding_size)
        self.config = config
        channels = config.channels
        self.layer1 = TdnnBlock(input_size, channels, config.kernel_sizes[0], config.dilations[0])
        self.blocks = nn.ModuleList(
            SERes2Block(channels, kernel, dilation, config.res2net_scale, config.se_channels)
            for kernel, dilation in zip(config.kernel_sizes[1:-1], config.dilations[1:-1], strict=True)
        )
        aggregated = config.aggregation_size
        self.aggregation = TdnnBlock(
            len(self.blocks) * channels, aggregated, config.kernel_sizes[-1], config.dilations[-1]
        )
        self.pooling = ChannelAttentiveStatsPooling(aggregated, config.attention_channels, config.eps)
        self.pooling_norm = nn.BatchNorm1d(2 * aggregated)
        self.embedding = nn.Linear(2 * aggregated, config.embedding_size)
        self.embedding_norm = nn.BatchNorm1d(config.embedding_size)

    def extract(self, x, mask):
        x = self.layer1(x, mask)
        outputs = []
        for block in self.blocks:
            x = block(x, mask)
            outputs.append(x)
        x = self.aggregation(torch.cat(outputs, dim=1), mask)
        return self.embedding_norm(self.embedding(self.pooling_norm(self.pooling(x, mask))))


def length_normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale each row `[..., E]` to unit L2 norm (a zero row stays zero)."""
    return F.normalize(x, dim=-1)


def cosine_scores(enroll: torch.Tensor, test: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine score of each trial: `enroll [N, E]`, `test [N, E]` -> `[N]`.

    `mean [E]`, typically of the training-set embeddings, is subtracted first: centring removes the direction all
    embeddings share, which otherwise inflates every score.
    """
    if enroll.dim() != 2 or enroll.shape != test.shape:
        raise ValueError(
            f"expected enroll and test [N, E] of one shape; got {tuple(enroll.shape)}, {tuple(test.shape)}"
        )
    if mean is not None:
        if mean.shape != enroll.shape[1:]:
            raise ValueError(f"mean has shape {tuple(mean.shape)}; expected ({enroll.size(1)},)")
        enroll, test = enroll - mean, test - mean
    return (length_normalize(enroll) * length_normalize(test)).sum(-1)
