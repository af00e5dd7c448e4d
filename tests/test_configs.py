"""Every config in recipes/configs parses as strata reads it (`strata fit` for a task's, `strata pretrain` and
`strata distill` for theirs, named by the file's prefix): typed options, known keys, valid values."""

from pathlib import Path

import pytest
import yaml

from recipes.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
# Commands with a module of their own; every other config is a task's, for `strata fit`.
OWN_COMMANDS = ("pretrain", "distill")


def command_of(config: Path) -> str:
    return next((command for command in OWN_COMMANDS if config.name.startswith(command)), "fit")


@pytest.mark.parametrize("config", [c for c in CONFIGS if command_of(c) == "fit"], ids=lambda c: c.stem)
def test_each_task_config_parses_as_strata_fit_reads_it(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["model"]["task"]["class_path"] == written["model"]["task"]["class_path"]
    assert printed.get("average_best", 0) == written.get("average_best", 0)


@pytest.mark.parametrize("config", [c for c in CONFIGS if command_of(c) != "fit"], ids=lambda c: c.stem)
def test_each_pretraining_config_parses_as_its_command_reads_it(config, capsys):
    with pytest.raises(SystemExit) as done:
        main([command_of(config), "--config", str(config), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    if command_of(config) == "pretrain":
        assert printed["objective"] == written.get("objective", "hubert")
    for name, value in written["model"].items():  # every written option kept as written (typed groups: their fields)
        assert printed["model"][name] == (value if not isinstance(value, dict) else {**printed["model"][name], **value})


def test_the_morais_recipe_fine_tunes_with_ecapa_and_averages_the_five_best():
    config = yaml.safe_load((CONFIGS[0].parent / "emotion_morais.yaml").read_text())
    assert config["average_best"] == 5 and config["model"]["task"]["init_args"]["pooling"] == "ecapa"
    assert config["model"]["upstream"]["trainable"] == "all" and config["model"]["upstream_lr"] < config["model"]["lr"]
