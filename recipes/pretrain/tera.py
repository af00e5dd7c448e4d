"""TeraPretrainModule: TERA's reconstruction of altered log-mel frames (Liu, Li and Lee, IEEE/ACM TASLP 2021),
trained by Lightning; `fit` ends by writing a `tera:` upstream folder."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from upstream.names import as_config
from upstream.surface import HOP, WINDOW
from upstream.tera import TeraConfig, TeraModel

from .alteration import AlterationConfig, alter, reconstruction_loss
from .module import EncoderSize, PretrainingModule, write_pretrain_record

SIZES: dict[str, TeraConfig] = {
    "tiny": TeraConfig(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=256),  # minutes on a CPU
    "base": TeraConfig(),  # the paper's base: 3 x 768, 12 heads, 3072 feed-forward
}
# EncoderSize speaks transformers' names (shared with HuBERT pre-training); TeraConfig's own names.
ENCODER_FIELDS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
}


class TeraPretrainModule(PretrainingModule):
    """TERA pre-training: each batch's 80-d log-mel (CMVN per utterance) is altered in time, frequency and
    magnitude (`alteration`; Mockingjay: `frequency_fraction 0`, `noise_prob 0`), the encoder reads the altered
    copy and its reconstruction head must give back the original, L1 on the altered positions. `encoder` changes
    the transformer's sizes from those of `size` (`--model.encoder.num_hidden_layers 6`). Logs `train/loss` and
    `valid/loss` (validation alters with a fixed seed per batch, so epochs compare); `fit` ends by writing
    `<run>/upstream/`, loadable as `tera:<run>/upstream`."""

    source_prefix = "tera"  # the upstream source that loads what `save_upstream` writes
    min_samples = WINDOW  # the shortest clip that makes one frame (linked to the data module)
    frame_rate = 16000 / HOP  # frames per second (linked: long clips are cropped on this grid)

    def __init__(
        self,
        size: str = "tiny",
        encoder: EncoderSize = EncoderSize(),  # noqa: B008 -- frozen, so one shared default is safe
        alteration: AlterationConfig = AlterationConfig(),  # noqa: B008 -- frozen
        dropout: float = 0.1,
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)} (or change sizes with `encoder`)")
        encoder = as_config(EncoderSize, encoder, "pre-training", "encoder")
        self.alteration = as_config(AlterationConfig, alteration, "pre-training", "alteration")
        self.save_hyperparameters()
        # plain, so checkpoints load with weights_only=True
        self.hparams["encoder"], self.hparams["alteration"] = asdict(encoder), asdict(self.alteration)
        sizes = {ENCODER_FIELDS[name]: value for name, value in encoder.overrides().items()}
        self.model = TeraModel(replace(SIZES[size], dropout=dropout, **sizes))
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.skip_nonfinite_loss = skip_nonfinite_loss

    def _step(self, batch: dict[str, Any], stage: str, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            features, lengths = self.model.features(batch["wavs"], batch["wav_lengths"])
            altered = alter(features, lengths, self.alteration, generator)
        hidden = self.model.encode(altered.altered, lengths)[-1]
        loss = reconstruction_loss(self.model.reconstruct(hidden), features, altered.loss_mask)
        size = len(batch["wav_lengths"])
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=stage == "train", batch_size=size,
                 sync_dist=stage != "train")  # fmt: skip
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        self._step(batch, "valid", torch.Generator().manual_seed(batch_index))

    def save_upstream(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """The model (encoder and reconstruction head) as a TERA folder that `build_upstream("tera:<folder>")`
        loads, plus `pretrain.json` recording how it was trained."""
        return write_pretrain_record(self.model.save(folder), self, extra)
