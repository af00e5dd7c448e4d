"""`results.json` (`recipes/results.py`): written and read back the same, old flat files still read, malformed ones
named, one formatting rule, and `strata report` and `strata compare` showing the same numbers for the same runs."""

import json
from pathlib import Path

import pytest

from recipes.cli import main
from recipes.compare import compare
from recipes.results import Results, find_results, format_metric, markdown_table, table_metrics


def write_run(folder: Path, task: str, upstream: str, metrics: dict[str, float], **fields) -> Path:
    """A run folder holding a results.json written as `strata test` writes it."""
    fields = {"interface": "weighted_sum", "trainable": "frozen", "dataset": "test.jsonl", "seed": 0, **fields}
    Results(task=task, upstream=upstream, metrics=metrics, **fields).write(folder)
    return folder


def verification_results() -> Results:
    return Results(
        task="speaker_verification",
        upstream="hubert_base",
        interface="weighted_sum",
        trainable="frozen",
        metrics={"EER": 0.05, "minDCF@0.05": 0.3},
        dataset="data/test.jsonl",
        seed=0,
        num_utterances=40,
        details={"num_trials": 37720, "mean_subtraction": True},
    )


def test_results_written_then_read_are_the_same(tmp_path):
    results = verification_results()
    path = results.write(tmp_path / "run")
    assert path == tmp_path / "run" / "results.json"
    assert Results.read(path) == results and Results.read(tmp_path / "run") == results


def test_the_written_file_stays_flat_with_the_key_names_recipes_read(tmp_path):
    data = json.loads(verification_results().write(tmp_path).read_text())
    assert data == {"EER": 0.05, "minDCF@0.05": 0.3, "task": "speaker_verification", "upstream": "hubert_base",
                    "interface": "weighted_sum", "trainable": "frozen", "dataset": "data/test.jsonl", "seed": 0,
                    "num_utterances": 40, "num_trials": 37720, "mean_subtraction": True}  # fmt: skip


def test_an_old_flat_probe_results_json_reads_with_floats_as_metrics_and_the_rest_as_details(tmp_path):
    # As `strata probe` wrote it before results.py: no dataset, seed or num_utterances.
    old = {"accuracy": 0.5, "UA": 0.25, "best_layer": 3, "task": "probe_speaker_id", "upstream": "tiny_hubert",
           "interface": "linear probe", "trainable": "frozen"}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(old))
    results = Results.read(tmp_path)
    assert results.metrics == {"accuracy": 0.5, "UA": 0.25} and results.details == {"best_layer": 3}
    assert results.task == "probe_speaker_id" and results.interface == "linear probe"
    assert results.dataset is None and results.seed is None and results.num_utterances is None
    assert results.to_dict() == old  # what it lacked is not made up on the way back


def test_a_results_json_missing_descriptive_fields_reads_them_as_unknown(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"task": "emotion", "UA": 0.6}))
    results = Results.read(tmp_path)
    assert (results.upstream, results.interface, results.trainable, results.num_utterances) == ("?", "?", "?", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"task": "emotion", "UA": 0.6', "is not valid JSON"),
        ("[0.6, 0.7]", "holds a JSON list, not an object of results"),
        ('{"task": "emotion", "seed": "zero"}', "'seed' must be an integer"),
        ('{"task": "emotion", "upstream": 3}', "'upstream' must be a string"),
    ],
)
def test_a_malformed_results_json_is_an_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        Results.read(path)
    assert str(path) in str(error.value)


def test_a_float_detail_is_refused_because_it_would_read_back_as_a_metric():
    with pytest.raises(ValueError, match="'threshold' is a float"):
        Results(task="asd", upstream="u", interface="i", trainable="frozen", details={"threshold": 0.5})
    with pytest.raises(ValueError, match="'seed' is a descriptive field"):
        Results(task="asd", upstream="u", interface="i", trainable="frozen", metrics={"seed": 1.0})
    with pytest.raises(ValueError, match="metric 'UA' must be a number"):
        Results(task="emotion", upstream="u", interface="i", trainable="frozen", metrics={"UA": "0.6"})


def test_rates_print_in_percent_and_min_dcf_and_values_beyond_one_as_fractions():
    assert format_metric("EER", 0.0512) == "5.12" and format_metric("UA", 0.6) == "60.00"
    assert format_metric("minDCF@0.01", 0.41234) == "0.4123"
    assert format_metric("loss", 2.5) == "2.5000"  # no rate
    assert format_metric("num_trials", 10) == "10" and format_metric("seed", None) == ""


def test_table_metrics_are_every_runs_metrics_in_order_without_per_section_breakdowns():
    a = Results("asd", "u", "i", "frozen", metrics={"official_score": 0.6, "AUC_source/fan": 0.7,
                                                    "AUC_source/fan/00": 0.7})  # fmt: skip
    b = Results("asd", "v", "i", "frozen", metrics={"pAUC/fan": 0.5, "official_score": 0.5})
    assert table_metrics([a, b]) == ["official_score", "AUC_source/fan", "pAUC/fan"]


def test_find_results_takes_a_run_folder_for_the_runs_below_it_and_each_file_once(tmp_path):
    mean = write_run(tmp_path / "exp/emotion/a", "emotion", "a", {"UA": 0.6})
    write_run(mean / "fold1", "emotion", "a", {"UA": 0.1})
    other = write_run(tmp_path / "exp/emotion/b", "emotion", "b", {"UA": 0.5})
    assert find_results([mean, tmp_path / "exp" / "emotion" / ".." / "emotion" / "a"]) == [mean / "results.json"]
    assert len(find_results([tmp_path / "exp"])) == 3
    assert find_results([other / "results.json"]) == [other / "results.json"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json in or below"):
        find_results([tmp_path / "empty"])


def test_markdown_table_pads_every_column_to_its_widest_cell():
    assert markdown_table(["a", "metric"], [["long", 1]]).splitlines() == [
        "| a    | metric |",
        "|------|--------|",
        "| long | 1      |",
    ]


def table_cells(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """`{task: {upstream: {column: cell}}}` of every `## task` table in a report or a comparison; bold and the
    better-direction arrows are taken off, so the two can be compared."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    task, header = None, None
    for line in text.splitlines():
        if line.startswith("## "):
            task, header = line[3:].strip(), None
            tables[task] = {}
        elif line.startswith("| ") and task is not None:
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            if header is None:
                header = [c.removesuffix(" ↑").removesuffix(" ↓") for c in cells]
            else:
                row = dict(zip(header, cells, strict=True))
                tables[task][row["upstream"]] = row
    return tables


def test_report_and_compare_show_the_same_numbers_for_the_same_runs(tmp_path, capsys):
    exp = tmp_path / "exp"
    details = {"num_trials": 10, "mean_subtraction": True}
    write_run(exp / "sv/a", "speaker_verification", "a", {"EER": 0.05, "minDCF@0.05": 0.3}, details=details)
    write_run(exp / "sv/b", "speaker_verification", "b", {"EER": 0.04, "minDCF@0.05": 0.35}, details=details)
    write_run(exp / "emotion/a", "emotion", "a", {"UA": 0.6, "WA": 0.7}, num_utterances=20)
    write_run(exp / "asr/a", "asr", "a", {"WER": 0.25, "CER": 0.1}, details={"substitutions": 4, "decoder": "greedy"})
    capsys.readouterr()
    assert main(["report", str(exp)]) == 0
    report = table_cells(capsys.readouterr().out)
    table, _ = compare([exp], tmp_path / "cmp")
    compared = table_cells(table.read_text())
    assert set(report) == set(compared) == {"speaker_verification", "emotion", "asr"}
    metrics = {"speaker_verification": ["EER", "minDCF@0.05"], "emotion": ["UA", "WA"], "asr": ["WER", "CER"]}
    for task, names in metrics.items():
        assert set(report[task]) == set(compared[task])
        for upstream in report[task]:
            assert [report[task][upstream][m] for m in names] == [compared[task][upstream][m] for m in names]
        # counts and flags are details, in neither table's metric columns
        columns = {"upstream", "interface", "trainable", "utterances", "seed", "run", *names}
        assert set(next(iter(report[task].values()))) == columns
        assert set(next(iter(compared[task].values()))) == {"run", "upstream", "interface", "trainable", *names}
    b = report["speaker_verification"]["b"]
    assert (b["EER"], b["minDCF@0.05"]) == ("4.00", "0.3500")  # EER in %, minDCF a fraction
    assert report["emotion"]["a"]["UA"] == "60.00" and report["emotion"]["a"]["utterances"] == "20"


def test_report_shows_the_best_layer_of_probe_runs(tmp_path, capsys):
    write_run(tmp_path / "probe", "probe_emotion", "tiny_hubert", {"accuracy": 0.61}, details={"best_layer": 1})
    write_run(tmp_path / "other", "emotion", "fbank", {"UA": 0.6})
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    tables = table_cells(capsys.readouterr().out)
    assert tables["probe_emotion"]["tiny_hubert"]["best_layer"] == "1"
    assert "best_layer" not in tables["emotion"]["fbank"]
