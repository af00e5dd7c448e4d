"""CTC speech recognition on SSL features: `features [B, T, D]`, `lengths [B]` -> frame-wise token log-probabilities.

The head is SUPERB's ASR probe (Yang et al., "SUPERB: Speech processing Universal PERformance Benchmark",
Interspeech 2021): a 2-layer BiLSTM of 1024 units trained with CTC (Graves et al., ICML 2006) on a character or
subword vocabulary. Conventions shared by the head, the decoders and the tasks:

- The CTC blank is token id 0 (`BLANK_ID`); a vocabulary's other tokens follow it.
- One output frame per input frame: `CTCOutput.lengths` equal the input lengths.
- `SpecAugment` (Park et al., Interspeech 2019) masks bands of the SSL features, not of a spectrogram.
- `greedy_decode` needs nothing beyond torch; `BeamSearchDecoder` wraps torchaudio's flashlight decoder, which needs
  the optional package `flashlight-text`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upstream.base import lengths_to_mask

BLANK_ID = 0

# Log-probability given to every non-blank token on padded frames: a row that says "certainly blank". Finite, so
# 0 * log p and sums over rows stay finite (-inf would make NaN), and it survives float16 (max 65504).
PADDING_LOG_PROB = -1e4


def check_lengths(lengths: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """`lengths [B]` as a long tensor, each in [1, frames]; an empty utterance cannot be packed nor aligned."""
    lengths = torch.as_tensor(lengths).long()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}; expected ({batch},)")
    empty = (lengths < 1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"utterance(s) at batch index {empty} have no frames; drop them before the CTC head")
    if batch and int(lengths.max()) > frames:
        raise ValueError(f"a length ({int(lengths.max())}) exceeds the padded number of frames {frames}")
    return lengths


@dataclass
class CTCHeadConfig:
    """CTC head sizes; the defaults are SUPERB's ASR probe (2 x 1024 BiLSTM, dropout 0.2).

    `projection_size` > 0 adds a frame-wise Linear from the feature width D to that size before the LSTM (0: none).
    `dropout` follows every LSTM layer, the last one included, as SUPERB applies it per layer.
    """

    projection_size: int = 0
    hidden_size: int = 1024
    num_layers: int = 2
    dropout: float = 0.2
    bidirectional: bool = True

    def __post_init__(self) -> None:
        if self.projection_size < 0:
            raise ValueError(f"projection_size must be 0 (no projection) or positive; got {self.projection_size}")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(
                f"hidden_size and num_layers must be positive; got {self.hidden_size} and {self.num_layers}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")


@dataclass
class CTCOutput:
    """`log_probs [B, T, V]`: log-softmax over the vocabulary (blank = id 0); `lengths [B]`: valid frames.

    Padded frames hold a harmless "certainly blank" row (0 for the blank, `PADDING_LOG_PROB` elsewhere): a decoder
    that forgot the lengths emits nothing from them, and the CTC loss never reads them when given `lengths`.
    """

    log_probs: torch.Tensor
    lengths: torch.Tensor


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`x [B, T, D]` with each utterance's valid frames reversed in place and its padding left where it is."""
    frames = torch.arange(x.size(1), device=x.device)[None]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(frames < lengths, lengths - 1 - frames, frames)
    return x.gather(1, index[..., None].expand_as(x))


class CTCHead(nn.Module):
    """`forward(features [B, T, D], lengths [B]) -> CTCOutput` with `log_probs [B, T, vocab_size]`.

    Each layer runs one LSTM forward over the padded batch and one over the batch with every utterance's valid
    frames reversed (`reverse_valid`), so both directions start at a valid frame and padding, which only ever
    follows, never reaches a valid output: in eval mode a padded batch gives each utterance the same output as
    running it alone. This is what packed sequences give, at the speed of unpacked ones (packed LSTMs are about
    five times slower on a CPU).
    """

    def __init__(self, input_size: int, vocab_size: int, config: CTCHeadConfig | None = None) -> None:
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be positive; got {input_size}")
        if vocab_size < 2:
            raise ValueError(
                f"vocab_size must count the blank (id {BLANK_ID}) and at least one token; got {vocab_size}"
            )
        self.config = config = config or CTCHeadConfig()
        self.input_size, self.vocab_size, self.blank = input_size, vocab_size, BLANK_ID
        self.projection = nn.Linear(input_size, config.projection_size) if config.projection_size else None
        directions = 2 if config.bidirectional else 1
        size = config.projection_size or input_size
        self.layers = nn.ModuleList()
        for _ in range(config.num_layers):
            self.layers.append(
                nn.ModuleList(nn.LSTM(size, config.hidden_size, batch_first=True) for _ in range(directions))
            )
            size = config.hidden_size * directions
        # Dropout after every layer, the last included, as SUPERB applies it.
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(size, vocab_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> CTCOutput:
        batch, frames, size = features.shape
        if size != self.input_size:
            raise ValueError(f"the CTC head was built for {self.input_size}-d features, got {size}")
        lengths = check_lengths(lengths, batch, frames).to(features.device)
        padding = ~lengths_to_mask(lengths, frames)
        x = self.projection(features) if self.projection is not None else features
        for directions in self.layers:
            outputs = [directions[0](x)[0]]
            if len(directions) == 2:
                outputs.append(reverse_valid(directions[1](reverse_valid(x, lengths))[0], lengths))
            x = self.dropout(torch.cat(outputs, dim=-1).masked_fill(padding[..., None], 0.0))
        log_probs = F.log_softmax(self.output(x), dim=-1)
        blank_row = torch.full((self.vocab_size,), PADDING_LOG_PROB, dtype=log_probs.dtype, device=log_probs.device)
        blank_row[self.blank] = 0.0
        log_probs = torch.where(padding[..., None], blank_row, log_probs)
        return CTCOutput(log_probs=log_probs, lengths=lengths)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, vocab_size={self.vocab_size}, blank={self.blank}"


class SpecAugment(nn.Module):
    """SpecAugment's time and frequency masking (Park et al. 2019) on SSL features `[B, T, D]`, training mode only.

    Each utterance gets `time_masks` spans of w ~ U{0..floor(time_width * length)} consecutive frames inside its
    own valid length and `feature_masks` bands of f ~ U{0..floor(feature_width * D)} feature dimensions, at
    uniformly drawn starts; masks may overlap. Both widths are fractions, so one setting serves 80-d filterbanks
    and 768- or 1024-d SSL layers alike (SpecAugment's F = 27 of 80 mel bins is 0.34 of D; 0.1 is milder).
    Masked values become 0: the mean of standardised features (`FeatureNorm`) and of a layer-normed frame; put
    features far from zero (raw filterbanks) through `FeatureNorm` first. Padded frames are never touched. In eval
    mode it is the identity. The draws come from torch's global CPU generator, whatever the device, so
    `seed_everything` makes them reproducible and the same on CPU and GPU.
    """

    def __init__(
        self, time_masks: int = 2, time_width: float = 0.05, feature_masks: int = 2, feature_width: float = 0.1
    ) -> None:
        super().__init__()
        if time_masks < 0 or feature_masks < 0:
            raise ValueError(f"time_masks and feature_masks must be >= 0; got {time_masks} and {feature_masks}")
        if not 0.0 <= time_width <= 1.0:
            raise ValueError(f"time_width is a fraction of each utterance's length, in [0, 1]; got {time_width}")
        if not 0.0 <= feature_width <= 1.0:
            raise ValueError(f"feature_width is a fraction of the feature width D, in [0, 1]; got {feature_width}")
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width

    @staticmethod
    def spans(count: int, max_width: torch.Tensor, size: torch.Tensor, positions: int) -> torch.Tensor:
        """`[B, positions]` True inside `count` random spans per row, each within [0, size) and at most `max_width`."""
        batch = size.numel()
        draws = torch.rand(batch, count, 2)
        width = (draws[..., 0] * (max_width[:, None] + 1)).floor().long().clamp(max=max_width[:, None])
        start = (draws[..., 1] * (size[:, None] - width + 1)).floor().long().clamp(max=(size[:, None] - width))
        index = torch.arange(positions)
        inside = (index >= start[..., None]) & (index < (start + width)[..., None])  # [B, count, positions]
        return inside.any(1)

    def masks(self, lengths: torch.Tensor, frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `[B, T]` time and `[B, D]` feature masks (True = masked) `forward` applies, on the CPU."""
        lengths = lengths.cpu().long()
        batch = lengths.numel()
        time = self.spans(self.time_masks, (self.time_width * lengths).floor().long(), lengths, frames)
        band = int(self.feature_width * size)
        features = self.spans(self.feature_masks, torch.full((batch,), band), torch.full((batch,), size), size)
        return time, features

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        batch, frames, size = features.shape
        lengths = check_lengths(lengths, batch, frames)
        time, bands = (mask.to(features.device) for mask in self.masks(lengths, frames, size))
        valid = lengths_to_mask(lengths.to(features.device), frames)
        masked = (time[:, :, None] | bands[:, None, :]) & valid[:, :, None]
        return features.masked_fill(masked, 0.0)

    def extra_repr(self) -> str:
        return (
            f"time_masks={self.time_masks}, time_width={self.time_width}, "
            f"feature_masks={self.feature_masks}, feature_width={self.feature_width}"
        )


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK_ID) -> list[list[int]]:
    """Best-path CTC decoding: the argmax token of every valid frame, repeats collapsed, then blanks dropped.

    A blank between two equal tokens keeps both ("a - a" -> [a, a]); padded frames are ignored.
    """
    batch, frames, _ = log_probs.shape
    lengths = check_lengths(lengths, batch, frames).to(log_probs.device)
    best = log_probs.argmax(-1)
    new = torch.ones_like(best, dtype=torch.bool)
    new[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = (new & (best != blank) & lengths_to_mask(lengths, frames)).cpu()
    best = best.cpu()
    return [best[b][keep[b]].tolist() for b in range(batch)]


FLASHLIGHT_HELP = (
    "beam search decoding needs the optional package flashlight-text (torchaudio's CTC decoder): "
    "pip install flashlight-text (and kenlm for an n-gram LM); greedy_decode works without it"
)


class BeamSearchDecoder:
    """CTC prefix beam search with an optional KenLM n-gram, via `torchaudio.models.decoder.ctc_decoder`.

    `tokens` are the vocabulary in id order, `tokens[0]` the blank. Without `lexicon` the search is lexicon-free
    over tokens (an `lm` must then be a token-level KenLM); with a lexicon file (`word token token ...` per line)
    hypotheses are restricted to its words and `lm` is a word-level KenLM. `sil_token` is the word-boundary token
    the decoder inserts between words and at both ends: sentencepiece's "▁" (the default) for a character or BPE
    vocabulary whose pieces include a bare "▁"; None uses the blank token, for vocabularies without one. The
    boundaries the decoder adds at both ends of an utterance are dropped from the ids `decode` returns (a "▁"
    emitted on the first frame merges with the leading one and goes too; sentencepiece decodes the same text).
    Decoding runs on the CPU in float32.
    """

    def __init__(
        self,
        tokens: list[str],
        beam_size: int = 50,
        lm: str | None = None,
        lexicon: str | None = None,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        blank_token: str = "<blank>",
        sil_token: str | None = "▁",
    ) -> None:
        tokens = list(tokens)
        if not tokens or tokens[0] != blank_token:
            first = repr(tokens[0]) if tokens else "nothing"
            raise ValueError(f"tokens[0] must be the blank token {blank_token!r} (CTC blank = id 0); got {first}")
        repeated = sorted({token for token in tokens if tokens.count(token) > 1})
        if repeated:
            raise ValueError(f"token(s) {repeated} appear more than once in the vocabulary")
        sil_token = blank_token if sil_token is None else sil_token
        if sil_token not in tokens:
            raise ValueError(
                f"sil_token {sil_token!r} is not in the vocabulary; pass the word-boundary token, or None to use the "
                "blank"
            )
        if beam_size < 1:
            raise ValueError(f"beam_size must be positive; got {beam_size}")
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as error:  # torchaudio wraps the missing flashlight in a RuntimeError
            raise ImportError(FLASHLIGHT_HELP) from error
        self.tokens, self.blank, self.sil = tokens, BLANK_ID, tokens.index(sil_token)
        self.decoder = ctc_decoder(
            lexicon=lexicon,
            tokens=tokens,
            lm=lm,
            beam_size=beam_size,
            lm_weight=lm_weight,
            word_score=word_score,
            blank_token=blank_token,
            sil_token=sil_token,
        )

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """`log_probs [B, T, V]`, `lengths [B]` -> the token ids of each utterance's best hypothesis."""
        batch, frames, size = log_probs.shape
        if size != len(self.tokens):
            raise ValueError(f"log_probs have {size} tokens; the decoder's vocabulary has {len(self.tokens)}")
        lengths = check_lengths(lengths, batch, frames).cpu()
        emissions = log_probs.detach().float().cpu().contiguous()
        results = []
        for hypotheses, length in zip(self.decoder(emissions, lengths), lengths.tolist(), strict=True):
            if not hypotheses:
                results.append([])
                continue
            best = hypotheses[0]
            # flashlight's path has a boundary state before frame 0 (step 0) and after the last frame (step T + 1).
            inside = [
                token
                for token, step in zip(best.tokens.tolist(), best.timesteps.tolist(), strict=True)
                if 1 <= step <= length
            ]
            results.append(inside)
        return results


class AsrHead(nn.Module):
    """SpecAugment (training only) then the CTC head: `features [B, T, D]`, `lengths [B]` -> `CTCOutput`."""

    def __init__(self, augment: SpecAugment, ctc: CTCHead, blank_id: int = 0) -> None:
        super().__init__()
        self.augment = augment
        self.ctc = ctc
        self.blank_id = blank_id

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> CTCOutput:
        return self.ctc(self.augment(features, lengths), lengths)

    def loss(self, outputs: CTCOutput, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """CTC loss of `outputs` against `targets = (labels [B, U] padded, label_lengths [B])`, averaged over
        the batch after dividing each utterance's loss by its label length (torch's `reduction="mean"`)."""
        labels, label_lengths = targets
        # zero_infinity: an utterance CTC cannot align (kept in valid/test) adds nothing instead of inf.
        return nn.functional.ctc_loss(
            outputs.log_probs.transpose(0, 1).float(),
            labels,
            outputs.lengths,
            label_lengths,
            blank=self.blank_id,
            reduction="mean",
            zero_infinity=True,
        )
