"""`strata export`: a trained run as a self-contained model folder, laid out as a Hugging Face hub repository.

    strata.json             what to build: the module's config (task, upstream, interface), the upstream's source
                            and weight fingerprint, the decision thresholds, the test's figures, the data's hashes
    model.safetensors       the trained weights: interface, normaliser, head, and the upstream only if it trained
    calibration.safetensors what decisions need beyond the weights (verification's mean, ASD's reference clips)
    tokenizer.model         ASR only: the sentencepiece model
    README.md               the model card: results, data, how to load it

A frozen upstream is not copied: it is rebuilt from its source when the export loads, and must match the
recorded fingerprint (as a checkpoint of a frozen run is checked). `recipes.inference.load_model` reads the
folder, locally or as `hf:<id>` once pushed (`--push-to-hub`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from .inference import EXPORT_CONFIG, EXPORT_FORMAT, RunModel, _read_yaml, load_run
from .results import Results, format_metric, markdown_table
from .tasks.base import Calibration

# The hub's pipeline tag of each task, for the model card (none fits verification or ASD).
PIPELINE_TAGS = {
    "emotion": "audio-classification",
    "speaker_id": "audio-classification",
    "asr": "automatic-speech-recognition",
}
SPLITS = ("train", "valid", "test")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifests a run trained and tested on (from its configs), with their SHA-256 where they still exist."""
    found: dict[str, dict[str, Any]] = {}
    for name in ("config.yaml", "config_test.yaml"):
        path = run_dir / name
        data = (_read_yaml(path).get("data") or {}) if path.is_file() else {}
        for split in SPLITS:
            manifest = data.get(split)
            if manifest and split not in found:
                file = Path(manifest)
                found[split] = {"path": manifest, "sha256": file_sha256(file) if file.is_file() else None}
    return found


def module_hparams(module: Any) -> dict[str, Any]:
    """The module's hyper-parameters as plain data (what `SSLTaskModule.from_config` takes)."""
    hparams = {key: value for key, value in dict(module.hparams).items() if not key.startswith("_")}
    hparams["task"] = module.task.config()
    hparams["upstream"] = asdict(module.upstream_config)
    hparams["interface"] = asdict(module.interface_config)
    return hparams


BUNDLED_UPSTREAM = "upstream"  # where an export keeps a frozen upstream that was a local folder


FOLDER_SOURCES = ("hf", "tera")  # source prefixes whose rest may be a folder on this machine


def local_upstream_folder(name: str) -> tuple[str, Path] | None:
    """(source prefix, folder) of an upstream given as a local folder (`hf:<dir>`, `<dir>`: a transformers
    directory; `tera:<dir>`), else None (a preset, a hub id, or another kind of source)."""
    prefix, sep, rest = name.partition(":")
    prefix, path = (prefix, Path(rest)) if sep and prefix in FOLDER_SOURCES else ("hf", Path(name))
    return (prefix, path) if path.is_dir() and (path / "config.json").is_file() else None


def export_state(module: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights an export stores (a frozen upstream's left out, as in checkpoints) and the upstream's record."""
    from .module import FROZEN_UPSTREAM_KEY

    checkpoint: dict[str, Any] = {"state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    frozen = checkpoint.get(FROZEN_UPSTREAM_KEY)
    upstream = {
        "name": module.upstream_config.name,
        "trainable": module.upstream_config.trainable,
        "fingerprint": frozen["fingerprint"] if frozen else None,
        "weights_included": frozen is None,
    }
    # safetensors refuses tensors sharing memory (tied weights): each is stored as its own copy.
    state = {key: value.detach().cpu().clone().contiguous() for key, value in checkpoint["state_dict"].items()}
    return state, upstream


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: str | None = None, overwrite: bool = False,
    trust_code: bool = False,
) -> Path:  # fmt: skip
    """Write the export of `run_dir` into `out` (through a temporary folder renamed when complete)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: choose another --out or pass --force to replace it")
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no results.json: run `strata test` first, so that the export carries the test's figures "
            "and decision thresholds"
        )
    results = Results.read(results_path)
    loaded = load_run(run_dir, checkpoint, trust_code)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write_export(loaded, partial, results, data_manifests(run_dir), source=str(run_dir))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():  # --force: the old export stays whole until the new one is in place
        old = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old)
    else:
        partial.rename(out)
    return out


def write_export(
    loaded: RunModel, folder: Path, results: Results | None, data: dict[str, dict[str, Any]], source: str
) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from safetensors.torch import save_file

    try:
        strata_version = version("strata")
    except PackageNotFoundError:  # a source tree that was never installed
        strata_version = "unknown"

    module, calibration = loaded.module, loaded.calibration
    state, upstream = export_state(module)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hparams = module_hparams(module)
    tokenizer = hparams["task"]["init_args"].get("tokenizer")
    if tokenizer:
        shutil.copyfile(tokenizer, folder / "tokenizer.model")
        hparams["task"]["init_args"]["tokenizer"] = "tokenizer.model"
    if calibration.values or calibration.tensors:
        calibration.save(folder / Calibration.FILENAME)
    local = local_upstream_folder(upstream["name"])
    if local is not None and not upstream["weights_included"]:
        # A folder on this machine (e.g. a `strata pretrain` output) would not exist where the export goes: copied,
        # with the source prefix that reads it.
        shutil.copytree(local[1], folder / BUNDLED_UPSTREAM)
        upstream["bundled"], upstream["bundled_source"] = BUNDLED_UPSTREAM, local[0]
    config = {
        "format": EXPORT_FORMAT,
        "strata_version": strata_version,
        "task": module.task.name,
        "module": hparams,
        "upstream": upstream,
        "sample_rate": module.upstream.sample_rate,
        "frame_rate": module.upstream.frame_rate,
        "decisions": calibration.values,
        "predict": {"batch_seconds": loaded.batch_seconds},
        "results": results.to_dict() if results else None,
        "data": data,
        "exported_from": {
            "run": source,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        },  # fmt: skip
    }
    (folder / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(model_card(config, module), encoding="utf-8")


def model_card(config: dict[str, Any], module: Any) -> str:
    """The README.md of an export: hub metadata, what the model is, its test figures, its data, how to use it."""
    task, upstream = config["task"], config["upstream"]
    tags = ["strata", "speech", "audio", task.replace("_", "-")]
    front = ["---", "library_name: strata", "tags:", *[f"- {tag}" for tag in tags]]
    if task in PIPELINE_TAGS:
        front.append(f"pipeline_tag: {PIPELINE_TAGS[task]}")
    front.append("---")
    interface = module.interface_config.name
    if upstream["weights_included"]:
        upstream_text = (
            f"`{upstream['name']}`, trained ({upstream['trainable']}); its weights are in `model.safetensors`"
        )
    elif upstream.get("bundled"):
        upstream_text = (f"`{upstream['name']}`, frozen, a local model copied into `{upstream['bundled']}/` (loaded "
                         f"from there, checked against weight fingerprint `{upstream['fingerprint']}`)")  # fmt: skip
    else:
        upstream_text = (f"`{upstream['name']}`, frozen; rebuilt from that source on load and checked against weight "
                         f"fingerprint `{upstream['fingerprint']}`")  # fmt: skip
    lines = [
        *front,
        "",
        f"# strata {task}: {upstream['name']} + {interface}",
        "",
        f"A strata model for {task.replace('_', ' ')}: the upstream {upstream_text}; the "
        f"`{interface}` interface and the task's head are in `model.safetensors`. It reads mono audio at "
        f"{config['sample_rate']} Hz (other rates are resampled).",
    ]
    results = config.get("results")
    if results:
        parsed = Results.from_dict(results)
        rows = [[name, format_metric(name, value)] for name, value in parsed.metrics.items()]
        lines += ["", "## Test results", "", f"On `{parsed.dataset}` ({parsed.num_utterances} utterances):", "",
                  markdown_table(["metric", "value"], rows)]  # fmt: skip
    thresholds = (config.get("decisions") or {}).get("thresholds")
    if thresholds:
        rows = [[name, f"{value:.6f}"] for name, value in thresholds.items()]
        lines += ["", "## Decision thresholds (measured by the test)", "", markdown_table(["point", "threshold"], rows)]
    if config.get("data"):
        rows = [[split, f"`{d['path']}`", f"`{d['sha256']}`" if d["sha256"] else "(file gone)"]
                for split, d in config["data"].items()]  # fmt: skip
        lines += ["", "## Data", "", markdown_table(["split", "manifest", "sha256"], rows)]
    sections = sorted(thresholds or {}) if task == "asd" else []
    section = f" --section {sections[0]}" if sections else ""
    lines += [
        "",
        "## Use",
        "",
        "With strata installed (`pip install -e .` in a clone):",
        "",
        "```bash",
        f"strata predict <this folder or hf:<repo id>> audio.wav{section}    # one JSON line per input",
        "strata predict <this folder or hf:<repo id>> --manifest test.jsonl --out predictions.jsonl",
        *(["strata verify <this folder or hf:<repo id>> a.wav b.wav"] if task == "speaker_verification" else []),
        "```",
        "",
        "```python",
        "from recipes import load_model",
        "",
        'model = load_model("<this folder or hf:<repo id>>")',
        'model.predict("audio.wav")',
        "```",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(folder: str | Path, repo: str, private: bool = False) -> str:
    """Upload an export folder to the hub repository `repo` (created when missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="strata export")
    except Exception as error:  # noqa: BLE001 -- network, token, permissions: one message for all
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"could not push {folder} to hf:{repo} ({type(error).__name__}: {reason}); the export itself is "
            "complete: log in with `hf auth login` and retry, or upload the folder yourself"
        ) from None
    return f"https://huggingface.co/{repo}"
