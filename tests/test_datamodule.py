"""The data module learns what it needs of the model from its InputSpec, once, and never reads the model."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch

from recipes.data import write_jsonl
from recipes.datamodule import ManifestDataModule
from recipes.evaluation import SplitEvaluation
from recipes.module import SSLTaskModule, UpstreamConfig
from recipes.tasks import EmotionTask, SpeakerVerificationTask


def emotion_manifest(folder: Path, name: str, seconds: list[float]) -> str:
    rng = np.random.default_rng(0)
    entries = []
    for i, duration in enumerate(seconds):
        path = folder / f"{name}{i}.wav"
        sf.write(path, (rng.standard_normal(int(duration * 16000)) * 0.1).astype("float32"), 16000)
        entries.append({"id": f"{name}{i}", "audio": str(path), "duration": duration, "emotion": "neu", "speaker": "s"})
    return str(write_jsonl(folder / f"{name}.jsonl", entries))


def test_the_data_module_takes_task_rate_and_receptive_field_from_the_spec_with_no_trainer(tmp_path):
    train = emotion_manifest(tmp_path, "train", [0.5, 0.01, 1.0])  # 0.01 s: shorter than tiny_hubert's field
    module = SSLTaskModule(EmotionTask(classes=["neu", "hap"]), upstream=UpstreamConfig(name="tiny_hubert"))
    spec = module.input_spec()
    assert spec.task is module.task and spec.sample_rate == 16000 and spec.min_samples == 400
    data = ManifestDataModule(train=train, valid=train, num_workers=0, spec=spec)
    with pytest.warns(UserWarning, match=r"1 of 3 clips .* shorter than the upstream's receptive field \(400"):
        data.setup("fit")  # no Trainer, no model: the spec is all it reads
    dataset = data.datasets["train"]
    assert dataset.min_samples == 400 and dataset.sample_rate == 16000
    assert dataset.targets == [0, 0, 0]
    assert dataset[1]["wav"].numel() == 400  # the 160-sample clip is padded to the receptive field
    batch = next(iter(data.train_dataloader()))
    assert set(batch) >= {"ids", "wavs", "wav_lengths", "targets"}


def test_a_data_module_without_a_spec_says_how_to_give_it_one(tmp_path):
    data = ManifestDataModule(train=emotion_manifest(tmp_path, "train", [0.5]), num_workers=0)
    with pytest.raises(ValueError, match=r"spec=module.input_spec\(\)"):
        data.setup("fit")


def test_cached_crops_take_their_frame_count_from_the_spec(tmp_path):
    module = SSLTaskModule(SpeakerVerificationTask(speakers=["a", "b"], crop_seconds=1.0))
    data = ManifestDataModule(spec=module.input_spec())
    assert data._crop_frames(1.0) == int(module.upstream.frame_lengths(torch.tensor([16000]))[0]) == 98


def test_the_evaluation_callback_refuses_a_data_module_without_splits():
    class Plain(L.LightningDataModule):
        pass

    with pytest.raises(ValueError, match="split_data"):
        SplitEvaluation._data(SimpleNamespace(datamodule=Plain()))  # a Trainer after fit(datamodule=Plain())


def test_the_module_brings_its_evaluation_callback():
    module = SSLTaskModule(EmotionTask(classes=["neu", "hap"]))
    assert [type(callback) for callback in module.configure_callbacks()] == [SplitEvaluation]
