"""Where a run lives: `<exp_dir>/<task>/<run name>`. The one place the name is made: the CLI's default run
directory, the module's plot titles and the egs recipes (through `strata run-dir`) all take it from here.

The name is `<upstream>_<interface>`, then `_<trainable>` unless the upstream is frozen, then `_<tag>`:
`hubert_base_weighted_sum`, `hubert_base_weighted_sum_top2`, `wavlm_base_plus_hconv_all_lr1e-4`. A frozen upstream
is the default and SUPERB's protocol, so the common case keeps the short name the CLI and egs/mini always used,
and a run that trains the upstream can never land in a frozen run's folder.
"""

from __future__ import annotations

import re
from pathlib import Path


def _component(text: str) -> str:
    """One path component: anything but letters, digits and `._+-` becomes `_` (no `/`, no `:`)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def upstream_name(upstream: str) -> str:
    """`hf:/models/my-hubert` -> `my-hubert`, `torchaudio:hubert_base` -> `hubert_base`: the model, not its source.

    A factory in a dotted module, `mypkg.encoder:build`, keeps both (`mypkg.encoder.build`): factories are often all
    called `build`."""
    if re.fullmatch(r"\w+(\.\w+)+:[\w.]+", upstream):
        return _component(upstream.replace(":", "."))
    base = Path(upstream.split(":", 1)[-1].rstrip("/")).name or upstream
    return _component(base)


def run_name(upstream: str, interface: str, trainable: str = "frozen", tag: str | None = None) -> str:
    """The run folder's name (see the module docstring); `top:2` appears as `top2`."""
    parts = [upstream_name(upstream), _component(interface)]
    if trainable != "frozen":
        parts.append(_component(trainable.replace(":", "")))
    if tag:
        parts.append(_component(tag))
    return "_".join(parts)


def run_dir(
    task: str,
    upstream: str,
    interface: str,
    trainable: str = "frozen",
    tag: str | None = None,
    exp_dir: str | Path = "exp",
) -> Path:
    """`<exp_dir>/<task>/<run name>`: the folder `strata fit` and `strata test` write one run into."""
    return Path(exp_dir) / task / run_name(upstream, interface, trainable, tag)
