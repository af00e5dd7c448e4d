"""Self-supervised pre-training (`strata pretrain`), one objective at a time (`objectives.OBJECTIVES`):
- hubert (Hsu et al., "HuBERT", IEEE/ACM TASLP 2021): masked prediction of k-means cluster ids of MFCCs (iteration
  1) or of a previous model's layer (iteration 2); writes a transformers directory that `--upstream hf:<dir>` loads.
  `targets` (frame features, codebook, cluster ids), `masking` (span masks), `module` (the LightningModule and
  `SaveUpstream`), `data` (`PretrainDataModule`: audio and each utterance's targets);
- tera (Liu, Li and Lee, "TERA", IEEE/ACM TASLP 2021; Mockingjay is its time alteration alone): reconstruction of
  altered log-mel frames; writes a folder that `--upstream tera:<dir>` loads. `alteration` (the alterations and the
  L1 loss), `tera` (the LightningModule), `data` (`AudioPretrainDataModule`: audio only).
"""
