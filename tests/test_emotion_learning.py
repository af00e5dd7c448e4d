"""Emotion recognition learns on the mini corpus: train and test speakers are disjoint, chance UA is 0.25."""

import json
from pathlib import Path

import pytest

from recipes.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "emotion.yaml")


@pytest.mark.parametrize("upstream, floor", [("fbank", 0.7), ("tiny_hubert", 0.4)])
def test_mini_emotion_recipe_beats_chance_on_unseen_speakers(mini_corpus, tmp_path, upstream, floor):
    common = ["--config", CONFIG, "--model.upstream.name", upstream, "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    emotion = mini_corpus / "emotion"
    manifests = ["--data.train", str(emotion / "train.jsonl"), "--data.valid", str(emotion / "valid.jsonl")]
    assert main(["fit", *common, *manifests]) == 0
    assert main(["test", *common, "--data.test", str(emotion / "test.jsonl")]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    print(f"{upstream}: UA {results['UA']:.3f} WA {results['WA']:.3f}")
    assert results["UA"] >= floor
