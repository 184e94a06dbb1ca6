"""Resumable checkpoints of the training loop: the loop state, crash-safe saving, trusted loading, finding and pruning.

A checkpoint is `<output_dir>/checkpoints/step-N`: accelerate's files (model safetensors, optimizer, RNG states), the
scheduler and [`TrainerState`] as JSON, the best weights so far as safetensors, and `checkpoint.json`, written last.
[`save_checkpoint_atomically`] publishes the folder only when it is complete; [`load_checkpoint`] reads it without
unpickling anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..output_folders import fsync_dir, fsync_tree, write_json_atomic

__all__ = [
    "CHECKPOINTS_DIR",
    "TrainerState",
    "find_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint_atomically",
]

CHECKPOINTS_DIR = "checkpoints"

# Checkpoint files besides accelerate's (model.safetensors, optimizer.bin, random_states_N.pkl).
CHECKPOINT_COMPLETE = "checkpoint.json"  # written last: a checkpoint without it is incomplete
TRAINER_STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
BEST_WEIGHTS_FILE = "best_model.safetensors"
_STEP_NAME = r"step-\d+"  # a published checkpoint folder (not a `.tmp-*` one)


@dataclass
class TrainerState:
    """Loop state saved in every checkpoint: `trainer_state.json` (the numbers) and `best_model.safetensors` (the
    best weights so far); nothing of it is pickled."""

    global_step: int = 0
    best_val_loss: float | None = None
    """Best value so far of `TrainArguments.metric_for_best_model` (the total validation loss by default)."""
    best_step: int | None = None
    metric_for_best_model: str = "loss"
    evals_without_improvement: int = 0
    last_eval_step: int | None = None
    should_stop: bool = False
    log_lines: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def state_dict(self) -> dict[str, Any]:
        """Every field by name, `best_state` included (its tensors as they are)."""
        return {
            "global_step": self.global_step,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "metric_for_best_model": self.metric_for_best_model,
            "evals_without_improvement": self.evals_without_improvement,
            "last_eval_step": self.last_eval_step,
            "should_stop": self.should_stop,
            "log_lines": self.log_lines,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Sets the fields from a dict of [`state_dict`]'s keys."""
        # Checkpoints from before the field always chose by the total loss.
        state = {"metric_for_best_model": "loss", **state}
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, folder: Path) -> None:
        """Writes `trainer_state.json` and, if there are best weights, `best_model.safetensors` into `folder`."""
        from safetensors.torch import save_file

        numbers = {k: v for k, v in self.state_dict().items() if k != "best_state"}
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
        if self.best_state is not None:
            save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(folder / BEST_WEIGHTS_FILE))

    def load(self, folder: Path) -> None:
        """Reads what [`save`] wrote (JSON and safetensors: loading runs no code from the checkpoint)."""
        from safetensors.torch import load_file

        state = json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        best = folder / BEST_WEIGHTS_FILE
        state["best_state"] = load_file(str(best)) if best.is_file() else None
        self.load_state_dict(state)


def _is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / CHECKPOINT_COMPLETE).is_file()


def find_checkpoint(output_dir: str | os.PathLike[str], value: str) -> Path:
    """Resolves `--resume_from_checkpoint`: `"latest"` (highest complete `checkpoints/step-N`), a path, or a
    checkpoint name. Only complete checkpoints (with `checkpoint.json`, written last before the rename that
    publishes the folder) are accepted: an interrupted save is never resumed from."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if value == "latest":
        steps = [p for p in root.glob("step-*") if p.is_dir() and re.fullmatch(_STEP_NAME, p.name)]
        candidates = [p for p in steps if _is_complete_checkpoint(p)]
        if not candidates:
            skipped = f" ({len(steps)} incomplete one(s) skipped)" if steps else ""
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {root}{skipped} (save them with "
                "--save_steps N)."
            )
        return max(candidates, key=lambda p: int(p.name.split("-")[1]))
    for candidate in (Path(value), root / value):
        if candidate.is_dir():
            if not _is_complete_checkpoint(candidate):
                raise FileNotFoundError(
                    f"Checkpoint {candidate} has no {CHECKPOINT_COMPLETE}: its save was interrupted, or an older "
                    "version of himtm-hf wrote it. Resume from another checkpoint (--resume_from_checkpoint latest "
                    "picks the newest complete one)."
                )
            return candidate
    raise FileNotFoundError(f"Checkpoint {value!r} not found (looked at {Path(value)} and {root / value}).")


def save_checkpoint_atomically(
    accelerator: Accelerator, root: Path, step: int, scheduler: Any, state: TrainerState
) -> Path:
    """Saves `checkpoints/step-N` so that it exists only complete: everything is written into
    `checkpoints/.tmp-step-N` (accelerate's model safetensors, optimizer and RNG states; the scheduler and the loop
    state as JSON, the best weights as safetensors), flushed to disk, `checkpoint.json` written last, and the folder
    renamed. A kill at any point leaves the previous checkpoints as they were and at most a `.tmp-*` folder, which
    `--resume_from_checkpoint latest` ignores and the next save removes."""
    final = root / f"step-{step}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".tmp-*"):  # of this save, or of one a kill interrupted
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process (its RNG state); the model and optimizer on the main one
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), indent=2) + "\n", encoding="utf-8")
        state.save(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        fsync_tree(tmp)
        write_json_atomic(tmp / CHECKPOINT_COMPLETE, {"step": int(step), "files": files, "format": 1})
        if final.exists():  # a step saved again (a resumed run): the old one goes first; a kill here loses neither
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)  # the rename itself reaches the disk
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, scheduler: Any, state: TrainerState) -> None:
    """Restores a checkpoint written by [`save_checkpoint_atomically`] without running code from it: model weights
    from safetensors, the scheduler and loop state from JSON, the best weights from safetensors, and the optimizer
    and RNG states (accelerate's `torch.save` files) with `torch.load(weights_only=True)`, which reads tensors and
    plain containers only. Checkpoints should still come from a trusted source: weights can be wrong on purpose."""
    missing = [name for name in (SCHEDULER_FILE, TRAINER_STATE_FILE) if not (checkpoint / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Checkpoint {checkpoint} lacks {', '.join(missing)}; it was not written by this "
                                "version of himtm-hf. Resume from another checkpoint or start a new run.")
    try:
        accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"Checkpoint {checkpoint} holds a file with objects other than tensors and plain values; it was refused "
            "rather than unpickled (that could run code). Resume only from checkpoints you wrote or trust."
        ) from error
    scheduler.load_state_dict(json.loads((checkpoint / SCHEDULER_FILE).read_text(encoding="utf-8")))
    state.load(checkpoint)


def prune_checkpoints(root: Path, limit: int | None, accelerator: Accelerator) -> None:
    """Keeps the `limit` newest `step-N` checkpoints under `root` (all of them if `limit` is None or <= 0).

    Args:
        root: the `checkpoints` folder of the run.
        limit: `TrainArguments.save_total_limit`.
        accelerator: only its main process deletes; every process waits for it, so that none reads a checkpoint
            while it is being removed.
    """
    if accelerator.is_main_process and limit is not None and limit > 0:
        existing = sorted(
            (p for p in root.glob("step-*") if re.fullmatch(_STEP_NAME, p.name)),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for old in existing[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
