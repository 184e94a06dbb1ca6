"""Imports `scripts/<name>.py` for the tests that call a script's functions directly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """Imports scripts/<name>.py under a private module name (putting scripts/ on sys.path would let
    scripts/evaluate.py shadow the `evaluate` package for every later test)."""
    spec = importlib.util.spec_from_file_location(f"_himtm_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
