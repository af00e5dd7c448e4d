"""`strata compare` (one table and one bar chart per task, the best of each metric in bold) and egs/compare.sh,
which runs a recipe for several upstreams and compares them: exercised on the mini corpus with two upstreams."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.cli import main
from recipes.compare import compare, lower_is_better
from recipes.results import Results

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, **results) -> Path:
    """A run folder whose results.json holds `results`, flat, through the writer `strata test` uses."""
    Results.from_dict(results).write(folder)
    return folder


def test_best_is_the_largest_rate_and_the_smallest_error(tmp_path):
    write_run(
        tmp_path / "exp/speaker_verification/a",
        task="speaker_verification",
        upstream="a",
        interface="weighted_sum",
        trainable="frozen",
        EER=0.05,
        **{"minDCF@0.05": 0.30},
        num_trials=10,
    )
    write_run(
        tmp_path / "exp/speaker_verification/b",
        task="speaker_verification",
        upstream="b",
        interface="weighted_sum",
        trainable="frozen",
        EER=0.04,
        **{"minDCF@0.05": 0.35},
        num_trials=10,
    )
    write_run(tmp_path / "exp/emotion/a", task="emotion", upstream="a", interface="weighted_sum", UA=0.6, WA=0.7)
    write_run(tmp_path / "exp/emotion/b", task="emotion", upstream="b", interface="weighted_sum", UA=0.65, WA=0.69)
    table, plot = compare([tmp_path / "exp"], tmp_path / "cmp")
    text = table.read_text()
    assert "| b   | b        | weighted_sum | frozen    | **4.00** | 0.3500" in text  # EER in %, minDCF a fraction
    assert "**0.3000**" in text and "num_trials" not in text  # counts stay in results.json
    assert "**65.00**" in text and "**70.00**" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert lower_is_better("EER") and lower_is_better("WER") and not lower_is_better("official_score")


def test_a_folder_with_results_stands_for_the_runs_below_it(tmp_path):
    mean = write_run(tmp_path / "exp/emotion/a", task="emotion", upstream="a", interface="ws", UA=0.6, WA=0.6)
    write_run(mean / "fold1", task="emotion", upstream="a", interface="ws", UA=0.1, WA=0.1)
    table, _ = compare([mean], tmp_path / "cmp")
    assert "60.00" in table.read_text() and "10.00" not in table.read_text()


def test_compare_command_errors_name_the_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")]) == 2
    assert f"no results.json in or below {tmp_path / 'empty'}" in capsys.readouterr().err


@pytest.mark.parametrize("upstreams", ["fbank,tiny_hubert"])
def test_compare_sh_runs_mini_for_two_upstreams_then_skips_finished_runs(mini_corpus, tmp_path, upstreams):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["bash", str(ROOT / "egs" / "compare.sh"), str(ROOT / "egs" / "mini"), "--upstreams", upstreams,
               "--stage", "1", "--stop_stage", "1", "--data_dir", str(mini_corpus), "--exp_dir", str(tmp_path / "exp"),
               "--out", str(tmp_path / "cmp"), "--", "--trainer.max_epochs", "1",
               "--trainer.enable_progress_bar", "false"]  # fmt: skip
    # another configuration's run, whose name starts like these ones: not one of the runs compared
    write_run(tmp_path / "exp/emotion/fbank_weighted_sum_all", task="emotion", upstream="fbank",
              interface="weighted_sum", trainable="all", UA=0.9, WA=0.9)  # fmt: skip
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| fbank_weighted_sum " in table and "| tiny_hubert_weighted_sum " in table and "UA ↑" in table
    assert "fbank_weighted_sum_all" not in table
    assert (tmp_path / "cmp" / "compare.png").is_file()
    second = subprocess.run(command, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("already done") == 2
