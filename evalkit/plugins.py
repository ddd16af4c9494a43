"""User plugins: modules named in ``$EVALKIT_PLUGINS`` (comma-separated) are imported before a command runs.

A plugin module registers its own feature extractors (``evalkit.features.register_extractor``) when
imported, so ``EVALKIT_PLUGINS=my_nets evalkit score --features my-net ...`` works in every process,
including each process ``torchrun`` starts.
"""

from __future__ import annotations

import importlib
import os

from evalkit.errors import ConfigError

ENV_VAR = "EVALKIT_PLUGINS"

_loaded: set[str] = set()


def plugin_names(value: str | None = None) -> list[str]:
    """Module names listed in `value` (default ``$EVALKIT_PLUGINS``), blanks dropped, order kept."""
    text = os.environ.get(ENV_VAR, "") if value is None else value
    return [name.strip() for name in text.split(",") if name.strip()]


def load_plugins(value: str | None = None) -> list[str]:
    """Import every plugin module once; return the names imported now. A failing import is a ConfigError."""
    imported = []
    for name in plugin_names(value):
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # a plugin may fail in any way; report which one and why
            raise ConfigError(f"${ENV_VAR}: cannot import plugin module {name!r}: {type(exc).__name__}: {exc}") from exc
        _loaded.add(name)
        imported.append(name)
    return imported
