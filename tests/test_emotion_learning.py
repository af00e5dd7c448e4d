"""Emotion recognition learns on the mini corpus: train and test speakers are disjoint, chance UA is 0.25."""

import json
from pathlib import Path

import pytest
from exports import export_and_predict

from downstream.metrics import confusion_matrix, unweighted_accuracy
from recipes.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "emotion.yaml")


@pytest.fixture(scope="module")
def emotion_run(mini_corpus, tmp_path_factory):
    """upstream -> the folder of a fitted and tested mini emotion run (each made once per module)."""
    runs = {}

    def run(upstream: str) -> Path:
        if upstream not in runs:
            run_dir = tmp_path_factory.mktemp(f"emotion_{upstream}")
            common = ["--config", CONFIG, "--model.upstream.name", upstream, "--trainer.default_root_dir",
                      str(run_dir), "--trainer.enable_progress_bar", "false"]  # fmt: skip
            emotion = mini_corpus / "emotion"
            manifests = ["--data.train", str(emotion / "train.jsonl"), "--data.valid", str(emotion / "valid.jsonl")]
            assert main(["fit", *common, *manifests]) == 0
            assert main(["test", *common, "--data.test", str(emotion / "test.jsonl")]) == 0
            runs[upstream] = run_dir
        return runs[upstream]

    return run


@pytest.mark.parametrize("upstream, floor", [("fbank", 0.7), ("tiny_hubert", 0.4)])
def test_mini_emotion_recipe_beats_chance_on_unseen_speakers(emotion_run, upstream, floor):
    results = json.loads((emotion_run(upstream) / "results.json").read_text())
    print(f"{upstream}: UA {results['UA']:.3f} WA {results['WA']:.3f}")
    assert results["UA"] >= floor


def test_an_export_predicts_what_the_test_scored(emotion_run, mini_corpus, tmp_path):
    run_dir = emotion_run("fbank")
    predicted = export_and_predict(run_dir, mini_corpus / "emotion" / "test.jsonl", tmp_path)
    tested = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predicted] == [t["id"] for t in tested]
    assert [p["label"] for p in predicted] == [t["label"] for t in tested]
    for p, t in zip(predicted, tested, strict=True):
        assert p["scores"].keys() == t["scores"].keys() == {"neu", "hap", "ang", "sad"}
        assert max(abs(p["scores"][c] - t["scores"][c]) for c in t["scores"]) < 1e-5
    # The predicted labels give the UA the test reported.
    classes = ["neu", "hap", "ang", "sad"]
    confusion = confusion_matrix([classes.index(p["label"]) for p in predicted],
                                 [classes.index(t["reference"]) for t in tested], len(classes))  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert unweighted_accuracy(confusion) == pytest.approx(results["UA"], abs=1e-9)
