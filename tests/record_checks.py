"""Checks of the benchmarks' JSON records shared by their tests: a record names no machine's folder."""

from __future__ import annotations

import re
from typing import Any

# Kept as typed, since a record says how to rerun it; every other field goes through `portable_path`.
VERBATIM_FIELDS = frozenset({"command"})
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


def absolute_paths(record: Any, where: str = "") -> list[str]:
    """Every field of `record` (nested ones included, `VERBATIM_FIELDS` left out) whose value is an absolute path.

    Args:
        record: A record, or a value inside one.
        where: The field path of `record` inside the top-level record (for the messages).

    Returns:
        `"<field path>: <value>"` for each absolute path found (none: the record is portable).
    """
    if isinstance(record, dict):
        return [hit for key, value in record.items() if key not in VERBATIM_FIELDS
                for hit in absolute_paths(value, f"{where}.{key}")]
    if isinstance(record, list):
        return [hit for i, value in enumerate(record) for hit in absolute_paths(value, f"{where}[{i}]")]
    if isinstance(record, str) and (record.startswith(("/", "~")) or _WINDOWS_DRIVE.match(record)):
        return [f"{where}: {record}"]
    return []
