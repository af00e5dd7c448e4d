"""Your own model: `package.module:factory` sources, `LayerwiseAdapter` around a plain module (through `strata
inspect` and the feature cache), one-line errors for a bad factory, and presets from `strata.upstreams` entry points."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from recipes.cache import FeatureCache, extract
from recipes.cli import main
from recipes.data import write_jsonl
from upstream import UpstreamLoadError, build_upstream, registry

ROOT = Path(__file__).resolve().parents[1]

TOY = '''
import torch
from torch import nn

from upstream.custom import LayerwiseAdapter
from upstream.registry import Preset


class ThreeStates(nn.Module):
    """A strided convolution (400 samples, hop 320) and two tanh layers: three hidden states [B, T, width]."""

    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv1d(1, width, 400, stride=320)
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])

    def forward(self, wavs, wav_lengths):
        x = self.conv(wavs[:, None]).transpose(1, 2)
        states = [x]
        for layer in self.layers:
            x = torch.tanh(layer(x))
            states.append(x)
        return states


def build(width=16, with_layers=True):
    torch.manual_seed(0)
    module = ThreeStates(width)
    layers = module.layers if with_layers else ()
    return LayerwiseAdapter(module, 16000, downsample_rate=320, min_samples=400, hidden_size=width, num_layers=3,
                            layers=layers, cnn=[module.conv])


class WithLengths(ThreeStates):
    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, wavs, wav_lengths):
        return super().forward(wavs, wav_lengths), (wav_lengths - 400) // 320 + 1 + self.offset


def with_lengths(offset=0):
    return LayerwiseAdapter(WithLengths(offset), downsample_rate=320, min_samples=400, hidden_size=16, num_layers=3)


def plain():
    return ThreeStates()


def not_a_model():
    return "an upstream"


PRESET = Preset(build, "toy_encoder:build", 3, 16, 50.0, family="toy")
'''


@pytest.fixture
def toy(tmp_path, monkeypatch) -> str:
    """`toy_encoder.py` importable from a folder on sys.path; forgotten by the import system afterwards."""
    (tmp_path / "toy_encoder.py").write_text(TOY, encoding="utf-8")
    (tmp_path / "toy_broken.py").write_text("import a_dependency_that_is_not_installed\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy_encoder"
    for name in ("toy_encoder", "toy_broken"):
        sys.modules.pop(name, None)


def test_a_factory_source_builds_the_upstream_with_build_upstreams_options(toy):
    upstream = build_upstream(f"{toy}:build", width=8)
    assert (upstream.num_layers, upstream.hidden_size, upstream.frame_rate) == (3, 8, 50.0)
    wavs, lengths = torch.randn(2, 16000), torch.tensor([16000, 8000])
    out = upstream(wavs, lengths)
    assert out.lengths.tolist() == [49, 24]  # (n - 400) // 320 + 1, the conv's own count
    expected = upstream.module(wavs, lengths)
    assert [s.shape for s in out.hidden_states] == [(2, 49, 8)] * 3
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, expected, strict=True))
    assert not any(p.requires_grad for p in upstream.parameters())


def test_the_adapter_trains_all_or_the_top_layers_and_keeps_the_cnn_frozen_unless_asked(toy):
    def trained(upstream):
        return sorted({name.split(".weight")[0].split(".bias")[0] for name, p in upstream.named_parameters()
                       if p.requires_grad})  # fmt: skip

    assert trained(build_upstream(f"{toy}:build", trainable="top:1")) == ["module.layers.1"]
    assert trained(build_upstream(f"{toy}:build", trainable="all")) == ["module.layers.0", "module.layers.1"]
    everything = build_upstream(f"{toy}:build", trainable="all", train_cnn=True)
    assert trained(everything) == ["module.conv", "module.layers.0", "module.layers.1"]
    with pytest.raises(ValueError, match="pass layers="):
        build_upstream(f"{toy}:build", trainable="top:1", with_layers=False)


def test_an_adapted_module_runs_through_strata_inspect(toy, capsys):
    assert main(["inspect", "--upstream", f"{toy}:build"]) == 0
    out = capsys.readouterr().out
    assert "3 hidden states of size 16" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "layer" not in line]
    assert [int(r.split("|")[1]) for r in rows] == [0, 1, 2]
    assert all(int(r.split("|")[2]) == 49 for r in rows)


def test_an_adapted_module_is_cached_as_it_runs_live(toy, tmp_path):
    generator, entries = np.random.default_rng(0), []
    for name, seconds in [("a", 1.0), ("b", 0.63)]:
        wav = 0.1 * generator.standard_normal(int(seconds * 16000)).astype("float32")
        soundfile.write(str(tmp_path / f"{name}.wav"), wav, 16000, subtype="FLOAT")
        entries.append({"id": name, "audio": f"{name}.wav", "duration": seconds})
    manifest = write_jsonl(tmp_path / "clips.jsonl", entries)
    extract(f"{toy}:build", [manifest], tmp_path / "cache", dtype="float32", batch_seconds=0.01, progress=False)
    cache = FeatureCache(tmp_path / "cache")
    upstream = build_upstream(f"{toy}:build")
    assert (cache.index.upstream, cache.index.num_layers, cache.index.hidden_size) == (f"{toy}:build", 3, 16)
    for entry in entries:
        wav, _ = soundfile.read(str(tmp_path / entry["audio"]), dtype="float32")
        with torch.no_grad():
            live = upstream(torch.from_numpy(wav)[None])
        expected = torch.stack(live.hidden_states)[:, 0, : int(live.lengths[0])]
        assert torch.equal(cache.hidden(entry["id"]), expected)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("no_such_module_here:build", "cannot import module no_such_module_here (ModuleNotFoundError"),
        ("toy_broken:build", "No module named 'a_dependency_that_is_not_installed'"),
        ("toy_encoder:missing", "has no attribute 'missing'"),
        ("toy_encoder:plain", "returned a ThreeStates, an nn.Module but not an upstream.Upstream: wrap"),
        ("toy_encoder:not_a_model", "returned a str, not an upstream.Upstream"),
    ],
)
def test_a_bad_factory_is_one_line_naming_the_source_and_the_problem(toy, capsys, source, says):
    assert main(["inspect", "--upstream", source]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and source in err and says in err, err


def test_lengths_a_module_returns_must_agree_with_the_adapters_frame_rule(toy):
    wavs, lengths = torch.randn(2, 16000), torch.tensor([16000, 8000])
    assert build_upstream(f"{toy}:with_lengths")(wavs, lengths).lengths.tolist() == [49, 24]
    with pytest.raises(
        ValueError, match=r"returned frame lengths \[50, 25\] but .* gives \[49, 24\]; pass frame_lengths="
    ):
        build_upstream(f"{toy}:with_lengths", offset=1)(wavs, lengths)


def test_a_module_that_returns_the_wrong_states_is_told_what_the_adapter_expects(toy):
    upstream = build_upstream(f"{toy}:build", width=8)
    upstream.hidden_size = 9
    with pytest.raises(ValueError, match=r"hidden state 0 has shape \(1, 49, 8\); expected \[B=1, T, D=9\]"):
        upstream(torch.randn(1, 16000))
    upstream.hidden_size, upstream.num_layers = 8, 4
    with pytest.raises(ValueError, match="returned 3 hidden states; the adapter was told num_layers=4"):
        upstream(torch.randn(1, 16000))


@pytest.fixture
def plugin(toy, tmp_path, monkeypatch):
    """An installed distribution (a .dist-info on sys.path) declaring three `strata.upstreams` entry points; the
    registry's state is restored afterwards."""
    info = tmp_path / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
            [strata.upstreams]
            toy_three = toy_encoder:PRESET
            toy_factory = toy_encoder:build
            toy_missing = toy_plugin_gone:build
        """),
        encoding="utf-8",
    )
    monkeypatch.setattr(registry, "PRESETS", dict(registry.PRESETS))
    monkeypatch.setattr(registry, "ENTRY_POINT_ERRORS", {})
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_an_entry_point_adds_a_preset_that_strata_upstreams_lists_and_a_broken_one_is_named(plugin, capsys):
    build_upstream("tiny_hubert")
    assert not registry._entry_points_loaded  # a built-in preset never imports third-party packages
    assert main(["upstreams"]) == 0
    captured = capsys.readouterr()
    toy_section = captured.out.split("## toy\n")[1].split("##")[0]
    assert "| toy_three " in toy_section and "| 2 " in toy_section and "50 Hz" in toy_section
    factory_row = next(line for line in captured.out.splitlines() if line.startswith("| toy_factory "))
    assert "| ? " in factory_row and "toy_encoder:build" in factory_row
    assert "'toy_missing' = 'toy_plugin_gone:build' of package toy-plugin could not be loaded" in captured.err
    assert build_upstream("toy_three").num_layers == 3
    assert build_upstream("toy_factory", width=4).hidden_size == 4
    with pytest.raises(UpstreamLoadError, match="toy_missing.*No module named 'toy_plugin_gone'"):
        build_upstream("toy_missing")


def test_strata_fit_trains_the_top_layer_of_an_adapted_module_and_tests_it(toy, mini_corpus, tmp_path):
    run, corpus = tmp_path / "run", mini_corpus / "emotion"
    assert main(["fit", "--config", str(ROOT / "egs" / "mini" / "conf" / "emotion.yaml"),
                 "--model.upstream.name", f"{toy}:build", "--model.upstream.trainable", "top:1",
                 "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                 "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
                 "--data.train", str(corpus / "train.jsonl"),
                 "--data.valid", str(corpus / "valid.jsonl")]) == 0  # fmt: skip
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    initial = build_upstream(f"{toy}:build").state_dict()  # the factory seeds its weights
    changed = {k for k, v in initial.items() if not torch.equal(checkpoint["state_dict"][f"upstream.{k}"], v)}
    assert changed == {"module.layers.1.weight", "module.layers.1.bias"}  # top:1; the CNN and layer 0 frozen
    test = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", "last",
            "--data.test", str(corpus / "test.jsonl")]  # fmt: skip
    assert main(test) == 2  # the run's config names the factory: code strata imports only when trusted
    assert main([*test, "--trust-code"]) == 0
    assert (run / "results.json").is_file()
