"""Plots land as PNG files where the run directory asks, creating folders as needed."""

import warnings

import pytest
import torch

from recipes.plots import plot_confusion

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_confusion_writes_a_png_into_a_new_nested_folder(tmp_path):
    target = tmp_path / "exp" / "emotion" / "run1" / "confusion.png"
    confusion = torch.tensor([[5, 1, 0], [1, 1, 1], [1, 0, 0]])
    written = plot_confusion(confusion, ["neu", "hap", "ang"], target, title="hubert_base / weighted_sum")
    assert written == target
    data = target.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_a_class_absent_from_the_references_plots_without_division_warnings(tmp_path):
    confusion = torch.tensor([[2, 0, 1], [0, 0, 0], [0, 1, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_confusion(confusion, ["neutral", "frustrated", "excited"], str(tmp_path / "c.png"))
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_class_names_must_match_the_confusion(tmp_path):
    with pytest.raises(ValueError, match="2 classes were named"):
        plot_confusion(torch.zeros(3, 3, dtype=torch.long), ["a", "b"], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_det_plot_is_written_for_overlapping_and_separated_scores(tmp_path):
    from recipes.plots import plot_det

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 200 + [0] * 200)
    for name, shift in (("overlap", 1.0), ("separated", 20.0)):
        scores = torch.randn(400, generator=generator) + shift * labels
        path = plot_det(scores, labels, tmp_path / f"{name}.png", title=name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10000
