"""The speaker tasks' data side: classes from the training manifest or the checkpoint, closed-set identification,
trials drawn for validation."""

import json

import pytest
import torch

from recipes.data import ManifestError, read_manifest
from recipes.tasks import SpeakerIdTask, SpeakerVerificationTask, task_class


def manifest(tmp_path, speakers, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("".join(
        json.dumps({"id": f"u{i}", "audio": "x.wav", "duration": 1.0, "speaker": s}) + "\n"
        for i, s in enumerate(speakers)
    ))  # fmt: skip
    return path


def test_speakers_come_sorted_from_the_training_manifest_unless_a_checkpoint_has_them(tmp_path):
    train = str(manifest(tmp_path, ["b", "a", "c", "a"]))
    assert SpeakerIdTask.complete_config({"speakers": None}, train, None)["speakers"] == ["a", "b", "c"]
    # A checkpoint's classes win: its weights were trained for them, whatever the manifest says now.
    from_checkpoint = SpeakerIdTask.complete_config({}, train, {"speakers": ["z", "y"]})
    assert from_checkpoint["speakers"] == ["z", "y"]
    assert SpeakerIdTask.complete_config({"speakers": ["q", "r"]}, train, None)["speakers"] == ["q", "r"]
    with pytest.raises(ValueError, match="--data.train"):
        SpeakerVerificationTask.complete_config({}, None, None)


def test_a_test_speaker_unseen_in_training_is_an_error_naming_the_line(tmp_path):
    task = SpeakerIdTask(speakers=["a", "b"])
    test = read_manifest(manifest(tmp_path, ["a", "b", "c"]), fields=task.fields, check_audio=False)
    with pytest.raises(ManifestError, match=r"speaker label 'c' in .*m.jsonl line 3 is not one of the 2 training"):
        task.targets(test, "test")
    assert task.targets(read_manifest(manifest(tmp_path, ["b", "a"]), check_audio=False), "valid") == [1, 0]


def test_verification_labels_only_its_training_split_and_crops_it():
    task = SpeakerVerificationTask(speakers=["a", "b"], crop_seconds=2.5)
    assert task.fields_for("train") == {"speaker": str} and task.fields_for("test") == {}
    assert task.train_crop_seconds == 2.5
    head = task.build_head(20)
    out = head(torch.randn(3, 50, 20), torch.tensor([50, 40, 30]))
    assert out.embeddings.shape == (3, 192) and out.logits.shape == (3, 2)
    assert torch.isfinite(head.loss(out, torch.tensor([0, 1, 0])))


def test_task_config_round_trips_through_its_class_path():
    task = SpeakerVerificationTask(speakers=["a", "b"], extractor="xvector", xvector={"embedding_size": 64})
    config = task.config()
    rebuilt = task_class(config["class_path"])(**config["init_args"])
    assert rebuilt.config() == config and rebuilt.loss_type == "aam"
    with pytest.raises(ValueError, match="unknown task class"):
        task_class("recipes.tasks.Nope")
