"""Export a tested run, then predict with the export in a fresh process, as a user handed the folder would."""

import json
import os
import subprocess
import sys
from pathlib import Path

from recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]


def predict_in_new_process(export: Path, manifest: Path, out: Path, *predict_args: str) -> list[dict]:
    """`strata predict` of `export` on `manifest` in a new Python process (nothing of this process's state reaches
    it), writing `out/predictions.jsonl`; the prediction lines, in manifest order."""
    predictions = out / "predictions.jsonl"
    command = [sys.executable, "-m", "recipes.cli", "predict", str(export), "--manifest", str(manifest),
               "--out", str(predictions), "--device", "cpu", *predict_args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in predictions.read_text().splitlines()]


def export_and_predict(run_dir: Path, manifest: Path, out: Path, *predict_args: str) -> list[dict]:
    """`strata export run_dir --out out/export`, then `predict_in_new_process`."""
    export = out / "export"
    assert main(["export", str(run_dir), "--out", str(export)]) == 0
    return predict_in_new_process(export, manifest, out, *predict_args)
