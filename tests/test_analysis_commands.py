"""`strata probe`, `strata analyze cca|mi` and `strata weights` end to end on the mini corpus with tiny_hubert:
one CSV row per layer, the figures written (PNG and PDF), and clear errors."""

import csv
from pathlib import Path

import pytest

from recipes.cache import extract
from recipes.cli import main
from recipes.data import read_manifest
from recipes.results import Results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(mini_corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    manifests = [mini_corpus / task / f"{split}.jsonl" for task in ("emotion", "speaker_id") for split in
                 ("train", "valid", "test")]  # fmt: skip
    extract("tiny_hubert", manifests, folder, dtype="float32", progress=False)
    return folder


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def figures_written(folder: Path, name: str) -> None:
    assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_probe_writes_one_row_per_layer_with_accuracy_and_ua(mini_corpus, cache, tmp_path):
    out, data = tmp_path / "probe", mini_corpus / "speaker_id"
    assert main(["probe", "--cache", str(cache), "--task", "speaker_id", "--train", str(data / "train.jsonl"),
                 "--test", str(data / "test.jsonl"), "--out", str(out)]) == 0  # fmt: skip
    table = rows(out / "probe.csv")
    assert [int(r["layer"]) for r in table] == [0, 1, 2, 3, 4]
    assert all(0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["UA"]) <= 1 for r in table)
    figures_written(out, "probe")
    results = Results.read(out)
    best = max(table, key=lambda r: (float(r["accuracy"]), -int(r["layer"])))
    assert results.details == {"best_layer": int(best["layer"])} and results.metrics["UA"] == float(best["UA"])
    assert results.task == "probe_speaker_id" and results.seed == 0 and results.dataset == str(data / "test.jsonl")
    assert results.num_utterances == len(read_manifest(data / "test.jsonl"))


def test_cca_with_log_mel_and_mi_with_the_speaker(cache, tmp_path):
    assert main(["analyze", "cca", "--cache", str(cache), "--out", str(tmp_path / "cca"), "--max-frames", "4000"]) == 0
    table = rows(tmp_path / "cca" / "cca.csv")
    assert len(table) == 5 and all(0 <= float(r["pwcca"]) <= 1 for r in table)
    figures_written(tmp_path / "cca", "cca")
    assert main(["analyze", "mi", "--cache", str(cache), "--labels", "speaker", "--clusters", "16", "--max-frames",
                 "4000", "--out", str(tmp_path / "mi")]) == 0  # fmt: skip
    table = rows(tmp_path / "mi" / "mi.csv")
    assert len(table) == 5 and all(0 <= float(r["nmi"]) <= 1 for r in table)
    figures_written(tmp_path / "mi", "mi")


def test_weights_of_a_weighted_sum_run_and_of_two_runs(mini_corpus, tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["fit", "--config", str(ROOT / "egs" / "mini" / "conf" / "emotion.yaml"),
                     "--model.upstream.name", "tiny_hubert", "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
                     "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
                     "--data.train", str(mini_corpus / "emotion" / "train.jsonl"),
                     "--data.valid", str(mini_corpus / "emotion" / "valid.jsonl")]) == 0  # fmt: skip
        runs.append(str(run))
    assert main(["weights", runs[0], "--out", str(tmp_path / "one")]) == 0
    table = rows(tmp_path / "one" / "weights.csv")
    assert len(table) == 5 and sum(float(r["weight"]) for r in table) == pytest.approx(1.0)
    figures_written(tmp_path / "one", "weights")
    assert main(["weights", *runs, "--out", str(tmp_path / "two")]) == 0
    assert len(rows(tmp_path / "two" / "weights.csv")) == 10
    figures_written(tmp_path / "two", "weights")


def test_probe_errors_name_what_is_missing(mini_corpus, cache, tmp_path, capsys):
    common = ["probe", "--cache", str(cache), "--train", str(mini_corpus / "emotion" / "train.jsonl"), "--test",
              str(mini_corpus / "emotion" / "test.jsonl"), "--out", str(tmp_path)]  # fmt: skip
    assert main(common) == 2
    assert "say what to probe" in capsys.readouterr().err
    assert main([*common, "--label", "colour"]) == 2
    assert "has no 'colour' field to probe" in capsys.readouterr().err
    assert main([*common, "--task", "emotion", "--layers", "0,9"]) == 2
    assert "layers [9] are not in" in capsys.readouterr().err


def test_cca_of_fbank_with_log_mel_is_one(mini_corpus, tmp_path):
    # fbank is the log-mel the reference computes (same frames): the pipeline's alignment check.
    extract("fbank", [mini_corpus / "emotion" / "test.jsonl"], tmp_path / "cache", dtype="float32", progress=False)
    assert main(["analyze", "cca", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "cca")]) == 0
    assert float(rows(tmp_path / "cca" / "cca.csv")[0]["pwcca"]) > 0.999
