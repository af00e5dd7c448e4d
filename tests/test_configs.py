"""Every task config in recipes/configs parses as `strata fit` reads it: typed options, known keys, valid values."""

from pathlib import Path

import pytest
import yaml

from recipes.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.name.startswith("pretrain")], ids=lambda c: c.stem)
def test_each_task_config_parses_as_strata_fit_reads_it(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["model"]["task"]["class_path"] == written["model"]["task"]["class_path"]
    assert printed.get("average_best", 0) == written.get("average_best", 0)


def test_the_morais_recipe_fine_tunes_with_ecapa_and_averages_the_five_best():
    config = yaml.safe_load((CONFIGS[0].parent / "emotion_morais.yaml").read_text())
    assert config["average_best"] == 5 and config["model"]["task"]["init_args"]["pooling"] == "ecapa"
    assert config["model"]["upstream"]["trainable"] == "all" and config["model"]["upstream_lr"] < config["model"]["lr"]


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name.startswith("pretrain")], ids=lambda c: c.stem)
def test_each_pretrain_config_parses_as_strata_pretrain_reads_it(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--config", str(config), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["objective"] == written.get("objective", "hubert")
    for name, value in written["model"].items():  # every written option kept as written
        assert printed["model"][name] == (value if not isinstance(value, dict) else {**printed["model"][name], **value})
