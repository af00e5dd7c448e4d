"""upstream.names.Registry: one shape for every name -> builder table, and its option check."""

import pytest
from torch import nn

from downstream.pooling import build_pooling
from recipes.cli import main
from upstream.interfaces import build_interface
from upstream.names import Registry


def make_registry() -> Registry:
    things = Registry("thing")

    @things.register("box")
    class Box:
        def __init__(self, size: int, depth: int = 1, *, lid: bool = False) -> None:
            self.size, self.depth, self.lid = size, depth, lid

    @things.register("cube")
    def cube(size: int) -> Box:
        return Box(size, size)

    return things


def test_registry_builds_by_name_with_positional_arguments_and_options():
    things = make_registry()
    box = things.build("box", 3, depth=2, lid=True)
    assert (box.size, box.depth, box.lid) == (3, 2, True)
    assert things.build("cube", 4).depth == 4
    assert things["box"].name == "box"  # classes learn their registered name
    assert things.names() == list(things) == ["box", "cube"] and "box" in things and len(things) == 2
    assert things.options("box") == ["size", "depth", "lid"] and things.options("box", 1) == ["depth", "lid"]


def test_registry_errors_name_the_valid_choices_and_options():
    things = make_registry()
    with pytest.raises(ValueError, match=r"unknown thing 'ball'; choose from \['box', 'cube'\]"):
        things.build("ball", 1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dept'\] for thing 'box'; valid options: \['depth'"):
        things.build("box", 1, dept=2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\] for thing 'cube'; valid options: none"):
        things.build("cube", 1, depth=2)
    with pytest.raises(ValueError, match="thing 'box' is registered twice"):
        things.register("box")(nn.Identity)


def test_interfaces_and_poolings_refuse_an_unknown_option_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['lyer'\] for interface 'layer'; valid options: \['layer', 'output_"):
        build_interface("layer", 5, 8, lyer=2)
    with pytest.raises(ValueError, match=r"\['attention'\] for pooling 'attentive_stats'.*'attention_size'"):
        build_pooling("attentive_stats", 8, attention=4)


def emotion_fit(corpus, tmp_path, *extra: str) -> list[str]:
    return ["fit", "--config", "egs/mini/conf/emotion.yaml", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.train", str(corpus / "emotion" / "train.jsonl"),
            "--data.valid", str(corpus / "emotion" / "valid.jsonl"), *extra]  # fmt: skip


def test_a_bad_option_on_the_command_line_is_one_line_naming_the_valid_ones(mini_corpus, tmp_path, capsys):
    # `normalize` is a typed interface option, but not one the `layer` interface takes.
    args = emotion_fit(mini_corpus, tmp_path, "--model.interface.name", "layer", "--model.interface.normalize", "true")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after Lightning's INFO lines
    assert err.startswith("strata fit: error:")
    assert "unknown option(s) ['normalize'] for interface 'layer'; valid options: ['layer', 'output_size']" in err


def test_a_misspelt_interface_option_is_a_usage_error_naming_it(mini_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(emotion_fit(mini_corpus, tmp_path, "--model.interface.name", "layer", "--model.interface.lyer", "2"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: unrecognized arguments: --model.interface.lyer 2" in err
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_interface_config_passes_only_the_options_that_are_set():
    from recipes.module import InterfaceConfig

    assert InterfaceConfig("weighted_sum").options == {}
    assert InterfaceConfig("layer", layer=-2, output_size=8).options == {"layer": -2, "output_size": 8}
    with pytest.raises(ValueError, match=r"\['normalize'\] for interface 'last'; valid options: \['output_size'\]"):
        build_interface("last", 5, 8, **InterfaceConfig("last", normalize=True).options)
