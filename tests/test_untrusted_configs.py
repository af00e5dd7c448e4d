"""Configs that name classes or upstream factories outside strata, Lightning and torch are refused before anything
is imported, unless the user passes --trust-code; every config strata ships passes."""

from pathlib import Path

import pytest
import yaml

from recipes.cli import main
from recipes.trust import UntrustedModelError, check_configs_trusted

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*(ROOT / "recipes" / "configs").glob("*.yaml"), *(ROOT / "egs").glob("*/conf/*.yaml")])


@pytest.fixture
def booby_trap(tmp_path, monkeypatch, request) -> tuple[str, Path]:
    """A module that leaves a file behind when imported: refusing it must run none of its code."""
    name = f"strata_config_trap_{abs(hash(request.node.nodeid))}"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('ran').write_text('imported')\n"
        "from recipes.tasks import EmotionTask as Task\nimport lightning as L\nclass Callback(L.Callback):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, tmp_path / "ran"


def emotion_config(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "emotion.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "changes, named",
    [({"model__task__class_path": "{}.Task"}, "'{}.Task' at model.task.class_path"),
     ({"trainer__callbacks": [{"class_path": "{}.Callback"}]}, "'{}.Callback' at trainer.callbacks.class_path"),
     ({"trainer__callbacks": ["{}.Callback"]}, "'{}.Callback' at trainer.callbacks")],
)  # fmt: skip
def test_a_config_naming_a_foreign_class_is_refused_without_importing_it(tmp_path, booby_trap, capsys, changes, named):
    trap, marker = booby_trap
    changes = {key: yaml.safe_load(yaml.safe_dump(value).replace("'{}", f"'{trap}").replace("{}", trap))
               for key, value in changes.items()}  # fmt: skip
    config = emotion_config(tmp_path, **changes)
    assert main(["fit", "--config", str(config), "--print_config"]) == 2
    error = capsys.readouterr().err
    assert named.format(trap) in error and "--trust-code" in error and "not part of strata, Lightning or torch" in error
    assert not marker.exists()  # nothing of it ran
    with pytest.raises(SystemExit):  # trusted: parsed (and so imported), the config printed
        main(["fit", "--config", str(config), "--print_config", "--trust-code"])
    assert marker.exists()


def test_a_config_naming_an_upstream_factory_is_refused_but_the_command_line_is_the_users_own(tmp_path):
    config = emotion_config(tmp_path, model__upstream__name="mypackage.models:build")
    with pytest.raises(UntrustedModelError, match=r"'mypackage.models:build' at model.upstream.name"):
        check_configs_trusted(["fit", "--config", str(config)])
    check_configs_trusted(["fit", "--config", str(config)], trust_code=True)
    plain = emotion_config(tmp_path)
    check_configs_trusted(["fit", "--config", str(plain), "--model.upstream.name", "mypackage.models:build"])
    teacher = tmp_path / "distill.yaml"
    teacher.write_text(yaml.safe_dump({"model": {"teacher": "mypackage.models:build"}}))
    with pytest.raises(UntrustedModelError, match="at model.teacher"):
        check_configs_trusted(["--config", str(teacher)])


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: f"{path.parent.parent.name}/{path.stem}")
def test_every_shipped_config_is_trusted(config):
    check_configs_trusted(["--config", str(config)])
    check_configs_trusted([f"--config={config}"])


def test_lightning_and_torch_classes_are_trusted(tmp_path):
    config = emotion_config(tmp_path, trainer__callbacks=[
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "valid/UA"}},
        "lightning.pytorch.callbacks.LearningRateMonitor",
    ])  # fmt: skip
    check_configs_trusted(["--config", str(config)])
