"""SSL front-ends that return every hidden layer with its frame lengths."""

from .base import Upstream, UpstreamLoadError, UpstreamOutput, lengths_to_mask
from .registry import PRESETS, build_upstream, list_upstreams

__all__ = [
    "PRESETS",
    "Upstream",
    "UpstreamLoadError",
    "UpstreamOutput",
    "build_upstream",
    "lengths_to_mask",
    "list_upstreams",
]
