"""The ASR task's data side: a tokenizer trained on first fit, utterances CTC cannot use dropped with a list,
references normalised like the training text, and hypotheses written beside their references."""

import json
import sys
from pathlib import Path

import pytest
import torch

from recipes.data import read_manifest
from recipes.tasks import AsrTask, ctc_frames_needed
from recipes.tokenizer import train_tokenizer


def write_manifest(path: Path, texts: list[str], durations: list[float] | None = None) -> Path:
    durations = durations or [2.0] * len(texts)
    path.write_text("".join(
        json.dumps({"id": f"u{i}", "audio": "x.wav", "duration": d, "text": t}) + "\n"
        for i, (t, d) in enumerate(zip(texts, durations, strict=True))
    ))  # fmt: skip
    return path


def test_ctc_needs_a_frame_per_label_and_a_blank_between_repeats():
    assert ctc_frames_needed([]) == 0
    assert ctc_frames_needed([3, 4, 5]) == 3
    assert ctc_frames_needed([3, 3, 4, 4, 4]) == 8  # 5 labels + 3 blanks between equal neighbours


def test_first_fit_trains_a_tokenizer_into_the_run_directory_and_test_reuses_it(tmp_path):
    train = str(write_manifest(tmp_path / "train.jsonl", ["Hello world!", "it's a test"]))
    completed = AsrTask.complete_config({"tokenizer": None}, train, None, tmp_path / "run")
    path = Path(completed["tokenizer"])
    assert path == tmp_path / "run" / "tokenizer.model" and path.is_file()
    task = AsrTask(tokenizer=str(path))
    assert task.text_tokenizer.decode(task.text_tokenizer.encode("HELLO IT'S")) == "HELLO IT'S"
    # A checkpoint's tokenizer wins over training a new one; without any, there is nothing to train from.
    assert AsrTask.complete_config({}, None, {"tokenizer": str(path)}, tmp_path / "other")["tokenizer"] == str(path)
    with pytest.raises(ValueError, match="no --data.train"):
        AsrTask.complete_config({}, None, None, tmp_path / "empty")
    assert task.config()["init_args"]["tokenizer"] == str(path)


def test_training_drops_empty_unknown_and_too_short_utterances_but_scoring_keeps_what_it_can(tmp_path):
    tokenizer = train_tokenizer(["ABC ABD", "CAB"], tmp_path / "tok.model")
    task = AsrTask(tokenizer=str(tokenizer.path))
    texts = ["abc", " ,. ", "abz", "abc abd cab abc", "ab"]
    durations = [1.0, 1.0, 1.0, 0.1, 1.0]  # 0.1 s at 100 frames/s: 10 frames for 15 labels
    manifest = read_manifest(write_manifest(tmp_path / "m.jsonl", texts, durations), AsrTask.fields, check_audio=False)
    assert task.drop(manifest, "train", frame_rate=100.0) == {
        1: "empty transcript",
        2: "characters outside the tokenizer",
        3: "fewer frames than CTC needs for the transcript",
    }
    assert task.drop(manifest, "test", frame_rate=100.0) == {1: "empty transcript"}
    targets = task.targets(manifest, "train")
    assert targets[0] == tokenizer.encode("ABC") and tokenizer.blank_id not in targets[0]
    labels, lengths = task.collate_targets([targets[0], targets[4]])  # "ABC" and "AB", each after a word start
    assert lengths.tolist() == [4, 3] and labels.shape == (2, 4) and labels[1, 3] == 0
    assert labels[0].tolist() == targets[0]


def test_beam_search_without_flashlight_text_is_refused_before_training(tmp_path):
    tokenizer = train_tokenizer(["ABC"], tmp_path / "tok.model")
    try:
        import flashlight.lib.text  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="flashlight-text"):
            AsrTask(tokenizer=str(tokenizer.path), decoder="beam")
    else:
        assert AsrTask(tokenizer=str(tokenizer.path), decoder="beam").beam_decoder is not None


def test_ctc_loss_is_finite_for_an_utterance_it_cannot_align(tmp_path):
    tokenizer = train_tokenizer(["ABC"], tmp_path / "tok.model")
    task = AsrTask(tokenizer=str(tokenizer.path), hidden_size=8, num_layers=1)
    head = task.build_head(4).eval()
    outputs = head(torch.randn(2, 3, 4), torch.tensor([3, 2]))
    targets = task.collate_targets([tokenizer.encode("ABC"), tokenizer.encode("ABC")])  # 3 labels, 2 frames
    assert torch.isfinite(head.loss(outputs, targets))  # the head owns its loss: no task state needed


def test_strata_tokenizer_trains_on_a_manifest_and_says_where(tmp_path, capsys):
    from recipes.cli import main

    manifest = write_manifest(tmp_path / "m.jsonl", ["the cat", "a dog's bone"])
    out = tmp_path / "tok.model"
    assert main(["tokenizer", "--manifest", str(manifest), "--type", "char", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    from recipes.tokenizer import Tokenizer

    assert Tokenizer(out).decode(Tokenizer(out).encode("A DOG'S CAT")) == "A DOG'S CAT"
    assert main(["tokenizer", "--manifest", str(manifest), "--type", "bpe", "--vocab-size", "500",
                 "--out", str(tmp_path / "big.model")]) == 2  # fmt: skip
    assert "vocab_size=500" in capsys.readouterr().err


def test_beam_search_without_its_decoder_is_a_one_line_error_before_training(
    mini_corpus, tmp_path, capsys, monkeypatch
):
    from recipes.cli import main

    # As if flashlight-text were missing, whether or not this machine has it.
    monkeypatch.setitem(sys.modules, "torchaudio.models.decoder", None)
    manifest = str(mini_corpus / "asr" / "valid.jsonl")
    config = str(Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "asr.yaml")
    args = ["fit", "--config", config, "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.train", manifest, "--data.valid", manifest, "--model.task.init_args.decoder", "beam"]  # fmt: skip
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("strata fit: error:") and "pip install flashlight-text" in last
    assert not (tmp_path / "run" / "checkpoints").exists()
