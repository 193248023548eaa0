"""A tiny name -> class registry, so each variant (SAE type, sharpener, dataset) is one class plus one YAML file."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from sae_ception.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the `type`/`name` string of a config group to the class that implements it."""

    def __init__(self, kind: str, setting: str):
        self.kind = kind  # e.g. "SAE type"
        self.setting = setting  # e.g. "sae.type": the config key users set
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        if name not in self._entries:
            raise ConfigError(f"{self.setting}={name!r} is not a known {self.kind}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
