"""The benchmarks' JSON records: where they live, what provenance each carries, and how they are named and labelled.

Every run writes one record under `docs/results/<kind>/` (dataset, horizon, model, mse, mae, budget, seed, epochs,
wall time, device, git commit, command); `himtm_hf.benchmarks.report.regenerate_results_md` rebuilds
`docs/results.md` from them. A record's fields name no folder of the machine that wrote it (`portable_path`; only
the command line is kept as typed), so that records read the same wherever they were produced.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .budgets import Budget

# The project checkout: this file is himtm_hf/benchmarks/records.py.
ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "docs" / "results"

# What the benchmarks write themselves: changes there do not make the code that produced a record differ from its
# commit (a second benchmark command in the same checkout would otherwise be recorded as `-dirty`).
_BENCHMARK_OUTPUTS = ("docs/results.md", "docs/results")

# HiMTM's defaults (or what they pre-train) changed three times (see `HIMTM_DEFAULTS`); a HiMTM record names the set
# it ran with, so a table never pools runs of two different models under one label. Records written before the field
# existed ran with set 0.
HIMTM_DEFAULTS_VERSION = 4
HIMTM_DEFAULTS: dict[int, str] = {
    0: "teacher_input='masked', csa_attention='global', positional_encoding_type='learned' (every HiMTM record "
       "before the field existed)",
    1: "teacher_input='full', csa_attention='local', positional_encoding_type='learned'",
    2: "teacher_input='full', csa_attention='local', positional_encoding_type='sincos'",
    3: "as v2, with DED's mask queries and positions initialised (std initializer_range); v0-v2 pre-trained with "
       "both left at zero",
    4: "as v3, with distillation_target_norm='instance', pre-training scaler statistics from the visible patches "
       "(floored at 0.5x the window's scale), look-back-only pre-training windows, context_padding='left', and the "
       "pre-training checkpoint kept by validation reconstruction loss",
}


# ----------------------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------------------


def device_name() -> str:
    """The accelerator's name, or the CPU's architecture and core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def device_kind() -> str:
    """The kind of device a benchmark runs on here, part of each record's file name."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def git_commit(root: Path = ROOT) -> str:
    """The project's commit (`-dirty` with uncommitted changes outside the benchmark outputs `docs/results.md` and
    `docs/results/`); `$HIMTM_GIT_COMMIT` where the tree has no `.git` (e.g. a copy sent to a GPU machine)."""
    import os

    if os.environ.get("HIMTM_GIT_COMMIT"):
        return os.environ["HIMTM_GIT_COMMIT"]
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){path}" for path in _BENCHMARK_OUTPUTS)],
                               capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = proc.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def command_line() -> str:
    """This process's command line, as a record names it (`python <argv>`)."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def portable_path(path: str | Path | None, base: str | Path) -> str | None:
    """A path as a record stores it: no machine's absolute path, so records compare and read the same anywhere.

    Args:
        path: The path to store (None: nothing to store).
        base: The folder it is usually inside (a run's work or output folder, or the project checkout).

    Returns:
        `path` relative to `base` when it is inside it; else a relative `path` (or a name, such as a benchmark's or
        a Hub repository's) as given; else an absolute path's last component. None for None.
    """
    if path is None:
        return None
    path = Path(path)
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        pass
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return path.name


def base_record(dataset: str, budget: Budget, seed: int, context_length: int) -> dict[str, Any]:
    """The fields every accuracy and ablation record starts with: the cell, its budget and the provenance."""
    return {
        "dataset": dataset, "context_length": context_length, "budget": budget.name, "budget_detail": asdict(budget),
        "seed": seed, "device": device_name(), "device_kind": device_kind(),
        "git_commit": git_commit(), "command": command_line(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ----------------------------------------------------------------------------------------------------------------------
# HiMTM defaults sets and labels
# ----------------------------------------------------------------------------------------------------------------------


def himtm_defaults_version(record: dict[str, Any]) -> int | None:
    """The HiMTM defaults set a record ran with (None for a PatchTST record)."""
    return int(record.get("himtm_defaults", 0)) if record.get("model") == "himtm" else None


def tag_defaults(label: str, version: int | None) -> str:
    """`label`, with ` [v<N>]` appended for a HiMTM run of an older defaults set."""
    return label if version in (None, HIMTM_DEFAULTS_VERSION) else f"{label} [v{version}]"


def model_label(record: dict[str, Any]) -> str:
    """`himtm`, `patchtst_...`, or `himtm@<variant>` for a HiMTM variant run through the accuracy benchmark; HiMTM
    runs with an older defaults set get a `[v<N>]` suffix (`HIMTM_DEFAULTS`)."""
    variant = record.get("variant")
    label = record["model"] if variant in (None, "full") else f"{record['model']}@{variant}"
    return tag_defaults(label, himtm_defaults_version(record))


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def record_path(results_dir: Path, kind: str, record: dict[str, Any]) -> Path:
    """The file of one benchmark cell under `results_dir/kind/`: one per (dataset, horizon, model, variant, budget,
    seed, HiMTM defaults set, device kind), so the record's own fields say where it lives."""
    stem = "-".join(str(record.get(k)) for k in ("dataset", "prediction_length", "model", "variant", "budget", "seed")
                    if record.get(k) is not None)
    version = himtm_defaults_version(record)
    if version:  # set 0 keeps its original file names
        stem += f"-d{version}"
    return Path(results_dir) / kind / f"{stem}-{record['device_kind']}.json"


def json_default(value: Any) -> Any:
    """`json.dumps`' fallback for the numpy scalars and paths a record may hold."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_record(results_dir: Path, kind: str, record: dict[str, Any]) -> Path:
    """Writes one run's JSON record under `results_dir/kind/`."""
    path = record_path(results_dir, kind, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=json_default))
    return path


def kept_record(results_dir: Path, kind: str, cell: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The record a cell (at least the naming fields of `record_path`, less the device kind) already has on this kind
    of device, unless `overwrite`. The benchmarks skip such cells: a re-run resumes an interrupted benchmark instead of
    replacing, and paying again for, results the user already has."""
    path = record_path(results_dir, kind, {**cell, "device_kind": device_kind()})
    if overwrite or not path.is_file():
        return None
    print(f"kept {path} (its cell has a record; --overwrite re-runs it)", flush=True)
    return json.loads(path.read_text())


def load_records(results_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Every JSON record under `results_dir/kind/` (sub-folders included), in file-name order."""
    folder = Path(results_dir) / kind
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))] if folder.exists() else []
