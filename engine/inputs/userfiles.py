"""Files, folders and addresses a user names on the command line, with errors that say what to fix.

Every function here raises :class:`~engine.errors.UsageError` (exit status 2 at the command
line) naming the path and the problem: missing, a folder where a file was expected, not
readable, not UTF-8, not JSON, not the kind of file the command needs. The Python API reaches
the same checks; the command line only calls them.
"""

from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from pathlib import Path

from engine.contract import FEATURES_CSV, THRESHOLDS_JSON
from engine.errors import UsageError

# The files without which a folder is not a run folder (docs/method.md section 6), and the
# features.csv columns every reader of a run folder relies on.
RUN_FOLDER_FILES = (FEATURES_CSV, THRESHOLDS_JSON)
RUN_FOLDER_FEATURE_COLUMNS = ("patient_id", "split", "label")


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


@contextmanager
def user_file(path, what: str):
    """Turn the failure to open or decode ``path`` inside the block into a :class:`UsageError`.

    For reading a file the user named through a library call that reads nothing else
    (``load_config(path)``), so the error can name the file and what it was meant to be.
    ``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``, ``PermissionError``
    and ``UnicodeDecodeError`` are converted; anything else passes through.
    """
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise UsageError(f"{what} '{path}': {_os_reason(exc)}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def require_file(path, what: str) -> Path:
    """``path`` as a Path if it is a readable regular file, else a :class:`UsageError`."""
    target = Path(path)
    if not target.exists():
        raise UsageError(f"{what} '{path}' not found")
    if target.is_dir():
        raise UsageError(f"{what} '{path}' is a folder, not a file")
    if not os.access(target, os.R_OK):
        raise UsageError(f"{what} '{path}' is not readable (permission denied)")
    return target


def require_folder(path, what: str) -> Path:
    """``path`` as a Path if it is a readable folder, else a :class:`UsageError`."""
    target = Path(path)
    if not target.exists():
        raise UsageError(f"{what} '{path}' not found")
    if not target.is_dir():
        raise UsageError(f"{what} '{path}' is a file, not a folder")
    if not os.access(target, os.R_OK | os.X_OK):
        raise UsageError(f"{what} '{path}' is not readable (permission denied)")
    return target


def check_output_folder(path, what: str = "output folder") -> Path:
    """``path`` as a Path if it is a folder or can be created as one, else a :class:`UsageError`.

    Creates nothing, so a command can check its ``--out`` before reading its inputs and still
    leave no folder behind when an input is refused.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{what} '{path}' is a file; give a folder (it is created if missing)")
    existing = target.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} '{path}' cannot be created: '{existing}' is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} '{path}' cannot be written (permission denied on '{existing}')")
    return target


def read_json_object(path, what: str) -> dict:
    """The JSON object in ``path``; a :class:`UsageError` if it is missing, not JSON or not an object."""
    target = require_file(path, what)
    with user_file(path, what):
        text = target.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} '{path}' does not hold a JSON object (it holds a {type(value).__name__})")
    return value


def read_csv_table(path, columns=(), what: str = "CSV file", dtype=None):
    """A CSV as a DataFrame, with ``columns`` required; a :class:`UsageError` names what is wrong.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted; ``dtype`` as :func:`pandas.read_csv`.
    """
    import pandas as pd  # lazy: pandas; the path checks every command runs first stay fast

    target = require_file(path, what)
    try:
        with user_file(path, what):
            table = pd.read_csv(target, encoding="utf-8-sig", dtype=dtype)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{what} '{path}' is empty") from None
    except pd.errors.ParserError as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"{what} '{path}' is not a readable CSV ({reason})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"{what} '{path}' has no column {', '.join(repr(c) for c in missing)} "
                         f"(its columns: {', '.join(map(str, table.columns))})")
    return table


def check_scheduler_address(address: str) -> str:
    """``address`` if it is ``inline`` or a Dask scheduler address with a port, else a :class:`UsageError`.

    Checks the form only (``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``HOST:PORT``); whether a
    scheduler answers there is known only when the run connects.
    """
    if address == "inline":
        return address
    from distributed.comm import get_address_host_port  # lazy: Dask; the inline CPU path must not pay for it

    try:
        get_address_host_port(address)
    except ValueError as exc:
        raise UsageError(f"scheduler address '{address}' is neither 'inline' nor tcp://HOST:PORT ({exc})") from None
    return address


def require_run_folder(path) -> Path:
    """``path`` as a Path if it holds a run's outputs (docs/method.md section 6), else a :class:`UsageError`.

    A run folder has ``features.csv`` (with ``patient_id``, ``split`` and ``label`` columns) and
    ``thresholds.json`` (a JSON object); the other outputs are optional for its readers.
    """
    folder = require_folder(path, "run folder")
    missing = [name for name in RUN_FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"'{path}' is not a sarco run folder: {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} missing; give the --out folder of a finished "
                         "`sarco run`")
    read_json_object(folder / THRESHOLDS_JSON, "thresholds file")
    features = folder / FEATURES_CSV
    with user_file(features, "features table"), open(features, encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    absent = [c for c in RUN_FOLDER_FEATURE_COLUMNS if c not in header]
    if absent:
        raise UsageError(f"features table '{features}' has no column {', '.join(repr(c) for c in absent)}; "
                         "it was not written by `sarco run`")
    return folder
