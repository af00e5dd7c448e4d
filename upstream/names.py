"""`Registry`: names -> builders of one kind (interfaces, poolings, losses, scorers, extractors, probes).

It lives in `upstream`, the lowest package, so that downstream and recipes can use the same one.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C")


def check_options(kind: str, name: str, options: Iterable[str], valid: Iterable[str]) -> None:
    """A `ValueError` naming the unknown options and the valid ones (typos fail here, at config time)."""
    valid = list(valid)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {kind} {name!r}; valid options: {valid or 'none'}")


def as_config(config_class: type[C], value: C | Mapping[str, Any] | None, kind: str, name: str) -> C:
    """`value` as a `config_class` dataclass: itself, the defaults for None, or built from a mapping of its fields
    (a checkpoint's plain data, a Python caller's dict), whose unknown keys are a `ValueError` naming the valid ones."""
    if isinstance(value, config_class):
        return value
    if value is None:
        return config_class()
    if not isinstance(value, Mapping):
        raise ValueError(f"{kind} {name!r} options must be a {config_class.__name__} or a mapping; got {value!r}")
    check_options(kind, name, value, [field.name for field in dataclasses.fields(config_class)])
    return config_class(**value)


class Registry(Generic[T]):
    """Names -> builders (classes or functions) of one kind.

    `build(name, *args, **options)` calls the builder with the caller's positional arguments and the user's
    options, after checking the options against the builder's remaining keyword parameters.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """A decorator that registers a class (which also gets `name` as its `.name`) or a function."""

        def wrap(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            if isinstance(builder, type):
                builder.name = name
            return builder

        return wrap

    def __getitem__(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names()}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def options(self, name: str, num_args: int = 0) -> list[str]:
        """The keyword parameters of `name`'s builder after its first `num_args` (what a user may set)."""
        parameters = list(inspect.signature(self[name]).parameters.values())[num_args:]
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in parameters if p.kind in kinds]

    def build(self, name: str, /, *args, **options) -> T:
        builder = self[name]
        check_options(self.kind, name, options, self.options(name, len(args)))
        return builder(*args, **options)
