"""TERA (Liu, Li and Lee, "TERA: Self-Supervised Learning of Transformer Encoder Representation for Speech",
IEEE/ACM TASLP 2021): a post-LN transformer encoder over 80-d log-mel frames, pre-trained by reconstructing altered
input (`recipes.pretrain.tera`), and `TeraUpstream`, its encoder as an upstream (`build_upstream("tera:<dir>")`).

A TERA folder holds `config.json` (`{"model_type": "strata-tera", "config": {...}}`) and `model.safetensors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .base import Upstream, UpstreamLoadError, conv_output_lengths, lengths_to_mask
from .names import as_config
from .surface import HOP, WINDOW, log_mel, mel_spectrogram, utterance_cmvn

MODEL_TYPE = "strata-tera"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass(frozen=True)
class TeraConfig:
    """Sizes of a TERA model; the defaults are the paper's base (3 x 768, 12 heads)."""

    num_mel_bins: int = 80
    hidden_size: int = 768
    num_layers: int = 3
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if min(self.num_mel_bins, self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) < 1:
            raise ValueError(f"every TERA size must be positive: {self}")


def sinusoidal_positions(frames: int, size: int, device: torch.device | None = None) -> torch.Tensor:
    """`[frames, size]` sine/cosine position codes (Vaswani et al. 2017), made for any length: no position limit."""
    position = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, size, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / size))
    codes = torch.zeros(frames, size, device=device)
    codes[:, 0::2] = torch.sin(position * rates)
    codes[:, 1::2] = torch.cos(position * rates[: size // 2])
    return codes


class TeraModel(nn.Module):
    """Log-mel + per-utterance CMVN -> linear input projection + positions, layer norm -> `num_layers` post-LN
    transformer layers; `head` (only with `reconstruction_head`) maps the top layer back to mel bins."""

    def __init__(self, config: TeraConfig, reconstruction_head: bool = True) -> None:
        super().__init__()
        self.config = config
        self.mel = mel_spectrogram(config.num_mel_bins)
        self.projection = nn.Linear(config.num_mel_bins, config.hidden_size)
        self.input_norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.hidden_size, config.num_heads, config.intermediate_size, config.dropout, "gelu", batch_first=True
            )
            for _ in range(config.num_layers)
        )
        self.head = (
            nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size),
                nn.GELU(),
                nn.LayerNorm(config.hidden_size),
                nn.Linear(config.hidden_size, config.num_mel_bins),
            )
            if reconstruction_head
            else None
        )

    @staticmethod
    def frame_lengths(wav_lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(wav_lengths, [(WINDOW, HOP)])

    def features(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`wavs [B, S]` -> (log-mel `[B, T, F]` normalised per utterance over its valid frames, padding 0;
        `lengths [B]`). What the encoder reads and what pre-training reconstructs."""
        lengths = self.frame_lengths(wav_lengths)
        return utterance_cmvn(log_mel(self.mel, wavs.float()), lengths), lengths

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """`features [B, T, F]` (altered or not) -> L+1 states `[B, T, D]`: the input representation, then each
        layer's output; padded frames are masked out of attention and zeroed."""
        valid = lengths_to_mask(lengths, features.size(1))
        hidden = self.projection(features) + sinusoidal_positions(features.size(1), self.config.hidden_size,
                                                                   features.device)  # fmt: skip
        hidden = self.dropout(self.input_norm(hidden)) * valid[..., None]
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden, src_key_padding_mask=~valid) * valid[..., None]
            states.append(hidden)
        return states

    def reconstruct(self, hidden: torch.Tensor) -> torch.Tensor:
        """Top-layer states `[B, T, D]` -> predicted features `[B, T, F]` (pre-training only)."""
        if self.head is None:
            raise RuntimeError("this TeraModel was built without its reconstruction head")
        return self.head(hidden)

    def weights(self) -> dict[str, torch.Tensor]:
        """The learnt tensors: the mel filters and window are rebuilt from the config, so they are not saved."""
        return {name: value for name, value in self.state_dict().items() if not name.startswith("mel.")}

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"model_type": MODEL_TYPE, "config": asdict(self.config)}
        (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.weights().items()}, str(folder / WEIGHTS_FILE))
        return folder

    @classmethod
    def load(cls, folder: str | Path, reconstruction_head: bool = False) -> TeraModel:
        """A saved TERA folder; without `reconstruction_head` the head's weights are left out (an upstream's use)."""
        folder = Path(folder)
        model = cls(read_config(folder), reconstruction_head)
        weights = _read_weights(folder / WEIGHTS_FILE)
        if not reconstruction_head:
            weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        expected = model.weights()
        missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
        if missing or unexpected or wrong:
            raise UpstreamLoadError(
                f"{folder / WEIGHTS_FILE} does not fit its {CONFIG_FILE}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, wrong shape {wrong[:5]}"
            )
        model.load_state_dict({**model.state_dict(), **weights})
        return model


def read_config(folder: Path) -> TeraConfig:
    if not folder.is_dir():
        raise UpstreamLoadError(f"TERA folder {folder} does not exist (write one with `strata pretrain`)")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UpstreamLoadError(f"TERA folder {folder} has no {CONFIG_FILE}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UpstreamLoadError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(record, dict) or record.get("model_type") != MODEL_TYPE:
        found = record.get("model_type") if isinstance(record, dict) else None
        raise UpstreamLoadError(f"{path} has model_type {found!r}, not {MODEL_TYPE!r}: not a TERA folder")
    try:
        return as_config(TeraConfig, record.get("config"), "TERA", str(path))
    except (TypeError, ValueError) as error:
        raise UpstreamLoadError(f"{path}: bad TERA config ({error})") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UpstreamLoadError(f"TERA folder {path.parent} has no {path.name} (only safetensors weights are read)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UpstreamLoadError(f"{path} is not a readable safetensors file ({error})") from None


class TeraUpstream(Upstream):
    """TERA's encoder: hidden state 0 is the input representation (projected log-mel + positions), state i the
    output of layer i, every 10 ms. The mel front-end has no weights: it is the "CNN" side of `layer_groups`.
    Padding never changes a valid frame (uncentred frames, CMVN over valid frames, masked attention)."""

    downsample_rate = HOP
    min_samples = WINDOW

    def __init__(self, model: TeraModel) -> None:
        super().__init__()
        self.model = model
        self.sample_rate = 16000
        self.num_layers = model.config.num_layers + 1
        self.hidden_size = model.config.hidden_size
        self.set_trainable("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return self.model.frame_lengths(wav_lengths)

    def hidden_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[torch.Tensor]:
        return self.model.encode(*self.model.features(wavs, wav_lengths))

    def layer_groups(self) -> tuple[list[nn.Module], list[nn.Module]]:
        model = self.model
        return [model.mel], [model.projection, model.input_norm, *model.layers]

    def transformer_layers(self) -> list[nn.Module]:
        return list(self.model.layers)


def build_tera_upstream(source: str) -> TeraUpstream:
    """`tera:<folder>`: a folder `strata pretrain` wrote with a TERA objective."""
    return TeraUpstream(TeraModel.load(source))
