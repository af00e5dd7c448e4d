"""The `strata` command lists presets and summarises layers; errors come out as one line and exit code 2."""

import numpy as np
import pytest
import soundfile

from recipes.cli import main
from upstream import PRESETS


def test_upstreams_lists_every_preset_with_its_sizes(capsys):
    assert main(["upstreams"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        line = next(line for line in out.splitlines() if line.startswith(f"| {name} "))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:5] == [
            str(preset.num_layers - 1),
            str(preset.num_layers),
            str(preset.hidden_size),
            f"{preset.frame_rate:g} Hz",
        ]
    assert "facebook/hubert-base-ls960" in out


def test_upstreams_groups_presets_by_family(capsys):
    assert main(["upstreams"]) == 0
    sections = {
        part.split("\n", 1)[0]: part for part in capsys.readouterr().out.split("\n## ")[1:]
    }  # family -> its table
    for name, preset in PRESETS.items():
        assert f"| {name} " in sections[preset.family]
    assert {"hubert", "wav2vec2", "wavlm", "surface"} <= set(sections)
    assert "| tiny_hubert " in sections["hubert"] and "| fbank " in sections["surface"]


def test_inspect_summarises_every_layer_of_a_tone(capsys):
    assert main(["inspect", "--upstream", "tiny_hubert"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "layer" not in line]
    assert [int(r.split("|")[1]) for r in rows] == [0, 1, 2, 3, 4]
    assert all(int(r.split("|")[2]) == 49 for r in rows)  # 1 s at 16 kHz -> 49 frames


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2", "wavlm", "data2vec-audio"])
def test_inspect_reads_a_saved_directory_of_each_first_family(tiny_dirs, model_type, capsys):
    assert main(["inspect", "--upstream", f"hf:{tiny_dirs[model_type]}"]) == 0
    assert "5 hidden states of size 64, 50 frames/s" in capsys.readouterr().out


def test_inspect_reads_and_resamples_a_file(tmp_path, capsys):
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype("float32"), 8000)
    assert main(["inspect", "--upstream", "fbank", "--audio", str(path)]) == 0
    assert "| 0     | 98 " in capsys.readouterr().out  # 1 s resampled to 16 kHz -> 98 fbank frames


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.zeros((16000, 2), dtype="float32"), 16000)
    assert main(["inspect", "--upstream", "fbank", "--audio", str(stereo)]) == 2
    err = capsys.readouterr().err
    assert "stereo.wav has 2 channels" in err and err.count("\n") == 1
    assert main(["inspect", "--upstream", "nope"]) == 2
    assert "unknown upstream 'nope'" in capsys.readouterr().err
    assert main(["inspect", "--audio", str(tmp_path / "missing.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_dir_prints_the_folder_strata_fit_writes(tmp_path, capsys):
    args = ["run-dir", "--task", "emotion", "--upstream", "hf:/models/my-hubert", "--interface", "hconv"]
    assert main(args) == 0
    assert capsys.readouterr().out == "exp/emotion/my-hubert_hconv\n"
    assert main([*args, "--trainable", "top:2", "--tag", "lr3", "--exp_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path}/emotion/my-hubert_hconv_top2_lr3\n"
