"""What `strata probe`, `strata analyze cca|mi` and `strata weights` do: read the cache once, compute one number per
layer, write `<name>.csv` and `<name>.png` / `.pdf` into the output folder. Returns the paths written."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..cache import FeatureCache
from ..compare import unique_names
from ..data import Manifest, read_entry, read_manifest
from ..plots import plot_layer_curves, plot_layer_weights
from ..results import Results
from ..tasks import asd_class
from .cca import choose_epsilon, held_out_pwcca, log_mel
from .features import Frames, cached_layers, pooled, sample_frames
from .mi import cluster_mi
from .probe import chance_level, encode, frame_labels, probe_layers
from .weights import layer_weights

# The utterance label each task's probe predicts; `--label FIELD` probes any manifest field instead.
PROBE_LABELS: dict[str, Callable[[dict[str, Any]], str]] = {
    "emotion": lambda entry: entry["emotion"],
    "speaker_id": lambda entry: entry["speaker"],
    "speaker_verification": lambda entry: entry["speaker"],
    "asd": asd_class,
}


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    with atomic_path(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _field(manifest: Manifest, name: str) -> Callable[[dict[str, Any]], str]:
    for i, entry in enumerate(manifest.entries):
        if name not in entry:
            raise ValueError(f"{manifest.where(i)} has no {name!r} field to probe")
    return lambda entry: str(entry[name])


def _label_function(task: str | None, label: str | None, manifest: Manifest) -> Callable[[dict[str, Any]], str]:
    if label is not None:
        return _field(manifest, label)
    if task not in PROBE_LABELS:
        raise ValueError(f"no utterance label for task {task!r}; choose from {sorted(PROBE_LABELS)} or pass --label")
    return PROBE_LABELS[task]


def _alignment_frames(
    cache: FeatureCache, manifest: Manifest, layers: list[int], field: str, max_frames: int, seed: int
) -> tuple[Frames, list[str]]:
    """Frames that an alignment (`field`: `[start, end, label]` segments) labels, sampled, with their labels."""
    rate = cache.index.frame_rate
    labelled = []
    for i, entry in enumerate(manifest.entries):
        if field not in entry:
            raise ValueError(f"{manifest.where(i)} has no {field!r} alignment ([start, end, label] segments)")
        labelled.append(frame_labels([tuple(s) for s in entry[field]], cache.frames(entry["id"]), rate))
    keep = {i: np.array([label is not None for label in labels]) for i, labels in enumerate(labelled)}
    frames = sample_frames(cache, manifest, layers, max_frames, seed, keep=keep)
    labels = [labelled[i][t] for i, t in zip(frames.utterance, frames.position, strict=True)]
    return frames, labels


def probe(
    cache_dir: str | Path,
    train: str | Path,
    test: str | Path,
    out: str | Path,
    task: str | None = None,
    label: str | None = None,
    frame_labels_field: str | None = None,
    layers: str = "all",
    kind: str = "linear",
    max_frames: int = 20000,
    seed: int = 0,
) -> list[Path]:
    """One probe per layer: utterance labels on mean-pooled features, or frame labels from an alignment field."""
    cache = FeatureCache(cache_dir)
    chosen = cached_layers(cache, layers)
    train_manifest, test_manifest = read_manifest(train), read_manifest(test)
    if frame_labels_field is not None:
        train_frames, train_labels = _alignment_frames(
            cache, train_manifest, chosen, frame_labels_field, max_frames, seed
        )
        test_frames, test_labels = _alignment_frames(cache, test_manifest, chosen, frame_labels_field, max_frames, seed)
        x_train = {layer: torch.from_numpy(train_frames.layers[layer]).float() for layer in chosen}
        x_test = {layer: torch.from_numpy(test_frames.layers[layer]).float() for layer in chosen}
        what = f"frame {frame_labels_field}"
    else:
        label_of = _label_function(task, label, train_manifest)
        train_labels = [label_of(e) for e in train_manifest.entries]
        test_labels = [label_of(e) for e in test_manifest.entries]
        x_train, x_test = pooled(cache, train_manifest, chosen), pooled(cache, test_manifest, chosen)
        what = label or task
    y_train, y_test, classes = encode(train_labels, test_labels)
    rows = probe_layers(x_train, y_train, x_test, y_test, len(classes), kind=kind, seed=seed)
    chance = chance_level(y_train, y_test, len(classes))
    out = Path(out)
    best = _best_layer(rows, f"probe_{what}", cache, kind, test_manifest, seed)
    written = [write_csv(out / "probe.csv", rows), best.write(out)]
    metrics = [key for key in rows[0] if key != "layer"]
    series = {metric: [row[metric] for row in rows] for metric in metrics}
    title = f"{cache.index.upstream}: {kind} probe of {what} ({len(classes)} classes)"
    written += plot_layer_curves(chosen, series, out / "probe", "probe score on the test set", title, chance)
    return written


def _best_layer(
    rows: list[dict[str, Any]], task: str, cache: FeatureCache, kind: str, test: Manifest, seed: int
) -> Results:
    """The best layer's scores as results, so `strata report` and `strata compare` list probes beside runs."""
    best = max(rows, key=lambda row: (row["accuracy"], -row["layer"]))
    return Results(
        task=task.replace(" ", "_"),
        upstream=cache.index.upstream,
        interface=f"{kind} probe",
        trainable="frozen",
        metrics={k: float(v) for k, v in best.items() if k != "layer"},
        dataset=str(test.path),
        seed=seed,
        num_utterances=len(test),
        details={"best_layer": int(best["layer"])},
    )


def _split_utterances(count: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded boolean mask of the utterances in the first part (fit); the rest are held out."""
    order = np.random.default_rng(seed).permutation(count)
    mask = np.zeros(count, dtype=bool)
    mask[order[: max(1, int(round(fraction * count)))]] = True
    return mask


def _cache_manifest(cache: FeatureCache, manifests: Sequence[str | Path] | None) -> Manifest:
    """The utterances to analyse: the manifests given, else those the cache was extracted from, joined."""
    paths = list(manifests or cache.index.manifests)
    parsed = [read_manifest(path) for path in paths]
    seen, entries, lines = set(), [], []
    for manifest in parsed:
        for entry, line in zip(manifest.entries, manifest.lines, strict=True):
            if entry["id"] not in seen:
                seen.add(entry["id"])
                entries.append(entry)
                lines.append(line)
    return Manifest(Path(paths[0]), entries, lines)


def cca(
    cache_dir: str | Path,
    out: str | Path,
    reference: str = "mel",
    manifests: Sequence[str | Path] | None = None,
    layers: str = "all",
    max_frames: int = 20000,
    seed: int = 0,
) -> list[Path]:
    """Held-out projection-weighted CCA between each layer's frames and log-mel features at the layer's frame rate
    (`reference="mel"`) or the first cached layer (`"layer0"`); the regularisation is chosen on held-out frames."""
    cache = FeatureCache(cache_dir)
    chosen = cached_layers(cache, layers)
    manifest = _cache_manifest(cache, manifests)
    frames = sample_frames(cache, manifest, chosen, max_frames, seed)
    if reference == "mel":
        target = _mel_frames(cache, manifest, frames)
    elif reference == "layer0":
        first = cache.index.layers[0]
        target = frames.layers[first] if first in frames.layers else sample_frames(
            cache, manifest, [first], max_frames, seed).layers[first]  # fmt: skip
    else:
        raise ValueError(f"--reference must be mel or layer0; got {reference!r}")
    fit = _split_utterances(len(manifest), 0.8, seed)[frames.utterance]
    rows = []
    for layer in chosen:
        x = frames.layers[layer]
        epsilon = choose_epsilon(x[fit], target[fit], x[~fit], target[~fit])
        value = held_out_pwcca(x[fit], target[fit], x[~fit], target[~fit], epsilon)
        rows.append({"layer": layer, "pwcca": value, "epsilon": epsilon})
    out = Path(out)
    written = [write_csv(out / "cca.csv", rows)]
    name = "log-mel" if reference == "mel" else f"layer {cache.index.layers[0]}"
    title = f"{cache.index.upstream}: PWCCA with {name} (held-out frames)"
    written += plot_layer_curves(chosen, {"PWCCA": [r["pwcca"] for r in rows]}, out / "cca", "PWCCA", title)
    return written


def _mel_frames(cache: FeatureCache, manifest: Manifest, frames: Frames) -> np.ndarray:
    """Log-mel vectors at the sampled frames' times, each utterance's audio read once."""
    target = np.zeros((len(frames.utterance), 80))
    for i in np.unique(frames.utterance):
        entry = manifest.entries[i]
        wav = read_entry(entry, 16000)
        mel = log_mel(wav, 16000, cache.index.frame_rate, cache.frames(entry["id"]))
        rows = np.flatnonzero(frames.utterance == i)
        target[rows] = mel[frames.position[rows]]
    return target


def mutual_information(
    cache_dir: str | Path,
    out: str | Path,
    labels: str,
    fit: str | Path | None = None,
    evaluate: str | Path | None = None,
    layers: str = "all",
    clusters: int = 100,
    max_frames: int = 20000,
    seed: int = 0,
) -> list[Path]:
    """k-means of each layer's frames fitted on one split, NMI `I(cluster; label) / H(label)` on another. `labels`
    is an utterance field given to all its frames, or an alignment field (`[start, end, label]` segments)."""
    cache = FeatureCache(cache_dir)
    chosen = cached_layers(cache, layers)
    if (fit is None) != (evaluate is None):
        raise ValueError("give both --fit and --eval manifests, or neither (the cache's utterances split in two)")
    if fit is None:
        manifest = _cache_manifest(cache, None)
        half = _split_utterances(len(manifest), 0.5, seed)
        parts = [_subset(manifest, half), _subset(manifest, ~half)]
    else:
        parts = [read_manifest(fit), read_manifest(evaluate)]
    sampled = [_labelled_frames(cache, part, chosen, labels, max_frames, seed) for part in parts]
    (fit_frames, _), (eval_frames, eval_labels) = sampled
    rows = [
        {
            "layer": layer,
            "nmi": cluster_mi(
                fit_frames.layers[layer], eval_frames.layers[layer], np.array(eval_labels), clusters, seed
            ),
        }  # fmt: skip
        for layer in chosen
    ]
    out = Path(out)
    written = [write_csv(out / "mi.csv", rows)]
    title = f"{cache.index.upstream}: {clusters}-means clusters vs {labels} (NMI)"
    written += plot_layer_curves(chosen, {"NMI": [r["nmi"] for r in rows]}, out / "mi", "I(cluster; label) / H(label)",
                                 title)  # fmt: skip
    return written


def _subset(manifest: Manifest, mask: np.ndarray) -> Manifest:
    keep = np.flatnonzero(mask)
    return Manifest(manifest.path, [manifest.entries[i] for i in keep], [manifest.lines[i] for i in keep])


def _labelled_frames(
    cache: FeatureCache, manifest: Manifest, layers: list[int], field: str, max_frames: int, seed: int
) -> tuple[Frames, list[str]]:
    first = manifest.entries[0] if manifest.entries else {}
    if isinstance(first.get(field), list):  # an alignment: frame labels
        return _alignment_frames(cache, manifest, layers, field, max_frames, seed)
    label_of = _field(manifest, field)
    frames = sample_frames(cache, manifest, layers, max_frames, seed)
    return frames, [label_of(manifest.entries[i]) for i in frames.utterance]


def weights(runs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """The weighted-sum layer weights of each run: `weights.csv` (run, layer, weight) and a bar plot (one run) or a
    runs x layers heat map (several)."""
    table, folders, upstreams = [], [], set()
    for run in runs:
        values, hparams = layer_weights(run)
        table.append(values)
        folders.append(Path(os.path.abspath(run)) if Path(run).is_dir() else Path(os.path.abspath(run)).parent.parent)
        upstreams.add((hparams.get("upstream") or {}).get("name", "?"))
    names = unique_names(folders)
    if len({len(row) for row in table}) > 1:
        raise ValueError(f"the runs have different layer counts {[len(r) for r in table]}: compare one upstream's runs")
    out = Path(out)
    rows = [
        {"run": name, "layer": k, "weight": w}
        for name, row in zip(names, table, strict=True)
        for k, w in enumerate(row)
    ]
    written = [write_csv(out / "weights.csv", rows)]
    title = f"{', '.join(sorted(upstreams))}: learned layer weights"
    return written + plot_layer_weights(table, names, out / "weights", title)
