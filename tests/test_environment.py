"""`strata env` and the native-library check that `make install` runs."""

import shutil

import pytest

from recipes import environment
from recipes.cli import main


def test_strata_env_prints_every_version_and_each_native_library_loads(capsys):
    assert main(["env"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = dict(environment.report_rows(environment.run_checks()))
    assert len(printed) == len(rows)
    for name in ("python", "torch", "torchaudio", "transformers", "lightning", "CUDA", "MPS", "espeak-ng"):
        assert any(line.startswith(name + " ") for line in printed), name
    assert rows["torchaudio"] != "not installed" and rows["flashlight-text"].startswith(("not installed", "0.", "1."))
    for library in environment.NATIVE_CHECKS:
        assert rows[f"{library} native library"].startswith("ok: "), rows[f"{library} native library"]


def test_the_install_check_names_the_library_that_failed_and_why(capsys, monkeypatch):
    def broken() -> str:
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setitem(environment.NATIVE_CHECKS, "torchaudio", broken)
    assert environment.main(["--check"]) == 1
    captured = capsys.readouterr()
    assert "torchaudio: FAILED: OSError: libtorchaudio.so: undefined symbol" in captured.out
    assert "torch: ok: " in captured.out and "soundfile: ok: " in captured.out
    assert "torchaudio failed to load" in captured.err and "requirements/lock.txt" in captured.err


def test_strata_env_exits_non_zero_when_a_native_library_fails(capsys, monkeypatch):
    monkeypatch.setitem(environment.NATIVE_CHECKS, "soundfile", lambda: 1 / 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["env"])
    assert exit_info.value.code == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("soundfile native library"))
    assert line.split(maxsplit=3)[3].startswith("FAILED: ZeroDivisionError")


def test_a_missing_espeak_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "apt-get install espeak-ng" in environment.espeak_version()


def test_versions_come_from_the_installed_distributions():
    import torch

    assert environment.package_version("torch") == torch.__version__.split("+")[0]
    assert environment.package_version("no-such-distribution-strata") == "not installed"


def test_strata_env_says_which_installed_versions_differ_from_the_lock(tmp_path):
    import numpy

    lock = tmp_path / "lock.txt"
    lock.write_text(
        f"# a comment line\ntorch==0.0.1+cpu\nnumpy=={numpy.__version__}\nno_such.dist==1.0  # trailing note\n"
    )
    text = environment.lock_differences(lock)
    assert f"1 differ: torch {environment.package_version('torch')} (lock 0.0.1+cpu)" in text
    assert "1 not installed: no-such-dist" in text and "numpy" not in text
    lock.write_text(f"numpy=={numpy.__version__}\n")
    assert environment.lock_differences(lock) == f"as in {lock}"
    assert "not a checkout" in environment.lock_differences(tmp_path / "absent.txt")


def test_the_installed_stack_is_the_committed_lock():
    assert environment.lock_differences() == f"as in {environment.LOCK}"
