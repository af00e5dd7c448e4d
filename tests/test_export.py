"""`strata export` and `load_model`: a fine-tuned upstream travels in the export, a frozen one does not; the model
card says what the test measured; untrusted, corrupt and missing models are clear errors, never code run."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
from exports import export_and_predict, predict_in_new_process
from safetensors import safe_open

from recipes.audio import read_audio, tone, window_bounds
from recipes.cli import main
from recipes.inference import load_model, read_prediction_manifest, resolve_source
from recipes.tasks import Calibration
from recipes.trust import UntrustedModelError
from upstream import build_upstream

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "egs" / "mini" / "conf" / "emotion.yaml")


def short_run(corpus: Path, run_dir: Path, *options: str) -> Path:
    """A few steps of the mini emotion recipe, then its test: enough of a run to export."""
    common = ["--config", CONFIG, "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
              "--model.upstream.name", "tiny_hubert", *options]  # fmt: skip
    emotion = corpus / "emotion"
    manifests = ["--data.train", str(emotion / "train.jsonl"), "--data.valid", str(emotion / "valid.jsonl")]
    fit = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
           "--trainer.log_every_n_steps", "1"]  # fmt: skip
    assert main(["fit", *common, *fit, *manifests]) == 0
    assert main(["test", *common, "--data.test", str(emotion / "test.jsonl")]) == 0
    return run_dir


@pytest.fixture(scope="module")
def frozen_run(mini_corpus, tmp_path_factory) -> Path:
    return short_run(mini_corpus, tmp_path_factory.mktemp("frozen"))


@pytest.fixture(scope="module")
def export(frozen_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "frozen"
    assert main(["export", str(frozen_run), "--out", str(out)]) == 0
    return out


def weight_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())  # noqa: SIM118 -- not a dict


def test_a_fine_tuned_upstream_travels_in_the_export_and_predicts_as_the_run(mini_corpus, tmp_path):
    trained = ["--model.upstream.trainable", "all", "--model.upstream_lr", "1e-3"]
    run_dir = short_run(mini_corpus, tmp_path / "run", *trained)
    predicted = export_and_predict(run_dir, mini_corpus / "emotion" / "test.jsonl", tmp_path)
    names = weight_names(tmp_path / "export" / "model.safetensors")
    assert any(name.startswith("upstream.") for name in names) and any(name.startswith("head.") for name in names)
    config = json.loads((tmp_path / "export" / "strata.json").read_text())
    assert config["upstream"]["weights_included"] and config["upstream"]["trainable"] == "all"
    tested = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predicted] == [t["label"] for t in tested]
    for p, t in zip(predicted, tested, strict=True):
        assert max(abs(p["scores"][c] - t["scores"][c]) for c in t["scores"]) < 1e-5
    # The fine-tuned weights are the ones in use: the preset's own (untrained) upstream answers differently.
    fresh = load_model(tmp_path / "export")
    fresh.module.upstream.load_state_dict(build_upstream("tiny_hubert").state_dict())
    wav = read_audio(tested[0]["audio"], 16000)
    assert fresh.predict(wav, sample_rate=16000)["scores"] != pytest.approx(predicted[0]["scores"], abs=1e-5)


def test_a_local_upstream_folder_travels_in_the_export_and_predicts_exactly_as_tested(mini_corpus, tiny_dirs, tmp_path):
    """A frozen upstream from a folder on this machine (here a group-norm wav2vec 2.0, which sees the padding, as the
    base checkpoints do) is copied into the export, which then works with the folder gone; predict batches a
    manifest as the run's test did, so its answers are exactly the test's."""
    local = shutil.copytree(tiny_dirs["wav2vec2"], tmp_path / "my_upstream")
    run_dir = short_run(mini_corpus, tmp_path / "run", "--model.upstream.name", f"hf:{local}")
    export = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(export)]) == 0
    config = json.loads((export / "strata.json").read_text())
    assert config["upstream"]["bundled"] == "upstream" and (export / "upstream" / "config.json").is_file()
    assert config["predict"] == {"batch_seconds": 20.0}
    shutil.rmtree(local)
    predicted = predict_in_new_process(export, mini_corpus / "emotion" / "test.jsonl", tmp_path)
    tested = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["scores"] for p in predicted] == [t["scores"] for t in tested]  # exactly
    # Batched otherwise, the same utterances get other answers.
    model = load_model(export)
    manifest = read_prediction_manifest(mini_corpus / "emotion" / "test.jsonl", model.task)
    other = list(model.predict_manifest(manifest, batch_seconds=120, num_workers=0, progress=False))
    assert [p["scores"] for p in other] != [t["scores"] for t in tested]


def test_a_frozen_upstream_is_left_out_and_checked_by_its_fingerprint(frozen_run, export):
    names = weight_names(export / "model.safetensors")
    assert names and not any(name.startswith("upstream.") for name in names)
    config = json.loads((export / "strata.json").read_text())
    assert config["upstream"] == {"name": "tiny_hubert", "trainable": "frozen", "fingerprint": config["upstream"][
        "fingerprint"], "weights_included": False}  # fmt: skip
    upstream_bytes = sum(p.numel() * p.element_size() for p in build_upstream("tiny_hubert").parameters())
    assert (export / "model.safetensors").stat().st_size < upstream_bytes
    # Another upstream under the same name is refused, naming both fingerprints.
    config["upstream"]["fingerprint"] = "0123456789abcdef"
    broken = export.parent / "wrong_upstream"
    shutil.copytree(export, broken)
    (broken / "strata.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="0123456789abcdef"):
        load_model(broken)


def test_the_model_card_gives_the_figures_thresholds_data_hashes_and_usage(frozen_run, export, mini_corpus):
    card = (export / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: strata\n") and "pipeline_tag: audio-classification" in card
    results = json.loads((frozen_run / "results.json").read_text())
    assert f"| UA     | {100 * results['UA']:.2f} |" in card
    train = mini_corpus / "emotion" / "train.jsonl"
    assert hashlib.sha256(train.read_bytes()).hexdigest() in card
    assert "strata predict" in card and "load_model(" in card
    config = json.loads((export / "strata.json").read_text())
    assert config["results"]["UA"] == results["UA"] and config["data"]["train"]["path"] == str(train)


def test_a_run_folder_an_export_and_hf_folder_give_the_same_answers(frozen_run, export):
    wav = tone(seconds=1.5, frequency=220.0)
    answers = [load_model(source).predict(wav, sample_rate=16000) for source in (frozen_run, export, f"hf:{export}")]
    for answer in answers[1:]:
        assert answer["label"] == answers[0]["label"]
        assert answer["scores"] == pytest.approx(answers[0]["scores"], abs=1e-6)


def test_any_sample_rate_is_resampled(export, tmp_path):
    model = load_model(export)
    wav = tone(seconds=1.2, frequency=300.0, sample_rate=8000)
    path = tmp_path / "eight_khz.wav"
    soundfile.write(path, wav.numpy(), 8000, subtype="FLOAT")
    from_file = model.predict(path)
    from_waveform = model.predict(wav, sample_rate=8000)
    assert from_file["scores"] == pytest.approx(from_waveform["scores"], abs=1e-6)
    with pytest.raises(ValueError, match="sample_rate"):
        model.predict(wav)


def test_predict_on_files_writes_one_line_per_file_on_stdout(export, mini_corpus, capsys):
    wavs = sorted((mini_corpus / "wav").glob("*.wav"))[:3]
    capsys.readouterr()
    assert main(["predict", str(export), *map(str, wavs)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["id"] for line in lines] == [w.stem for w in wavs]
    assert all(set(line) == {"id", "audio", "label", "scores"} for line in lines)


def test_missing_audio_models_and_outputs_are_one_line_errors(export, tmp_path, capsys):
    cases = [
        (["predict", str(export), str(tmp_path / "nowhere.wav")], "nowhere.wav"),
        (["predict", str(tmp_path / "no_model"), str(tmp_path / "a.wav")], "no_model does not exist"),
        (["predict", str(export)], "give audio files or --manifest"),
        (["export", str(tmp_path), "--out", str(tmp_path / "x")], "run `strata test` first"),
        (["export", str(export.parent), "--out", str(export)], "already exists"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error


def corrupt_copy(export: Path, where: Path, file: str, text: bytes) -> Path:
    broken = where / f"broken_{file}"
    shutil.copytree(export, broken)
    (broken / file).write_bytes(text)
    return broken


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("model.safetensors", b"\x00" * 40, "could not read the weights"),
        ("strata.json", b"{not json", "not a readable strata export config"),
        ("strata.json", b'{"format": 99, "module": {}}', "export format 99"),
        ("calibration.safetensors", b"garbage!", "could not read the calibration"),
    ],
)
def test_a_corrupt_export_is_a_clear_error(export, tmp_path, file, text, message):
    with pytest.raises(ValueError, match=message):
        load_model(corrupt_copy(export, tmp_path, file, text))


def test_weights_of_another_model_are_refused_naming_the_mismatch(export, tmp_path):
    broken = tmp_path / "other"
    shutil.copytree(export, broken)
    config = json.loads((broken / "strata.json").read_text())
    config["module"]["task"]["init_args"]["projection_size"] = 64  # the weights are of a 128-wide projection
    (broken / "strata.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the model"):
        load_model(broken)


@pytest.fixture
def booby_trap(tmp_path, monkeypatch, request) -> tuple[str, Path]:
    """A module (its name unique to the test) that leaves a file behind when imported: proof that refusing it ran
    none of its code. Its `Task` is strata's emotion task; its `factory` raises."""
    name = f"strata_trap_{abs(hash(request.node.nodeid))}"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('ran').write_text('imported')\n"
        "from recipes.tasks import EmotionTask as Task\ndef factory(**options):\n    raise RuntimeError('ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, tmp_path / "ran"


@pytest.mark.parametrize(
    "section, key, value, named",
    [("task", "class_path", "{}.Task", "the task class '{}.Task'"),
     ("upstream", "name", "{}:factory", "the upstream '{}:factory'")],
)  # fmt: skip
def test_an_export_naming_code_outside_strata_is_refused_without_running_it(
    export, tmp_path, booby_trap, section, key, value, named, capsys
):
    trap, marker = booby_trap
    foreign = tmp_path / "foreign"
    shutil.copytree(export, foreign)
    config = json.loads((foreign / "strata.json").read_text())
    config["module"][section][key] = value.format(trap)
    (foreign / "strata.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedModelError, match=named.format(trap)):
        load_model(foreign)
    assert main(["predict", str(foreign), str(tmp_path / "any.wav")]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert not marker.exists()  # nothing of it was imported
    # Trusted on request, its code runs: the import leaves its mark (and its factory raises).
    try:
        load_model(foreign, trust_code=True)
    except RuntimeError as error:
        assert str(error) == "ran"  # noqa: PT017
    assert marker.exists()


def test_a_checkpoint_naming_a_foreign_task_is_refused(frozen_run, tmp_path, booby_trap):
    trap, marker = booby_trap
    checkpoint = torch.load(frozen_run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["task"]["class_path"] = f"{trap}.Task"
    path = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedModelError):
        load_model(path)
    assert not marker.exists()


def test_an_unreachable_hub_model_is_a_clear_error(tmp_path):
    command = [sys.executable, "-c", "from recipes.inference import resolve_source; resolve_source('hf:nobody/none')"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "could not fetch the strata model hf:nobody/none from the Hugging Face hub" in done.stderr
    assert resolve_source(f"hf:{tmp_path}") == tmp_path  # a folder after hf: is read as it is


def test_calibration_round_trips_values_and_tensors(tmp_path):
    calibration = Calibration({"thresholds": {"fan/00": 0.25}}, {"reference/fan/00/source": torch.randn(5, 3)})
    loaded = Calibration.load(calibration.save(tmp_path / "c.safetensors"))
    assert loaded.values == calibration.values
    assert torch.equal(loaded.tensors["reference/fan/00/source"], calibration.tensors["reference/fan/00/source"])
    assert not list(tmp_path.glob(".*partial"))


def test_windows_cover_the_input_and_cut_at_the_quietest_point():
    generator = torch.Generator().manual_seed(0)
    wav = torch.randn(16000 * 25, generator=generator)
    wav[16000 * 8 : 16000 * 8 + 800] = 0  # a 50 ms pause 8 s in, inside the search span of the first cut
    bounds = window_bounds(wav, 16000, window_seconds=10.0, search_seconds=3.0)
    assert bounds[0][0] == 0 and bounds[-1][1] == wav.numel()
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(end - start <= 16000 * 10 for start, end in bounds)
    assert 16000 * 8 <= bounds[0][1] <= 16000 * 8 + 800
    assert window_bounds(wav[:16000], 16000, 10.0) == [(0, 16000)]


def test_an_export_that_fails_half_way_leaves_the_previous_export_whole(frozen_run, tmp_path, monkeypatch):
    import errno

    from recipes import export as export_module

    out = tmp_path / "model"
    assert main(["export", str(frozen_run), "--out", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    written = export_module.write_export

    def disk_full(loaded, folder, *args, **kwargs):
        written(loaded, folder, *args, **kwargs)
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "write_export", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_module.export_run(frozen_run, out, overwrite=True)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # the half-written folder removed
    monkeypatch.undo()
    assert main(["export", str(frozen_run), "--out", str(out), "--force"]) == 0  # replaced whole
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # nor the replaced one
