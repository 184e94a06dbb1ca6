"""The one rule for every folder and file the package writes (run folders, evaluation folders, the main job, Hub
dry-run folders, forecast outputs), so that nothing a user made is lost.

A folder is written only if it is new or empty, or if it carries the marker `.himtm-run.json` of an earlier output
of the same kind. The marker is written when an output starts and lists the names that kind of output writes;
`--overwrite_output_dir` / `--overwrite` removes exactly those names (never a file the package did not make), so a
folder without a marker is never cleaned. An output that is, contains or lies inside one of the inputs (the model,
the pre-training, the data, the CSV) is refused, and so is the home folder, the filesystem root, the current
folder or a project root without a marker: refusals happen before anything is touched.

While an output is being written, its folder holds the lock `.himtm-run.lock` (pid, host, start time, created with
`O_CREAT | O_EXCL`): a second writer refuses with the holder's pid instead of interleaving its files with the
first's or deleting its checkpoints. A lock left by a dead process of this host is replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "OutputFolderLockedError",
    "UnsafeOutputError",
    "check_output_file",
    "claim_output_dir",
    "fsync_dir",
    "fsync_tree",
    "local_inputs",
    "read_marker",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

MARKER_FILE = ".himtm-run.json"
LOCK_FILE = ".himtm-run.lock"
_PROJECT_FILES = (".git", "pyproject.toml", "setup.py", "setup.cfg")


class UnsafeOutputError(ValueError):
    """The output would overwrite or mix with an input, or is a folder the package never writes into unmarked."""


class OutputFolderLockedError(RuntimeError):
    """Another live process is writing the same output folder."""


# ----------------------------------------------------------------------------------------------------------------------
# Small file helpers
# ----------------------------------------------------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flushes a folder's entries (a rename or a new file in it) to disk, where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) cannot fsync a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flushes every file under `root` and the folders themselves to disk (before a rename publishes them)."""
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for folder in sorted({p for p in root.rglob("*") if p.is_dir()} | {root}, key=lambda p: -len(p.parts)):
        fsync_dir(folder)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Writes JSON to a temporary file next to `path`, flushes it and renames it over `path`: a reader (or a crash)
    sees the old content or the new one, never half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(payload, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------------------
# Where outputs may go
# ----------------------------------------------------------------------------------------------------------------------


def local_inputs(*candidates: str | os.PathLike[str] | None) -> list[Path]:
    """The candidates that exist on this machine (Hub ids and `None` are dropped), resolved."""
    found = []
    for candidate in candidates:
        if candidate is None or str(candidate) == "":
            continue
        path = Path(candidate).expanduser()
        if path.exists():
            found.append(path.resolve())
    return found


def _relation(output: Path, source: Path) -> str | None:
    """How `output` overlaps `source` ("is", "contains", "lies inside"), or None; both resolved."""
    if output == source:
        return "is"
    if output in source.parents:
        return "contains"
    if source in output.parents:
        return "lies inside"
    return None


def _check_inputs(output: Path, inputs: Iterable[tuple[str, Path]], flag: str) -> None:
    for role, source in inputs:
        relation = _relation(output, source)
        if relation is not None:
            raise UnsafeOutputError(
                f"{flag} {output} {relation} the {role} {source}: an output that overlaps an input of the run could "
                f"destroy or corrupt it, so it is refused whatever the overwrite flag says. Choose a separate {flag}."
            )


def _protected_reason(path: Path) -> str | None:
    """Why `path` (resolved) is a folder the package never writes into without its marker, or None."""
    if path == Path(path.anchor):
        return "the filesystem root"
    with contextlib.suppress(RuntimeError, KeyError):
        if path == Path.home().resolve():
            return "your home folder"
    if path == Path.cwd().resolve():
        return "the current folder"
    found = [name for name in _PROJECT_FILES if (path / name).exists()]
    if found:
        return f"a project folder (it holds {found[0]})"
    return None


def check_output_file(
    path: str | os.PathLike[str],
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]],
    overwrite: bool,
    flag: str,
) -> Path:
    """Checks an output *file* (forecast CSV, plot) before anything is written: never an input or a file inside an
    input folder, never a folder, and an existing file only with `overwrite` (`flag` names the option in messages).
    Returns the path."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    for role, candidate in inputs:
        for source in local_inputs(candidate):
            same = resolved == source or (path.exists() and os.path.samefile(path, source))
            if same or source in resolved.parents:
                raise UnsafeOutputError(
                    f"{flag} {path} {'is' if same else 'lies inside'} the {role} {source}; refusing to write over an "
                    f"input (even with --overwrite). Choose another {flag}."
                )
    if path.is_dir():
        raise UnsafeOutputError(f"{flag} {path} is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another {flag}.")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Marker
# ----------------------------------------------------------------------------------------------------------------------


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of `folder` (`None` if there is none or it is not a valid marker)."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        return None
    return marker


def _write_marker(folder: Path, kind: str, written: Iterable[str], previous: dict[str, Any] | None) -> None:
    from . import __version__

    names = list(dict.fromkeys([*((previous or {}).get("written") or []), *written]))
    write_json_atomic(folder / MARKER_FILE, {
        "kind": kind,
        "package": "himtm-hf",
        "version": __version__,
        "created": (previous or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "written": names,
    })


def _marked_targets(folder: Path, marker: dict[str, Any]) -> list[Path]:
    """The paths the marker says the package wrote, each checked to lie directly in `folder`: a hand-edited
    marker cannot direct a deletion elsewhere."""
    targets = []
    for name in marker.get("written") or []:
        rel = Path(str(name))
        if (not isinstance(name, str) or not name or rel.is_absolute() or ".." in rel.parts
                or rel.name in (MARKER_FILE, LOCK_FILE)):
            raise UnsafeOutputError(
                f"{folder / MARKER_FILE} lists {name!r}, which is not a name inside the folder; the marker was "
                "edited by hand. Nothing was removed: clean the folder yourself or choose another one."
            )
        targets.append(folder / rel)
    return targets


def _remove_marked(folder: Path, marker: dict[str, Any]) -> None:
    for target in _marked_targets(folder, marker):
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)


# ----------------------------------------------------------------------------------------------------------------------
# Lock
# ----------------------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


class _RunLock:
    """`.himtm-run.lock` of one folder: created with `O_EXCL`, holds pid, host and start time."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.text = json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _holder(self) -> tuple[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
            info = json.loads(text)
            return text, info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return "", {}

    def _is_stale(self, info: dict[str, Any]) -> bool:
        pid = info.get("pid")
        if not isinstance(pid, int) or info.get("hostname") != socket.gethostname():
            return False  # another host's process cannot be checked from here
        return pid != os.getpid() and not _pid_alive(pid)

    def _break(self, stale_text: str) -> None:
        """Moves a stale lock aside; if another process replaced it in the meantime, puts that fresh one back."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text(encoding="utf-8") != stale_text:
                with contextlib.suppress(OSError):  # a lock exists again, or no hard links here
                    os.link(aside, self.path)
        finally:
            aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        for attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text, info = self._holder()
                if attempt < 2 and self._is_stale(info):
                    logger.warning("Replacing the stale lock %s of process %s (no longer running).", self.path,
                                   info.get("pid"))
                    self._break(text)
                    continue
                raise OutputFolderLockedError(
                    f"{self.path.parent} is being written by process {info.get('pid', '?')} on host "
                    f"{info.get('hostname', '?')} (started {info.get('started', '?')}; lock {self.path}). Wait for "
                    "that run to end or choose another output folder. If no such process is running (e.g. it ran on "
                    "another machine and died), delete the lock file."
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.text)
                handle.flush()
                os.fsync(handle.fileno())
            return

    def release(self) -> None:
        text, _ = self._holder()
        if text == self.text:
            self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------------------------------------------------


def _only_own_files(folder: Path) -> bool:
    """True if the folder is empty apart from a lock file (e.g. a run killed before it wrote its marker)."""
    return all(p.name == LOCK_FILE for p in folder.iterdir())


def _check(
    path: Path,
    kind: str,
    overwrite: bool,
    resume: bool,
    inputs: Sequence[tuple[str, Path]],
    flag: str,
    overwrite_flag: str,
    resume_flag: str | None,
) -> dict[str, Any] | None:
    """The read-only part of the rule; returns the folder's marker (None for a new or empty folder)."""
    resolved = path.resolve()
    _check_inputs(resolved, inputs, flag)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{flag} {path} exists and is not a folder; choose another {flag}.")
    marker = read_marker(path) if path.is_dir() else None
    if marker is None:
        reason = _protected_reason(resolved)
        if reason is not None:
            raise UnsafeOutputError(
                f"{flag} {path} is {reason}, which carries no {MARKER_FILE} marker; the package only writes into a "
                f"new or empty folder or into one of its own. Choose a subfolder, e.g. {flag} outputs/run."
            )
    if resume:
        if not path.is_dir():
            raise FileNotFoundError(f"Cannot resume: output directory {path} does not exist.")
        if marker is None or marker["kind"] != kind:
            raise FileNotFoundError(
                f"Cannot resume in {path}: it carries no {MARKER_FILE} marker of a {kind} folder (it was not written "
                "by this version of himtm-hf). Start a new run in another folder."
            )
        return marker
    if not path.is_dir() or _only_own_files(path):
        return marker
    if marker is None:
        raise FileExistsError(
            f"Output directory {path} already exists, is not empty and carries no {MARKER_FILE} marker, so its files "
            f"cannot be told from the package's; {overwrite_flag} only removes what such a marker lists, so it does "
            f"not apply. Choose another {flag}, or move or delete the folder yourself."
        )
    if marker["kind"] != kind:
        raise FileExistsError(
            f"Output directory {path} holds a '{marker['kind']}' output of himtm-hf, not a '{kind}' one; "
            f"{overwrite_flag} does not replace one kind with another. Choose another {flag}."
        )
    if not overwrite:
        hint = f", {resume_flag} to continue the run in it," if resume_flag else ""
        raise FileExistsError(
            f"Output directory {path} already exists and is not empty. Pass {overwrite_flag} to overwrite it (the "
            f"files its {MARKER_FILE} lists are deleted, nothing else){hint} or choose another {flag}."
        )
    _marked_targets(path, marker)  # a bad marker fails here, before the lock is taken
    return marker


def _claim(path: Path, kind: str, written: Sequence[str], overwrite: bool, resume: bool, check: Any) -> _RunLock:
    """Takes the lock, repeats the checks under it (another run may have written the folder meanwhile), cleans the
    marked files when overwriting and writes the marker."""
    path.mkdir(parents=True, exist_ok=True)
    lock = _RunLock(path)
    lock.acquire()
    try:
        marker = check()
        if overwrite and not resume and marker is not None:
            _remove_marked(path, marker)
            marker = {k: v for k, v in marker.items() if k != "written"}
        _write_marker(path, kind, written, marker)
    except BaseException:
        lock.release()
        raise
    return lock


def _share_error(accelerator: Any, error: BaseException | None) -> None:
    """Raises on every process the error the main process met (other processes would otherwise wait forever)."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) <= 1:
        if error is not None:
            raise error
        return
    from accelerate.utils import broadcast_object_list

    payload = [None if error is None else (type(error).__name__, str(error))]
    broadcast_object_list(payload, from_process=0)
    if error is not None:
        raise error
    if payload[0] is not None:
        name, message = payload[0]
        kinds = {c.__name__: c for c in (UnsafeOutputError, OutputFolderLockedError, FileExistsError,
                                          FileNotFoundError, ValueError)}
        raise kinds.get(name, RuntimeError)(message)


@contextlib.contextmanager
def claim_output_dir(
    output_dir: str | os.PathLike[str],
    *,
    kind: str,
    written: Sequence[str],
    overwrite: bool = False,
    resume: bool = False,
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
    accelerator: Any = None,
    flag: str = "--output_dir",
    overwrite_flag: str = "--overwrite_output_dir",
    resume_flag: str | None = None,
) -> Iterator[Path]:
    """Checks, locks and prepares an output folder for the duration of the `with` block; yields its path.

    Args:
        output_dir: the folder.
        kind: what the folder holds (`"run"`, `"evaluate"`, `"main_job"`, `"hub_upload"`); only a marker of the same
            kind is written into or overwritten.
        written: the names (relative to the folder) this output may write; stored in the marker, and what a later
            `overwrite` removes.
        overwrite: remove the names the folder's marker lists first.
        resume: continue in the folder (it must carry a marker of this kind); nothing is removed.
        inputs: `(role, path)` pairs, e.g. `("model", model_dir)`; paths that do not exist locally (Hub ids) are
            skipped. The output may not be, contain or lie inside any of them.
        accelerator: with several processes, every process checks, the main one locks and writes, and a refusal
            is raised on all of them.
        flag, overwrite_flag, resume_flag: option names used in the messages (`resume_flag` None: no resume hint).

    Raises:
        UnsafeOutputError: the output overlaps an input, or is a home/root/current/project folder without marker.
        FileExistsError: a non-empty folder without marker, of another kind, or without `overwrite`.
        OutputFolderLockedError: a live process holds the folder's lock.
    """
    path = Path(output_dir).expanduser()
    sources = [(role, source) for role, candidate in inputs for source in local_inputs(candidate)]

    def check() -> dict[str, Any] | None:
        return _check(path, kind, overwrite, resume, sources, flag, overwrite_flag, resume_flag)

    check()  # every process: refusals before anything is touched
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        accelerator.wait_for_everyone()
    lock, error = None, None
    if main:
        try:
            lock = _claim(path, kind, written, overwrite, resume, check)
        except Exception as caught:  # shared below, so that no process waits for the others forever
            error = caught
    _share_error(accelerator, error)
    try:
        yield path
    finally:
        if lock is not None:
            lock.release()
