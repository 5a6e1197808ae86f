"""The `storage:` top-level YAML section.

    storage:
      path: ./streamproxy.sqlite3   # the SQLite file (":memory:" for a throwaway store)
      force_store: false            # true: store every successful request, as if store: true
      max_pending: 10000            # writes waiting for the disk beyond this are dropped (logged)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from streamproxy.config import Config, ConfigError, unknown_key

STORAGE_KEYS = ("backend", "force_store", "max_pending", "path")

DEFAULT_PATH = "./streamproxy.sqlite3"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = DEFAULT_PATH
    force_store: bool = False
    max_pending: int = 10_000


def parse_storage_config(config: Config) -> StorageConfig:
    raw: Any = config.sections.get("storage")
    if raw is None:
        raw = {}
    source = config.source
    if not isinstance(raw, dict):
        raise ConfigError(source, "storage", "must be a mapping")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"storage.{key}"
        if key == "backend":
            if value != "sqlite":
                raise ConfigError(source, where, "the only storage backend is 'sqlite'")
        elif key == "path":
            if not isinstance(value, str) or not value:
                raise ConfigError(source, where, "must be a file path")
            _check_directory(value, source, where)
            out[key] = value
        elif key == "force_store":
            if not isinstance(value, bool):
                raise ConfigError(source, where, "must be true or false")
            out[key] = value
        elif key == "max_pending":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(source, where, "must be a positive integer")
            out[key] = value
        else:
            raise ConfigError(source, where, unknown_key(key, STORAGE_KEYS))
    return StorageConfig(**out)


def _check_directory(path: str, source: str, where: str) -> None:
    """The file is created on the first store, not at start-up: a directory that is not there
    would otherwise show only then, as a logged error, with every answer served unstored."""
    if path == ":memory:":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(source, where, f"directory {directory} does not exist")
