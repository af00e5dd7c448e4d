"""SSL front-ends that return every hidden layer with its frame lengths.

The registry (and through it transformers, torchaudio and every backend) is imported on first use of `PRESETS`,
`build_upstream` or `list_upstreams`, not with the package: code that only needs `Upstream` or the interfaces, such
as a fit from a feature cache, does not pay the 2 s of importing transformers.
"""

from typing import Any

from .base import Upstream, UpstreamLoadError, UpstreamOutput, lengths_to_mask

__all__ = [
    "PRESETS",
    "Upstream",
    "UpstreamLoadError",
    "UpstreamOutput",
    "build_upstream",
    "lengths_to_mask",
    "list_upstreams",
]

_FROM_REGISTRY = ("PRESETS", "build_upstream", "list_upstreams")


def __getattr__(name: str) -> Any:
    if name in _FROM_REGISTRY:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
