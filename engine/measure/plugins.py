"""User extensions: modules that register feature stats or fit methods, imported in every process of a run.

A stat (:mod:`engine.measure.features`) or a method (:mod:`engine.measure.methods`) is registered by importing the
module that calls ``register``. The engine imports two kinds of such modules:

- the modules named in the config's ``run.plugins`` (dotted module names, importable where the run
  and its workers run: installed, or on ``PYTHONPATH``);
- every entry point of the group :data:`ENTRY_POINT_GROUP` of the installed distributions
  (``[project.entry-points."sarco_engine.plugins"]`` in a plug-in's ``pyproject.toml``).

They are imported when a config is validated (the client, before ``fit.methods`` is checked against
the registry) and again at the start of every task (:func:`engine.batch.tasks._validated`), so a
``LocalCluster(processes=True)`` worker or an external ``dask-worker`` registers them before it
measures anything. An import happens once per process. See docs/extending.md.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from importlib import metadata

from engine.errors import ConfigError

#: The entry-point group whose objects (modules or callables) the engine loads in every process.
ENTRY_POINT_GROUP = "sarco_engine.plugins"

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_imported: set[str] = set()
_entry_points_loaded = False


def check_module_name(name: str) -> str:
    """``name`` if it is a dotted module name (``my_lab.stats``), else ValueError."""
    if not isinstance(name, str) or not _MODULE_NAME.match(name):
        raise ValueError(f"a plug-in is a dotted module name such as my_lab.sarco_stats, got {name!r}")
    return name


def import_plugins(modules: Iterable[str] = ()) -> None:
    """Import ``modules`` and the :data:`ENTRY_POINT_GROUP` entry points (each once per process).

    Raises
    ------
    ConfigError
        On ``run.plugins`` when a module cannot be imported or its registrations fail.
    """
    for name in modules:
        if name in _imported:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of a user module is a config error naming it
            raise ConfigError("run.plugins", f"cannot import plug-in module {name!r}: "
                                             f"{type(exc).__name__}: {exc}") from None
        _imported.add(name)
    load_entry_points()


def load_entry_points() -> None:
    """Load every entry point of :data:`ENTRY_POINT_GROUP` (once per process; a callable is called)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded):
                loaded()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in names itself
            raise ConfigError("run.plugins", f"the installed plug-in {entry.name!r} ({entry.value}, entry point "
                                             f"group {ENTRY_POINT_GROUP}) failed: {type(exc).__name__}: "
                                             f"{exc}") from None
    _entry_points_loaded = True
