"""Speaker-adversarial emotion training: gradient reversal, the adversarial head, and `EmotionTask.speaker_adversary`
from config to a training step on the mini corpus."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from exports import export_and_predict
from training import first_step_loss

from downstream.adversary import (
    AdversarialOutputs,
    AdversaryTargets,
    SpeakerAdversarialClassifier,
    reverse_gradient,
)
from downstream.classifier import UtteranceClassifier
from downstream.speaker import EcapaConfig
from recipes.cli import main
from recipes.data import ManifestError, read_manifest
from recipes.datamodule import ManifestDataModule
from recipes.module import SSLTaskModule, UpstreamConfig
from recipes.tasks import EmotionTask
from recipes.tasks.base import task_from_config
from recipes.tasks.classification import SpeakerAdversaryConfig

CONFIG = str(Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "emotion.yaml")
SMALL_ECAPA = EcapaConfig(channels=16, embedding_size=12, res2net_scale=4, se_channels=8, attention_channels=8)


def test_gradient_reversal_is_the_identity_forward_and_negates_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -2.0]))


def test_the_head_returns_both_logits_in_train_mode_and_plain_emotion_logits_in_eval_mode():
    head = SpeakerAdversarialClassifier(6, 4, num_speakers=5, projection_size=8, speaker_hidden_size=7)
    features, lengths = torch.randn(3, 9, 6), torch.tensor([9, 5, 2])
    outputs = head(features, lengths)
    assert isinstance(outputs, AdversarialOutputs)
    assert outputs.logits.shape == (3, 4) and outputs.speaker_logits.shape == (3, 5)
    logits = head.eval()(features, lengths)
    assert isinstance(logits, torch.Tensor) and torch.allclose(logits, outputs.logits)


def test_the_loss_is_emotion_plus_speaker_cross_entropy_and_speaker_acc_counts_hits():
    head = SpeakerAdversarialClassifier(6, 2, num_speakers=3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    speaker_logits = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    targets = AdversaryTargets(torch.tensor([0, 0]), torch.tensor([1, 2]))
    cross_entropy = torch.nn.functional.cross_entropy
    expected = cross_entropy(logits, targets.labels) + cross_entropy(speaker_logits, targets.speakers)
    outputs = AdversarialOutputs(logits, speaker_logits)
    assert head.loss(outputs, targets).item() == pytest.approx(expected.item())
    assert head.training_metrics(outputs, targets)["speaker_acc"].item() == 0.5
    # Validation: eval-mode logits against emotion indices are plain cross-entropy, and no speaker metric.
    assert head.loss(logits, targets.labels).item() == pytest.approx(cross_entropy(logits, targets.labels).item())
    assert head.training_metrics(logits, targets.labels) == {}


def emotion_losses(weight: float | None, steps: int = 5) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Seeded emotion CE per step (and the final emotion weights) of the plain head (`weight` None) or the
    adversarial one, on fixed random features, with dropout, so that any extra use of the RNG would show."""
    torch.manual_seed(0)
    options = {"projection_size": 8, "pooling": "attentive_stats", "hidden_sizes": [8], "dropout": 0.3}
    if weight is None:
        head = UtteranceClassifier(6, 3, **options)
    else:
        head = SpeakerAdversarialClassifier(6, 3, num_speakers=4, adversary_weight=weight, **options)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    features, lengths = torch.randn(8, 10, 6, generator=generator), torch.tensor([10, 9, 8, 7, 6, 5, 4, 3])
    targets = AdversaryTargets(torch.randint(3, (8,), generator=generator), torch.randint(4, (8,), generator=generator))
    losses = []
    for _ in range(steps):
        outputs = head(features, lengths)
        logits = outputs if weight is None else outputs.logits
        losses.append(torch.nn.functional.cross_entropy(logits, targets.labels).item())
        loss = head.loss(outputs, targets.labels if weight is None else targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    emotion = {k: v.detach().clone() for k, v in head.state_dict().items() if not k.startswith("speaker_")}
    return losses, emotion


def test_with_weight_zero_emotion_training_is_exactly_plain_training():
    # Equality checked: the emotion cross-entropy of every step and the emotion weights after five AdamW steps are
    # bit-identical. The speaker head still trains (its loss is in the total) but lambda = 0 sends no gradient into
    # the pooled features, and it is built after the emotion modules, so both heads start from the same weights.
    plain_losses, plain_weights = emotion_losses(None)
    zero_losses, zero_weights = emotion_losses(0.0)
    assert zero_losses == plain_losses
    assert zero_weights.keys() == plain_weights.keys()
    assert all(torch.equal(zero_weights[k], plain_weights[k]) for k in plain_weights)
    # With lambda > 0 the reversed speaker gradient changes the emotion path from the second step on.
    adversarial_losses, _ = emotion_losses(1.0)
    assert adversarial_losses[0] == plain_losses[0] and adversarial_losses[-1] != plain_losses[-1]


def test_the_plain_emotion_head_keeps_its_parameter_names_and_the_adversary_only_adds_its_own():
    plain = EmotionTask().build_head(6)
    assert type(plain) is UtteranceClassifier
    adversarial = EmotionTask(speaker_adversary={"speakers": ["a", "b", "c"]}).build_head(6)
    plain_keys, adversarial_keys = set(plain.state_dict()), set(adversarial.state_dict())
    assert plain_keys == {"projection.weight", "projection.bias", "classifier.0.weight", "classifier.0.bias"}
    assert plain_keys < adversarial_keys
    assert all(key.startswith("speaker_classifier.") for key in adversarial_keys - plain_keys)
    assert adversarial.speaker_classifier[-1].out_features == 3


def test_a_task_with_the_adversary_and_ecapa_pooling_round_trips_through_its_config():
    task = EmotionTask(
        pooling="ecapa",
        ecapa=SMALL_ECAPA,
        speaker_adversary=SpeakerAdversaryConfig(weight=0.3, hidden_size=0, speakers=["s1", "s2"]),
    )
    config = json.loads(json.dumps(task.config()))  # plain data, as a checkpoint or strata.json holds it
    again = task_from_config(config)
    assert json.loads(json.dumps(again.config())) == config
    assert again.speaker_adversary == SpeakerAdversaryConfig(weight=0.3, hidden_size=0, speakers=["s1", "s2"])
    assert again.ecapa == SMALL_ECAPA
    head = again.build_head(10)
    assert head.adversary_weight == 0.3 and head.pooling.output_size == 12
    assert task_from_config(EmotionTask().config()).speaker_adversary is None


def test_the_adversary_options_are_checked():
    with pytest.raises(ValueError, match="weight must be >= 0"):
        EmotionTask(speaker_adversary={"weight": -1.0})
    with pytest.raises(ValueError, match=r"unknown .*'lambda'"):
        EmotionTask(speaker_adversary={"lambda": 1.0})
    with pytest.raises(ValueError, match="at least two speakers.*speaker_adversary.speakers"):
        EmotionTask(speaker_adversary={}).build_head(6)


def test_speakers_come_from_the_training_manifest_and_only_training_reads_them(mini_corpus, tmp_path):
    train = mini_corpus / "emotion" / "train.jsonl"
    init_args = EmotionTask.complete_config({"speaker_adversary": {"weight": 0.5}}, str(train), None)
    task = EmotionTask(**init_args)
    manifest = read_manifest(train, fields=task.fields_for("train"))
    speakers = sorted({entry["speaker"] for entry in manifest.entries})
    assert task.speaker_adversary.speakers == speakers and task.speaker_adversary.weight == 0.5
    targets = task.collate_targets(task.targets(manifest, "train"))
    assert isinstance(targets, AdversaryTargets)
    assert targets.speakers.tolist() == [speakers.index(entry["speaker"]) for entry in manifest.entries]
    assert targets.labels.tolist() == EmotionTask().targets(manifest, "train")
    # Valid and test speakers are others (unseen): their targets are the emotions alone, and need no speaker field.
    assert task.fields_for("valid") == task.fields_for("test") == {"emotion": str}
    assert isinstance(task.collate_targets(task.targets(manifest, "valid")), torch.Tensor)
    # A checkpoint's speakers win over the manifest's.
    resumed = EmotionTask.complete_config(
        {"speaker_adversary": {}}, str(train), {"speaker_adversary": {"speakers": ["x", "y"]}}
    )
    assert resumed["speaker_adversary"]["speakers"] == ["x", "y"]
    # A training line without a speaker is an error naming it.
    lines = train.read_text().splitlines()
    entry = json.loads(lines[1])
    del entry["speaker"]
    broken = tmp_path / "train.jsonl"
    broken.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]) + "\n")
    with pytest.raises(ManifestError, match=r"line 2.*missing field 'speaker'"):
        read_manifest(broken, fields=task.fields_for("train"), check_audio=False)


def emotion_splits(mini_corpus) -> dict[str, str]:
    emotion = mini_corpus / "emotion"
    return {"train": str(emotion / "train.jsonl"), "valid": str(emotion / "valid.jsonl")}


def test_an_adversarial_training_step_runs_on_the_mini_corpus_and_logs_speaker_accuracy(mini_corpus):
    splits = emotion_splits(mini_corpus)
    task = EmotionTask(**EmotionTask.complete_config({"speaker_adversary": {}}, splits["train"], None))
    L.seed_everything(0)
    module = SSLTaskModule(task, upstream=UpstreamConfig(name="fbank"))
    data = ManifestDataModule(**splits, max_batch_seconds=20, num_workers=0, seed=0, spec=module.input_spec())
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=data)
    accuracy = trainer.callback_metrics["train/speaker_acc_step"]
    assert 0.0 <= float(accuracy) <= 1.0
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])


def test_an_emotion_task_with_ecapa_pooling_trains_a_step(mini_corpus):
    loss = first_step_loss(emotion_splits(mini_corpus), None, task=EmotionTask(pooling="ecapa", ecapa=SMALL_ECAPA))
    assert loss == pytest.approx(loss) and 0.0 < loss < 10.0  # finite, and near ln 4 for four classes


def test_strata_fit_test_and_predict_with_the_adversary_fill_the_speakers_and_log_speaker_accuracy(
    mini_corpus, tmp_path
):
    splits = emotion_splits(mini_corpus)
    # fit and test take the same task options, as a recipe's config gives both (the test's head must have the
    # checkpoint's speaker classifier to load it); the test takes the speakers from the checkpoint.
    common = ["--config", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar",
              "false", "--model.task.speaker_adversary.weight", "0.5"]  # fmt: skip
    fit = ["--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", "--data.train", splits["train"],
           "--data.valid", splits["valid"]]  # fmt: skip
    assert main(["fit", *common, *fit]) == 0
    train = read_manifest(splits["train"], fields={"speaker": str}, check_audio=False)
    checkpoint = torch.load(next((tmp_path / "checkpoints").glob("best*.ckpt")), weights_only=True)
    adversary = checkpoint["hyper_parameters"]["task"]["init_args"]["speaker_adversary"]
    assert adversary["weight"] == 0.5
    assert adversary["speakers"] == sorted({entry["speaker"] for entry in train.entries})
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    assert any(row.get("train/speaker_acc_step") for row in rows)
    # The test (unseen speakers, no adversary targets) scores the emotion logits as a plain run's would.
    assert main(["test", *common, "--data.test", str(mini_corpus / "emotion" / "test.jsonl")]) == 0
    assert 0.0 <= json.loads((tmp_path / "results.json").read_text())["UA"] <= 1.0
    # An export predicts what the test scored: eval mode reads the emotion logits alone.
    predicted = export_and_predict(tmp_path, mini_corpus / "emotion" / "test.jsonl", tmp_path / "predict")
    tested = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predicted] == [t["label"] for t in tested]
