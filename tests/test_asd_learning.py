"""Anomalous sound detection on the mini machine sounds: frozen fbank embeddings scored by kNN beat 0.7 on the
DCASE official score, and a trained embedding runs end to end into the challenge's submission files."""

import json
from pathlib import Path

import pytest
from egs_scripts import load_script

from recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "egs" / "mini" / "conf" / "asd.yaml")


@pytest.fixture(scope="module")
def machines(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("machines")
    load_script("make_machines").main(["--out", str(out), "--seed", "0", "--scale", "0.5"])
    return out / "asd"


def common(run_dir: Path) -> list[str]:
    return ["--config", CONFIG, "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false"]


def test_frozen_fbank_embeddings_score_above_0_7_without_training(machines, tmp_path):
    run_dir = tmp_path / "frozen"
    args = ["test", *common(run_dir), "--model.task.init_args.head", "none",
            "--data.train", str(machines / "train.jsonl"), "--data.test", str(machines / "test.jsonl")]  # fmt: skip
    assert main(args) == 0
    results = json.loads((run_dir / "results.json").read_text())
    print("asd frozen fbank:", {k: round(v, 3) for k, v in results.items() if isinstance(v, float)})
    assert results["official_score"] > 0.7
    for machine in ("fan", "pump", "gearbox"):
        assert {f"AUC_source/{machine}", f"AUC_target/{machine}", f"pAUC/{machine}"} <= set(results)
    assert not (run_dir / "checkpoints").exists()  # nothing was trained


def test_trained_embedding_writes_scores_decisions_and_roc_per_machine(machines, tmp_path):
    run_dir = tmp_path / "trained"
    train = ["--data.train", str(machines / "train.jsonl")]
    assert main(["fit", *common(run_dir), *train, "--data.valid", str(machines / "valid.jsonl"),
                 "--trainer.max_epochs", "2"]) == 0  # fmt: skip
    assert "classes:" in (run_dir / "config.yaml").read_text()
    assert main(["test", *common(run_dir), *train, "--data.test", str(machines / "test.jsonl")]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["official_score"] <= 1.0
    test_names = {Path(json.loads(line)["audio"]).name for line in open(machines / "test.jsonl")}
    for machine in ("fan", "pump", "gearbox"):
        scores = (run_dir / f"anomaly_score_{machine}_section_00_test.csv").read_text().splitlines()
        decisions = (run_dir / f"decision_result_{machine}_section_00_test.csv").read_text().splitlines()
        assert len(scores) == len(decisions) > 0
        assert {line.split(",")[0] for line in scores} <= test_names
        assert {line.split(",")[1] for line in decisions} <= {"0", "1"}
        assert (run_dir / f"roc_{machine}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
