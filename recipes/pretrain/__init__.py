"""Self-supervised pre-training of a HuBERT-style upstream (Hsu et al., "HuBERT", IEEE/ACM TASLP 2021):
masked prediction of k-means cluster ids of MFCCs (iteration 1) or of a previous model's layer (iteration 2).
`strata pretrain` trains it with Lightning and writes a transformers directory that `--upstream hf:<dir>` loads.
- `targets`: the frame features, their k-means codebook and the per-frame cluster ids;
- `masking`: the span masks;
- `module`: the LightningModule (masked-prediction loss and accuracy, saving the upstream);
- `data`: the DataModule (audio and the targets of each utterance).
"""
