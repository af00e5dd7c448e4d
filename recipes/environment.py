"""What a bug report needs: the versions of the stack, the accelerators, and whether each native library loads.

`strata env` prints it all; `python -m recipes.environment --check` (run by `make install` and CI) only loads the
native libraries and says which one failed and why. Nothing here imports strata's own packages, so it still answers
when torch or torchaudio cannot be imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import platform
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Distributions whose versions a bug report needs, in the order printed.
PACKAGES = (
    "strata",
    "torch",
    "torchaudio",
    "transformers",
    "lightning",
    "jsonargparse",
    "huggingface_hub",
    "numpy",
    "soundfile",
    "sentencepiece",
    "jiwer",
    "safetensors",
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str  # the version or what it ran on success; the error on failure


def _torch() -> str:
    import torch

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    if float((x @ x.T).sum()) != 83.0:
        raise RuntimeError("a 2x3 matrix product gave a wrong result")
    cuda = torch.version.cuda
    return f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU'} build)"


def _torchaudio() -> str:
    # Importing torchaudio loads libtorchaudio (the failure this check exists for: an ABI mismatch with torch).
    import torch
    import torchaudio
    from torchaudio.compliance import kaldi

    tone = torch.sin(torch.arange(4000) * 0.2)[None]
    features = kaldi.fbank(tone, num_mel_bins=23)
    resampled = torchaudio.functional.resample(tone, 16000, 8000)
    if features.shape != (23, 23) or resampled.size(-1) != 2000:
        raise RuntimeError(f"fbank gave {tuple(features.shape)}, resample {resampled.size(-1)} samples")
    return f"{torchaudio.__version__} (libtorchaudio loaded; Kaldi fbank and resample ran)"


def _soundfile() -> str:
    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    samples = np.linspace(-0.5, 0.5, 160, dtype=np.float32)
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    buffer.seek(0)
    read, rate = soundfile.read(buffer, dtype="float32")
    if rate != 16000 or read.shape != samples.shape:
        raise RuntimeError(f"a 160-sample WAV read back as {read.shape} at {rate} Hz")
    return f"{soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}; a WAV written and read)"


def _sentencepiece() -> str:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat", "a dog ran in the park"] * 20),
        model_writer=model,
        vocab_size=20,
        model_type="char",
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    if processor.decode(processor.encode("the cat")) != "the cat":
        raise RuntimeError("a character model did not decode what it encoded")
    return f"{sentencepiece.__version__} (a character model trained and used)"


# The native libraries strata loads; each check runs a little real work through one.
NATIVE_CHECKS: dict[str, Callable[[], str]] = {
    "torch": _torch,
    "torchaudio": _torchaudio,
    "soundfile": _soundfile,
    "sentencepiece": _sentencepiece,
}


def run_checks() -> list[Check]:
    checks = []
    for name, check in NATIVE_CHECKS.items():
        try:
            checks.append(Check(name, True, check()))
        except BaseException as error:  # noqa: BLE001 - an ImportError, an OSError from dlopen, a crash in the library
            if isinstance(error, KeyboardInterrupt):
                raise
            last = traceback.format_exception_only(type(error), error)[-1].strip()
            checks.append(Check(name, False, last))
    return checks


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def accelerators() -> dict[str, str]:
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - reported, not raised: this is a diagnostic
        return {"CUDA": f"unknown (torch does not import: {error})", "MPS": "unknown"}
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"available: {torch.cuda.device_count()} x {names}"
    else:
        cuda = "not available" + (f" (the build is for CUDA {torch.version.cuda})" if torch.version.cuda else "")
    mps = torch.backends.mps.is_available()
    return {"CUDA": cuda, "MPS": "available" if mps else "not available"}


def espeak_version() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        return "not found (egs/mini needs it: apt-get install espeak-ng or brew install espeak-ng)"
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{path} does not run: {error}"
    return (result.stdout.strip().splitlines() or [f"{path} printed no version"])[0]


def optional_versions() -> dict[str, str]:
    flashlight = package_version("flashlight-text")
    if flashlight == "not installed":
        flashlight += " (optional: beam-search CTC decoding, pip install flashlight-text)"
    return {"espeak-ng": espeak_version(), "flashlight-text": flashlight}


# The tested set, beside the sources in a checkout (an editable install); absent from a wheel install.
LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of a pip constraints file, names normalised as pip compares them."""
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_differences(path: Path = LOCK) -> str:
    """Whether the installed distributions are the locked ones: what a bug report on another stack must say."""
    if not path.is_file():
        return f"no lock at {path} (not a checkout): versions as installed"
    installed = {normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    locked = read_lock(path)
    # Local labels (+cu130, +cpu) name the build, not the release.
    differ = [
        f"{name} {installed[name]} (lock {version})"
        for name, version in sorted(locked.items())
        if name in installed and installed[name].split("+")[0] != version.split("+")[0]
    ]
    missing = sorted(set(locked) - set(installed))  # platform-specific ones (the CUDA libraries) on other systems
    parts = []
    if differ:
        parts.append(f"{len(differ)} differ: " + ", ".join(differ))
    if missing:
        parts.append(f"{len(missing)} not installed: " + ", ".join(missing))
    return f"{'; '.join(parts)} (against {path})" if parts else f"as in {path}"


def report_rows(checks: list[Check]) -> list[tuple[str, str]]:
    rows = [("python", f"{platform.python_version()} ({sys.executable})"), ("platform", platform.platform())]
    rows += [(name, package_version(name)) for name in PACKAGES]
    rows += [("lock", lock_differences())]
    rows += list(accelerators().items()) + list(optional_versions().items())
    rows += [(f"{check.name} native library", ("ok: " if check.ok else "FAILED: ") + check.detail) for check in checks]
    return rows


def report(checks: list[Check]) -> str:
    rows = report_rows(checks)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def failure_advice(failed: list[Check]) -> str:
    names = ", ".join(check.name for check in failed)
    return (
        f"strata: {names} failed to load. The tested versions are in requirements/lock.txt: reinstall through it "
        "(`make clean install`, or `pip install -c requirements/lock.txt -e .`) and paste `strata env` into a bug "
        "report if it still fails."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.environment", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only load the native libraries (one line each)")
    args = parser.parse_args(argv)
    checks = run_checks()
    if args.check:
        for check in checks:
            print(f"{check.name}: {'ok' if check.ok else 'FAILED'}: {check.detail}")
    else:
        print(report(checks))
    failed = [check for check in checks if not check.ok]
    if failed:
        print(failure_advice(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
