"""The speaker recipes learn on the mini corpus: identification among 48 speakers (chance 1/48) and verification of
held-out speakers through trials, then `strata embed` of the trained extractor."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from exports import export_and_predict

from downstream.metrics import eer
from recipes.cli import main
from recipes.module import SSLTaskModule

CONF = Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf"


def run(task: str, corpus: Path, run_dir: Path, *test_extra: str) -> dict:
    common = ["--config", str(CONF / f"{task}.yaml"), "--trainer.default_root_dir", str(run_dir),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    data = corpus / task
    assert (
        main(["fit", *common, "--data.train", str(data / "train.jsonl"), "--data.valid", str(data / "valid.jsonl")])
        == 0
    )
    assert main(["test", *common, "--data.test", str(data / "test.jsonl"), *test_extra]) == 0
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def speaker_id_run(mini_corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("speaker_id")
    run("speaker_id", mini_corpus, run_dir)
    return run_dir


def test_speaker_id_beats_chance_by_a_wide_margin(mini_corpus, speaker_id_run):
    tmp_path = speaker_id_run
    results = json.loads((tmp_path / "results.json").read_text())
    print(f"speaker_id fbank: accuracy {results['accuracy']:.3f}")
    speakers = {json.loads(line)["speaker"] for line in open(mini_corpus / "speaker_id" / "train.jsonl")}
    assert results["task"] == "speaker_id" and results["num_utterances"] == len(speakers)
    assert results["accuracy"] >= 0.3  # chance is 1/48; 0.44-0.50 measured
    config = (tmp_path / "config.yaml").read_text()
    assert all(speaker in config for speaker in speakers)  # the classes the checkpoint was trained for


@pytest.fixture(scope="module")
def verification_run(mini_corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("verification")
    run("speaker_verification", mini_corpus, run_dir, "--data.trials", str(trials_path(mini_corpus)))
    return run_dir


def test_a_speaker_id_export_predicts_what_the_test_scored(mini_corpus, speaker_id_run, tmp_path):
    predicted = export_and_predict(speaker_id_run, mini_corpus / "speaker_id" / "test.jsonl", tmp_path)
    tested = [json.loads(line) for line in (speaker_id_run / "predictions.jsonl").read_text().splitlines()]
    assert [(p["id"], p["label"]) for p in predicted] == [(t["id"], t["label"]) for t in tested]
    for p, t in zip(predicted, tested, strict=True):
        assert len(p["scores"]) == 20  # the 20 most probable of the 48 speakers
        assert p["scores"].keys() == t["scores"].keys() and next(iter(p["scores"])) == p["label"]
        assert max(abs(p["scores"][c] - t["scores"][c]) for c in t["scores"]) < 1e-5
    accuracy = sum(p["label"] == t["reference"] for p, t in zip(predicted, tested, strict=True)) / len(tested)
    assert accuracy == pytest.approx(json.loads((speaker_id_run / "results.json").read_text())["accuracy"])


def trials_path(corpus: Path) -> Path:
    return corpus / "speaker_verification" / "trials.txt"


def test_verification_of_held_out_speakers_has_eer_below_a_quarter(mini_corpus, verification_run):
    results = json.loads((verification_run / "results.json").read_text())
    print(f"speaker_verification fbank: EER {results['EER']:.3f} minDCF@0.05 {results['minDCF@0.05']:.3f}")
    num_trials = sum(1 for _ in open(trials_path(mini_corpus)))
    assert results["num_trials"] == num_trials
    assert set(results) >= {"EER", "minDCF@0.05", "minDCF@0.01"}
    assert results["EER"] < 0.25
    assert 0.0 <= results["minDCF@0.01"] <= 1.0 + 1e-9
    scores = (verification_run / "scores.txt").read_text().splitlines()
    assert len(scores) == num_trials and len(scores[0].split()) == 4
    assert (verification_run / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embed_writes_one_embedding_per_id_equal_to_the_module_s(mini_corpus, verification_run, tmp_path, capsys):
    manifest = mini_corpus / "speaker_verification" / "test.jsonl"
    out = tmp_path / "emb.npz"
    ckpt = verification_run / "checkpoints" / "best.ckpt"
    assert main(["embed", "--ckpt", str(ckpt), "--manifest", str(manifest), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    embeddings = np.load(out)
    entries = [json.loads(line) for line in open(manifest)]
    assert sorted(embeddings.files) == sorted(e["id"] for e in entries)
    assert embeddings[entries[0]["id"]].shape == (192,)
    # The same vector as the rebuilt module gives the utterance on its own.
    from recipes.audio import read_audio

    module = SSLTaskModule.from_checkpoint(ckpt)
    wav = read_audio(manifest.parent / entries[0]["audio"], 16000)
    with torch.no_grad():
        alone = module.embed(wav[None], torch.tensor([wav.numel()]))[0].numpy()
    np.testing.assert_allclose(embeddings[entries[0]["id"]], alone, atol=1e-4)


def test_a_verification_export_embeds_and_decides_as_the_test_scored(mini_corpus, verification_run, tmp_path, capsys):
    manifest = mini_corpus / "speaker_verification" / "test.jsonl"
    predicted = export_and_predict(verification_run, manifest, tmp_path)
    embeddings = {p["id"]: torch.tensor(p["embedding"]) for p in predicted}
    rows = [line.split() for line in (verification_run / "scores.txt").read_text().splitlines()]
    scores = torch.stack([torch.cosine_similarity(embeddings[a], embeddings[b], dim=0) for _, a, b, _ in rows])
    tested = torch.tensor([float(score) for *_, score in rows])
    assert (scores - tested).abs().max() < 1e-5  # scores.txt keeps 6 decimals
    labels = torch.tensor([int(label) for label, *_ in rows])
    results = json.loads((verification_run / "results.json").read_text())
    assert eer(scores, labels)[0] == pytest.approx(results["EER"], abs=1e-6)
    # `strata verify` scores a trial as the test did and decides at the EER threshold the export carries.
    calibration = json.loads((tmp_path / "export" / "strata.json").read_text())["decisions"]
    threshold = calibration["thresholds"]["EER"]
    assert eer(scores, labels)[1] == pytest.approx(threshold, abs=1e-5)
    entries = {json.loads(line)["id"]: json.loads(line)["audio"] for line in open(manifest)}
    _, first, second, score = rows[0]
    audio = [str(manifest.parent / entries[name]) for name in (first, second)]
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "export"), *audio]) == 0
    printed = re.fullmatch(r"score (\S+) \(threshold (\S+)\): (.+)\n", capsys.readouterr().out)
    assert abs(float(printed[1]) - float(score)) < 1e-4 and abs(float(printed[2]) - threshold) < 1e-4
    assert printed[3] == ("same speaker" if float(score) >= threshold else "different speakers")


def test_a_trial_naming_an_unknown_id_is_a_one_line_error(mini_corpus, verification_run, tmp_path, capsys):
    bad = tmp_path / "trials.txt"
    bad.write_text(trials_path(mini_corpus).read_text() + "1 nobody_001 nobody_002\n")
    args = ["test", "--config", str(CONF / "speaker_verification.yaml"),
            "--trainer.default_root_dir", str(verification_run),
            "--data.test", str(mini_corpus / "speaker_verification" / "test.jsonl"),
            "--data.trials", str(bad)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "nobody_001" in err and "\n" not in err


def test_verification_test_without_trials_says_which_option_is_missing(mini_corpus, verification_run, capsys):
    args = ["test", "--config", str(CONF / "speaker_verification.yaml"),
            "--trainer.default_root_dir", str(verification_run),
            "--data.test", str(mini_corpus / "speaker_verification" / "test.jsonl")]  # fmt: skip
    assert main(args) == 2
    assert "--data.trials" in capsys.readouterr().err


def test_mean_subtraction_scores_after_removing_the_training_set_mean(mini_corpus, verification_run, tmp_path):
    data = mini_corpus / "speaker_verification"
    run_dir = tmp_path / "mean"
    run_dir.mkdir()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "best.ckpt").symlink_to(verification_run / "checkpoints" / "best.ckpt")
    args = ["test", "--config", str(CONF / "speaker_verification.yaml"), "--trainer.default_root_dir", str(run_dir),
            "--trainer.enable_progress_bar", "false", "--model.task.init_args.subtract_mean", "true",
            "--data.train", str(data / "train.jsonl"), "--data.test", str(data / "test.jsonl"),
            "--data.trials", str(trials_path(mini_corpus))]  # fmt: skip
    assert main(args) == 0
    results = json.loads((run_dir / "results.json").read_text())
    plain = json.loads((verification_run / "results.json").read_text())
    assert results["mean_subtraction"] is True and plain["mean_subtraction"] is False
    assert results["EER"] < 0.25
    scores = [line.split()[3] for line in (run_dir / "scores.txt").read_text().splitlines()]
    assert scores != [line.split()[3] for line in (verification_run / "scores.txt").read_text().splitlines()]


def test_verification_under_ddp_gathers_every_embedding_and_scores_as_one_process(
    mini_corpus, verification_run, tmp_path
):
    data = mini_corpus / "speaker_verification"
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "recipes.cli", "test", "--config", str(CONF / "speaker_verification.yaml"),
               "--trainer.default_root_dir", str(tmp_path / "ddp"), "--trainer.enable_progress_bar", "false",
               "--ckpt_path", str(verification_run / "checkpoints" / "best.ckpt"),
               "--data.test", str(data / "test.jsonl"), "--data.trials", str(trials_path(mini_corpus)),
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    single = json.loads((verification_run / "results.json").read_text())
    assert ddp["num_utterances"] == single["num_utterances"] and ddp["num_trials"] == single["num_trials"]
    assert ddp["EER"] == pytest.approx(single["EER"], abs=1e-6)
    ddp_scores = [float(line.split()[3]) for line in (tmp_path / "ddp" / "scores.txt").read_text().splitlines()]
    scores = [float(line.split()[3]) for line in (verification_run / "scores.txt").read_text().splitlines()]
    assert ddp_scores == pytest.approx(scores, abs=1e-5)
