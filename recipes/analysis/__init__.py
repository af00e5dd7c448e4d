"""Layer analysis of an upstream, read from the feature cache (`strata extract`): which layers hold which
information. One module a question:
- `probe`: a cheap classifier per layer (utterance labels on pooled features, or frame labels from an alignment);
- `cca`: projection-weighted CCA between each layer and log-mel features (or the first layer);
- `mi`: k-means clusters of each layer's frames against labels (normalised mutual information);
- `weights`: the learned weighted-sum layer weights of trained runs.
`features` turns the cache into per-layer matrices; `commands` runs each question and writes its CSV, figure (PNG
and PDF) and, for probes, results.json.
"""
