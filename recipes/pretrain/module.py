"""HubertPretrainModule: masked prediction of cluster ids with a transformers HuBERT, trained by Lightning."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from upstream import compat
from upstream.base import lengths_to_mask, prepare_waveforms
from upstream.hf import TINY_CONFIG
from upstream.names import as_config

from ..nonfinite import checked_loss
from ..optim import with_linear_warmup
from .masking import span_mask

# Model sizes by name (HubertConfig fields); `EncoderSize` overrides the transformer's on top.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(TINY_CONFIG),  # 4 x 64, layer-norm CNN: minutes on a CPU
    "base": {},  # HubertConfig's defaults: HuBERT Base, 12 x 768
}


@dataclass(frozen=True)
class EncoderSize:
    """Transformer sizes over the named `size` (unset: the size's own).

    `hidden_size` (divisible by `num_attention_heads`), `num_hidden_layers` and the feed-forward
    `intermediate_size`, as transformers' HubertConfig names them."""

    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None

    def overrides(self) -> dict[str, int]:
        """The HubertConfig fields that are set."""
        return {key: value for key, value in asdict(self).items() if value is not None}


class PretrainingModule(L.LightningModule):
    """What strata's pre-training modules (HuBERT, TERA, distillation) share around their own `_step(batch, stage)`
    -> loss: the training step with the non-finite loss check (`skip_nonfinite_loss`), validation, AdamW with linear
    warm-up over the parameters that train, and `SaveUpstream`, which calls their `save_upstream` at the end of fit
    and names the `source_prefix` that loads it."""

    source_prefix = "hf"
    lr: float
    weight_decay: float
    warmup_steps: int
    skip_nonfinite_loss: bool

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        raise NotImplementedError

    def save_upstream(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor | None:
        return checked_loss(self, self._step(batch, "train"), batch["ids"], self.skip_nonfinite_loss,
                            "--model.skip_nonfinite_loss true")  # fmt: skip

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        self._step(batch, "valid")

    def configure_optimizers(self) -> dict[str, Any]:
        trained = [p for p in self.parameters() if p.requires_grad]  # a frozen teacher or CNN has none
        optimizer = torch.optim.AdamW(trained, lr=self.lr, weight_decay=self.weight_decay)
        return with_linear_warmup(optimizer, self.warmup_steps)

    def configure_callbacks(self) -> list[L.Callback]:
        return [SaveUpstream()]


class HubertPretrainModule(PretrainingModule):
    """HuBERT pre-training (Hsu et al. 2021): the CNN features of `mask_prob` x `mask_length` spans are replaced by a
    learnt embedding, and the transformer output of every masked frame must predict that frame's cluster id: a
    projection to `final_dim`, cosine similarity with one learnt embedding per cluster over `logit_temperature`,
    cross-entropy. `unmasked_weight` adds the same loss on unmasked frames (0 in the paper's best setting).
    `encoder` changes the transformer's sizes from those of `size` (`--model.encoder.num_hidden_layers 6`).
    Logs `train/loss` and the masked-prediction accuracy `train/accuracy_masked`; `fit` ends by writing the
    encoder to `<run>/upstream/` (transformers format, loadable as `hf:<run>/upstream`)."""

    source_prefix = "hf"  # the upstream source that loads what `save_upstream` writes

    def __init__(
        self,
        size: str = "tiny",
        encoder: EncoderSize = EncoderSize(),  # noqa: B008 -- frozen, so one shared default is safe
        num_clusters: int = 100,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        unmasked_weight: float = 0.0,
        final_dim: int = 256,
        logit_temperature: float = 0.1,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)} (or change sizes with `encoder`)")
        encoder = as_config(EncoderSize, encoder, "pre-training", "encoder")
        self.save_hyperparameters()
        self.hparams["encoder"] = asdict(encoder)  # plain, so checkpoints load with weights_only=True
        # The model keeps its learnt mask embedding only with mask_time_prob > 0; our span masks are always passed in
        # (`mask_time_indices`), so transformers never draws its own. No LayerDrop in so short a training.
        fields = {**SIZES[size], "mask_time_prob": mask_prob, "mask_time_length": mask_length,
                  "mask_feature_prob": 0.0, "layerdrop": 0.0, **encoder.overrides()}  # fmt: skip
        self.hubert = HubertModel(HubertConfig(**fields))
        self.normalize = self.hubert.config.feat_extract_norm == "layer"  # as HFUpstream reads such a model
        self.projection = nn.Linear(self.hubert.config.hidden_size, final_dim)
        self.codewords = nn.Parameter(torch.randn(num_clusters, final_dim))
        self.num_clusters, self.mask_prob, self.mask_length = num_clusters, mask_prob, mask_length
        self.unmasked_weight, self.logit_temperature = unmasked_weight, logit_temperature
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.skip_nonfinite_loss = skip_nonfinite_loss

    @property
    def frame_rate(self) -> float:
        """Frames per second: the sample rate over the CNN's total stride (50 for HuBERT's 320)."""
        return 16000 / math.prod(self.hubert.config.conv_stride)

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return compat.feat_extract_output_lengths(self.hubert, wav_lengths)

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`wavs [B, S]` -> cluster logits `[B, T, K]`; `mask [B, T]` marks the frames to hide."""
        attention = lengths_to_mask(wav_lengths, wavs.size(1))
        hidden = self.hubert(
            prepare_waveforms(wavs, wav_lengths, self.normalize),
            attention_mask=attention.long() if self.normalize else None,
            mask_time_indices=mask,
        ).last_hidden_state
        if mask is not None and hidden.size(1) != mask.size(1):
            raise RuntimeError(f"{hidden.size(1)} frames from the model but a mask of {mask.size(1)}")
        projected = F.normalize(self.projection(hidden), dim=-1)
        return projected @ F.normalize(self.codewords, dim=-1).T / self.logit_temperature

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        frames = self.frame_lengths(batch["wav_lengths"])
        num_frames = int(frames.max())
        mask = span_mask(frames.cpu(), num_frames, self.mask_prob, self.mask_length).to(self.device)
        logits = self(batch["wavs"], batch["wav_lengths"], mask)
        targets = batch["targets"][:, :num_frames]
        valid = (torch.arange(num_frames, device=self.device)[None] < frames[:, None]) & (targets >= 0)
        masked, unmasked = valid & mask, valid & ~mask
        loss = F.cross_entropy(logits[masked], targets[masked])
        if self.unmasked_weight > 0 and unmasked.any():
            loss = loss + self.unmasked_weight * F.cross_entropy(logits[unmasked], targets[unmasked])
        accuracy = (logits[masked].argmax(-1) == targets[masked]).float().mean()
        size = len(batch["ids"])
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=stage == "train", batch_size=size)
        self.log(f"{stage}/accuracy_masked", accuracy, prog_bar=True, on_epoch=True, batch_size=size, sync_dist=True)
        return loss

    def save_upstream(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """The encoder as a transformers directory (weights, config, feature-extractor settings) that
        `build_upstream("hf:<folder>")` loads, plus `pretrain.json` recording how it was trained."""
        folder = Path(folder)
        self.hubert.save_pretrained(folder)
        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=self.normalize,
            return_attention_mask=self.normalize,
        ).save_pretrained(folder)  # fmt: skip
        return write_pretrain_record(folder, self, extra)


def write_pretrain_record(folder: Path, module: L.LightningModule, extra: dict[str, Any] | None) -> Path:
    """`<folder>/pretrain.json`: the module's hyper-parameters, its global step and `extra` (the data's description),
    so a pre-trained upstream says how it was made."""
    record = {"hyper_parameters": dict(module.hparams), "global_step": module.global_step, **(extra or {})}
    (folder / "pretrain.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return folder


class SaveUpstream(L.Callback):
    """At the end of `fit`, the encoder into `<run>/upstream/` with the data module's description of its targets
    (`describe()`) in `pretrain.json`: the one place that joins the module and the data module. Any pre-training
    module serves that has `save_upstream(folder, extra)` and the `source_prefix` that loads the folder."""

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            datamodule = getattr(trainer, "datamodule", None)
            extra = {"targets": getattr(datamodule, "describe", lambda: {})()}
            folder = module.save_upstream(Path(trainer.default_root_dir) / "upstream", extra)
            print(f"wrote the pre-trained upstream to {folder}: use it as --upstream {module.source_prefix}:{folder}")
