"""Tasks as typed configs: plain serialisation, heads that own their loss, ASD's embedding choice, typed options."""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from downstream.asd import FeatExHead, FeatExOutput, PooledEmbedding, SpectrumEmbedding, featex_targets
from downstream.classifier import UtteranceClassifier
from downstream.embedding import EmbeddingHead
from downstream.losses import AAMSoftmaxLoss, SoftmaxLoss
from downstream.speaker import EcapaConfig, XVector
from recipes.cli import main
from recipes.tasks import (
    TASKS,
    AsdTask,
    AsrTask,
    EmotionTask,
    SpeakerIdTask,
    SpeakerVerificationTask,
    Task,
    task_class,
    task_from_config,
)
from recipes.tokenizer import train_tokenizer


def sample_tasks(tmp_path) -> list[Task]:
    """One task of every registered kind, several options away from their defaults."""
    tokenizer = train_tokenizer(["ABC CAB"], tmp_path / "tok.model")
    return [
        EmotionTask(classes=["a", "b", "c"], hidden_sizes=[8], dropout=0.1),
        SpeakerIdTask(["x", "y"], projection_size=16, crop_seconds=2.0),
        SpeakerVerificationTask(["x", "y"], extractor="xvector", xvector={"embedding_size": 32}, margin=0.3),
        AsrTask(tokenizer=str(tokenizer.path), hidden_size=8, num_layers=1),
        AsdTask(classes=["fan/00/", "pump/00/"], embedding="featex", scorer="kmeans", kmeans={"num_centers": 4}),
    ]


def test_every_task_config_round_trips_through_its_class_path(tmp_path):
    tasks = sample_tasks(tmp_path)
    assert {task.name for task in tasks} == set(TASKS)
    for task in tasks:
        config = task.config()
        rebuilt = task_class(config["class_path"])(**config["init_args"])
        assert rebuilt.config() == config, task.name
        assert type(rebuilt) is type(task)
    verification, asd = tasks[2].config()["init_args"], tasks[4].config()["init_args"]
    assert verification["xvector"]["embedding_size"] == 32 and asd["kmeans"]["num_centers"] == 4
    assert asd["embedding"] == "featex" and "head" not in asd and "featex" not in asd


def test_a_task_config_with_an_option_the_task_does_not_take_names_those_it_does():
    task = task_from_config({"class_path": "recipes.tasks.AsdTask", "init_args": {"embedding": "frozen"}})
    assert isinstance(task, AsdTask) and task.embedding == "frozen"
    with pytest.raises(ValueError, match=r"\['head'\] for task 'asd'; valid options: \['classes', 'embedding'"):
        task_from_config({"class_path": "recipes.tasks.AsdTask", "init_args": {"head": "none"}})


def test_checkpoint_hyperparameters_of_every_task_load_weights_only(tmp_path):
    for task in sample_tasks(tmp_path):
        path = tmp_path / f"{task.name}.pt"
        torch.save({"task": task.config()}, path)
        assert torch.load(path, weights_only=True)["task"] == task.config()


def test_a_freshly_built_head_computes_the_loss_without_task_state(tmp_path):
    features, lengths = torch.randn(3, 20, 12), torch.tensor([20, 15, 9])
    wavs, wav_lengths = torch.randn(3, 4000) * 0.1, torch.tensor([4000, 3000, 2000])
    for task in sample_tasks(tmp_path):
        head = task.build_head(12)
        if task.name == "asr":
            tokenizer = task.text_tokenizer
            targets = task.collate_targets([tokenizer.encode("ABC"), tokenizer.encode("CAB"), tokenizer.encode("A")])
        else:
            targets = torch.tensor([0, 1, 0])
        inputs = (features, lengths, wavs, wav_lengths) if getattr(head, "reads_audio", False) else (features, lengths)
        del task  # the loss needs the head alone
        loss = head.loss(head(*inputs), targets)
        assert loss.shape == () and torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_heads_compute_the_loss_their_task_trained_with():
    features, lengths = torch.randn(4, 10, 6), torch.tensor([10, 8, 6, 4])
    targets = torch.tensor([0, 1, 1, 0])
    classifier = EmotionTask(classes=["a", "b"]).build_head(6)
    assert isinstance(classifier, UtteranceClassifier)
    logits = classifier(features, lengths)
    assert torch.allclose(classifier.loss(logits, targets), nn.functional.cross_entropy(logits, targets))
    head = SpeakerVerificationTask(["x", "y"], loss_type="softmax", xvector={"embedding_size": 8},
                                   extractor="xvector").build_head(6)  # fmt: skip
    assert isinstance(head.extractor, XVector) and isinstance(head.criterion, SoftmaxLoss)
    out = head(features, lengths)
    assert torch.allclose(head.loss(out, targets), nn.functional.cross_entropy(out.logits, targets))


def test_asd_embedding_choices_build_their_heads():
    classes = ["fan/00/", "pump/00/", "valve/00/"]
    trained = AsdTask(classes=classes, embedding_size=16).build_head(10)
    assert isinstance(trained, EmbeddingHead) and isinstance(trained.extractor, PooledEmbedding)
    assert trained.embedding_size == 16 and trained.classifier.num_classes == 3
    assert isinstance(trained.criterion, AAMSoftmaxLoss) and trained.criterion.margin == 0.2
    featex = AsdTask(classes=classes, embedding="featex", embedding_size=16, exchange_probability=0.25).build_head(10)
    assert isinstance(featex, FeatExHead) and isinstance(featex.spectrum_branch, SpectrumEmbedding)
    assert featex.classifier.num_classes == 6 and featex.exchange_probability == 0.25 and featex.embedding_size == 16
    frozen = AsdTask(embedding="frozen").build_head(10)
    assert isinstance(frozen, PooledEmbedding) and not list(frozen.parameters()) and frozen.embedding_size == 20
    assert [AsdTask.trains({"embedding": e}) for e in ("trained", "featex", "frozen")] == [True, True, False]
    assert AsdTask.trains({})  # trained by default
    assert AsdTask.complete_config({"embedding": "frozen"}, None, None) == {"embedding": "frozen"}  # no classes
    with pytest.raises(ValueError, match=r"unknown asd embedding 'none'; choose from \['featex', 'frozen', 'trained"):
        AsdTask(embedding="none")


def test_featex_head_loss_is_the_criterion_on_soft_pair_targets():
    torch.manual_seed(0)
    head = AsdTask(classes=["a/0/", "b/0/"], embedding="featex", embedding_size=16, exchange_probability=1.0)
    head = head.build_head(6).train()
    targets = torch.tensor([0, 1, 1, 0])
    out = head(torch.randn(4, 5, 6), torch.full((4,), 5), torch.randn(4, 4000), torch.full((4,), 4000))
    assert isinstance(out, FeatExOutput) and (out.partners != torch.arange(4)).all()
    expected = head.criterion(out.logits, featex_targets(targets, out.partners, 2))
    assert torch.allclose(head.loss(out, targets), expected)


def test_misspelt_extractor_and_scorer_options_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['chanels'\] for speaker extractor 'ecapa'; valid options: \['channels'"):
        SpeakerVerificationTask(ecapa={"chanels": 64})
    with pytest.raises(ValueError, match=r"\['kk'\] for anomaly scorer 'knn'; valid options: \['k'\]"):
        AsdTask(knn={"kk": 2})
    with pytest.raises(ValueError, match=r"\['centers'\] for anomaly scorer 'kmeans'; valid options: \['num_centers'"):
        AsdTask(scorer="kmeans", kmeans={"centers": 2})
    with pytest.raises(ValueError, match="k must be positive"):
        AsdTask(knn={"k": 0})
    with pytest.raises(ValueError, match=r"unknown speaker extractor 'resnet'; choose from \['ecapa', 'xvector'\]"):
        SpeakerVerificationTask(extractor="resnet")


@pytest.mark.parametrize(
    ("task", "option", "value"),
    [("SpeakerVerificationTask", "ecapa.chanels", "64"), ("AsdTask", "knn.kk", "2"), ("AsdTask", "embeding", "frozen")],
)
def test_a_misspelt_task_option_on_the_command_line_is_a_usage_error_naming_it(task, option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.task", f"recipes.tasks.{task}", f"--model.task.init_args.{option}", value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.split("\nerror:", 1)[1]  # after the usage
    assert f"--{option}=" in error or f"'{option}' is not accepted" in error


@pytest.mark.parametrize(
    ("task", "options"),
    [
        ("EmotionTask", ["classes", "hidden_sizes", "dropout", "ecapa.channels", "speaker_adversary"]),
        ("SpeakerIdTask", ["speakers", "crop_seconds", "ecapa.channels"]),
        ("SpeakerVerificationTask", ["extractor {ecapa,xvector}", "ecapa.channels", "xvector.stats_channels"]),
        ("AsrTask", ["tokenizer", "decoder {greedy,beam}", "lm_weight"]),
        ("AsdTask", ["embedding {trained,featex,frozen}", "scorer {knn,kmeans}", "knn.k", "kmeans.num_centers"]),
    ],
)
def test_task_help_lists_every_option_with_its_type(task, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.task.help", f"recipes.tasks.{task}"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert f"--model.task.{option}" in out
    # A type jsonargparse cannot resolve would be shown, and accepted, unvalidated.
    assert "Unvalidated" not in out


def test_fit_help_lists_the_interface_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for option in ("name", "layer", "normalize", "groups", "attention_size", "attention_layers", "output_size"):
        assert f"--model.interface.{option}" in out
    assert "--model.upstream.trainable" in out and "Unvalidated" not in out


def test_a_config_that_sets_ecapa_channels_aggregates_to_its_own_blocks_times_channels(capsys):
    # jsonargparse starts a nested config from the default instance: a size derived from the default C (1536)
    # must not survive a config that sets C = 128 (it tripled the mini ECAPA and its training time).
    config = Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "speaker_verification.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    ecapa = yaml.safe_load(capsys.readouterr().out)["model"]["task"]["init_args"]["ecapa"]
    assert ecapa["channels"] == 128 and ecapa["aggregation_channels"] is None
    extractor = SpeakerVerificationTask(speakers=["a", "b"], ecapa=ecapa).build_head(80).extractor
    assert EcapaConfig(**ecapa).aggregation_size == 384
    assert sum(p.numel() for p in extractor.parameters()) < 1.0e6  # 0.63M with 384; 1.8M with 1536
