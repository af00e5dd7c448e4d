"""SSL front-ends that return every hidden layer with its frame lengths."""

from .base import Upstream, UpstreamOutput, lengths_to_mask
from .hf import UpstreamLoadError
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
