"""recipes/runs.py: the one name of a run folder, which the CLI, the module and the egs recipes all use."""

from pathlib import Path

import pytest

from recipes.runs import run_dir, run_name


@pytest.mark.parametrize(
    ("trainable", "tag", "name"),
    [
        ("frozen", None, "hubert_base_weighted_sum"),
        ("frozen", "", "hubert_base_weighted_sum"),
        ("all", None, "hubert_base_weighted_sum_all"),
        ("top:2", None, "hubert_base_weighted_sum_top2"),
        ("frozen", "featex", "hubert_base_weighted_sum_featex"),
        ("top:12", "lr1e-4", "hubert_base_weighted_sum_top12_lr1e-4"),
    ],
)
def test_a_frozen_upstream_keeps_the_short_name_and_anything_else_is_spelled_out(trainable, tag, name):
    assert run_name("hubert_base", "weighted_sum", trainable, tag) == name


@pytest.mark.parametrize(
    ("upstream", "name"),
    [
        ("hf:/models/my-hubert", "my-hubert_hconv"),
        ("hf:/models/my-hubert/", "my-hubert_hconv"),
        ("hf:facebook/hubert-base-ls960", "hubert-base-ls960_hconv"),
        ("torchaudio:hubert_base", "hubert_base_hconv"),
        ("/data/models/pt2/upstream", "upstream_hconv"),
        ("fbank", "fbank_hconv"),
        ("mypkg.encoder:build", "mypkg.encoder.build_hconv"),
    ],
)
def test_a_source_is_named_by_its_model_not_its_prefix_or_folders(upstream, name):
    assert run_name(upstream, "hconv") == name


def test_a_name_is_always_one_path_component():
    name = run_name("hf:org/model name", "weighted_sum", "top:1", "a/b c")
    assert name == "model_name_weighted_sum_top1_a_b_c" and "/" not in name


def test_the_run_dir_is_exp_dir_then_task_then_name(tmp_path):
    assert run_dir("emotion", "fbank", "weighted_sum") == Path("exp/emotion/fbank_weighted_sum")
    assert run_dir("asd", "fbank", "hconv", "all", "frozen", tmp_path) == tmp_path / "asd" / "fbank_hconv_all_frozen"
