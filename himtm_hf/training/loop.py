"""The Accelerate training loop, prediction and the run-folder helpers (checkpoints: `checkpointing.py`).

One code path for CPU, one GPU, several GPUs and several CPU processes (`accelerate launch`). The loop works for any
`PreTrainedModel` whose forward takes `past_values` (and, for forecasting, `future_values`) and returns `.loss`:
HiMTM and `transformers.PatchTST*` alike. HiMTM's EMA teacher (`teacher_type="ema"`) takes its step inside the model's
next training forward, as it does under `transformers.Trainer`, so this loop has nothing to call for it.

Determinism (see `docs/training.md`): the torch RNG is re-seeded before every micro-batch from
`(seed, optimiser step)`, so a run's masks and dropout do not depend on what ran before (resumed runs match
uninterrupted ones). In pre-training the random masks additionally do not depend on how the global batch is split
over processes and micro-batches: every process uses the same `(seed, step)` stream and takes the numbers of its own
samples from it, so with the same global batch a 2-process run draws exactly the masks of a 1-process run. HiMTM gets
them as `mask_noise` (generated on CPU: exact on any device); other models with a known mask draw (PatchTST) get the
global RNG advanced past the samples in front of theirs (exact on CPU, where `torch.rand` is sequential).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    is_compiled_module,
)
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from ..output_folders import claim_output_dir
from .arguments import TrainArguments, check_head_only
from .checkpointing import (
    CHECKPOINTS_DIR,
    TrainerState,
    find_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint_atomically,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "LAYOUT_FILES",
    "RUN_KIND",
    "RUN_LAYOUT",
    "EpochShuffleSampler",
    "EvalCallback",
    "JsonlLogger",
    "TrainResult",
    "TrainerState",
    "cap_windows",
    "claim_run_dir",
    "find_checkpoint",
    "iterate_forecasts",
    "make_accelerator",
    "mask_draws_per_sample",
    "predict",
    "prepare_output_dir",
    "resolve_mixed_precision",
    "seed_for_micro_batch",
    "setup_logging",
    "step_seed",
    "set_encoder_frozen",
    "train_head_then_model",
    "train_model",
    "write_run_args",
]

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
RUN_ARGS_FILE = "run_args.json"
METRICS_FILE = "metrics.json"
PLOT_FILE = "forecast_plot.png"
DIAGNOSTICS_PLOT_FILE = "pretraining_diagnostics.png"  # pre-training: `himtm_hf.pretraining_diagnostics`
HEAD_ONLY_DIR = "head_only"  # the first phase of `train_head_then_model`
LAYOUT_FILES = (
    "config.json",
    "model.safetensors",
    "configuration_himtm.py",
    "modeling_himtm.py",
    "scaler.json",
    RUN_ARGS_FILE,
    LOG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    CHECKPOINTS_DIR,
)
"""Names a run writes in its output folder."""
CORPUS_FILE = "corpus.json"  # multi-domain pre-training only (himtm_hf.data.CORPUS_FILE)
RUN_LAYOUT = (*LAYOUT_FILES, HEAD_ONLY_DIR, CORPUS_FILE, DIAGNOSTICS_PLOT_FILE)
"""What a run folder's marker lists: `--overwrite_output_dir` removes exactly these (`HEAD_ONLY_DIR` only LP-FT
runs (`--head_only_epochs`, `--head_only_steps`) write, `CORPUS_FILE` only multi-domain pre-training,
`DIAGNOSTICS_PLOT_FILE` only pre-training), nothing else."""
RUN_KIND = "run"
"""The marker kind of training run folders (pre-training, fine-tuning, `train_model`)."""

_EVAL_STREAM = 1 << 40  # offset that separates the evaluation seeds from the training-step seeds


def setup_logging(level: int = logging.INFO) -> None:
    """Script logging: `himtm_hf` at `level` on the main process (WARNING elsewhere), accelerate's per-step chatter
    (checkpoint file names) at WARNING."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("himtm_hf").setLevel(level if rank == 0 else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------------------------------------
# Accelerator, seeds
# ----------------------------------------------------------------------------------------------------------------------


def _has_accelerator_device() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def resolve_mixed_precision(value: str, use_cpu: bool = False) -> str:
    """`"auto"` -> `"bf16"` on a bf16-capable CUDA GPU (unless `use_cpu`), else `"no"`; other values unchanged."""
    if value != "auto":
        return value
    forced_cpu = use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if not forced_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(args: Any) -> Accelerator:
    """An `Accelerator` for `args` (`TrainArguments` or anything with `mixed_precision` / `use_cpu`).

    Processes launched by `accelerate launch` (or torchrun) on a machine without a GPU run as `MULTI_CPU` with gloo,
    also when launched with `--multi_gpu`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = bool(getattr(args, "use_cpu", False)) or (world_size > 1 and not _has_accelerator_device())
    mixed_precision = resolve_mixed_precision(getattr(args, "mixed_precision", "auto"), use_cpu=cpu)
    if not _has_accelerator_device() and mixed_precision == "fp16":
        raise ValueError("--mixed_precision fp16 needs a GPU; use bf16 or no on CPU.")
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=bool(getattr(args, "ddp_find_unused_parameters", False)))]
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=cpu,
        kwargs_handlers=handlers,
        dataloader_config=DataLoaderConfiguration(split_batches=False, even_batches=True),
        step_scheduler_with_optimizer=False,
    )


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from `seed` and integer keys (`numpy.random.SeedSequence`: stable across versions)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def mask_draws_per_sample(model: torch.nn.Module) -> int | None:
    """Uniform random numbers the model's pre-training forward draws per sample *before* anything else random.

    HiMTM: `num_input_channels * num_masking_units` (`hierarchical_random_mask`); PatchTST with random masking:
    `channels * num_patches` (`random_masking`). `None` for other models (then the masks are seeded per process
    and do not reproduce across process counts).
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    if getattr(config, "model_type", None) == "himtm" and hasattr(config, "num_masking_units"):
        return int(config.num_input_channels) * int(config.num_masking_units)
    if getattr(config, "model_type", None) == "patchtst" and getattr(config, "mask_type", "random") == "random":
        patches = (max(config.context_length, config.patch_length) - config.patch_length) // config.patch_stride + 1
        channels = 1 if getattr(config, "channel_consistent_masking", False) else int(config.num_input_channels)
        return channels * patches
    return None


def _accepts_mask_noise(model: torch.nn.Module) -> bool:
    """True if the model's forward takes a `mask_noise` tensor `(batch, channels, num_masking_units)`."""
    try:
        return "mask_noise" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def seed_for_micro_batch(
    seed: int,
    stream: int,
    position: int,
    batch_size: int,
    draws_per_sample: int | None,
    device: torch.device,
    noise_shape: tuple[int, int] | None = None,
) -> torch.Tensor | None:
    """Seeds the torch RNG for one micro-batch and returns the mask noise for models that accept it.

    Args:
        seed: the run's seed.
        stream: the optimiser step (training) or an evaluation batch key; all processes use the same value.
        position: index of this micro-batch among the equal-sized micro-batches of the stream, in data order:
            `micro_index * num_processes + process_index` (this is the order in which accelerate's sharding hands
            out consecutive batches of the sampler).
        batch_size: samples in this micro-batch.
        draws_per_sample: see [`mask_draws_per_sample`]; `None` = seed per `(stream, position)` instead.
        device: the device the model draws its masks on.
        noise_shape: `(channels, num_masking_units)` when the model takes `mask_noise`; the noise is then generated
            here (on CPU, device independent) and returned.

    The same `(seed, stream)` stream is used by every process; a process skips `position * batch_size *
    draws_per_sample` numbers before the model draws, so sample `i` of the global batch gets the same mask whatever
    the number of processes, the per-device batch size or the gradient accumulation.
    """
    if draws_per_sample is None:
        torch.manual_seed(step_seed(seed, stream, position))
        return None
    skip = position * batch_size * draws_per_sample
    if noise_shape is not None:
        generator = torch.Generator().manual_seed(step_seed(seed, stream))
        if skip:
            torch.rand(skip, generator=generator)
        noise = torch.rand(batch_size, *noise_shape, generator=generator)
        torch.manual_seed(step_seed(seed, stream, position))  # dropout etc.
        return noise.to(device)
    torch.manual_seed(step_seed(seed, stream))
    if skip:
        torch.rand(skip, device=device)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------------------------


class EpochShuffleSampler(Sampler[int]):
    """A permutation of `range(num_samples)` that depends only on `(seed, epoch)`.

    Every process draws the same order (accelerate then hands out consecutive batches round-robin), and a resumed
    run re-creates the order of the interrupted epoch exactly. `set_epoch` is called by the loop (and by accelerate's
    `DataLoaderShard.set_epoch`).
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(step_seed(self.seed, 0xDA7A, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


SERIES_STATISTICS = ("series_mean", "series_std")
"""Keys of panel windows (`himtm_hf.panel.PanelWindows`) holding the standardisation of each window's series."""


def cap_windows(dataset: Dataset, max_windows: int | None) -> Dataset:
    """At most `max_windows` items of `dataset`: an evenly strided subset including the first and last window."""
    n = len(dataset)
    if max_windows is None or max_windows >= n:
        return dataset
    indices = np.unique(np.linspace(0, n - 1, num=int(max_windows)).round().astype(np.int64)).tolist()
    return Subset(dataset, indices)


def _forward_keys(model: torch.nn.Module, is_pretraining: bool) -> set[str] | None:
    """Batch keys the model's forward takes (`None` = it takes `**kwargs`, pass every known key)."""
    wanted = {"past_values", "past_observed_mask"}
    if not is_pretraining:
        wanted |= {"future_values", "future_observed_mask"}
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return wanted
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return wanted
    return {k for k in wanted if k in parameters}


def _model_inputs(batch: dict[str, torch.Tensor], keys: set[str] | None) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if keys is None or k in keys}


def _batch_size(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["past_values"].shape[0])


# ----------------------------------------------------------------------------------------------------------------------
# Run folder
# ----------------------------------------------------------------------------------------------------------------------


def claim_run_dir(
    output_dir: str | os.PathLike[str],
    overwrite_output_dir: bool = False,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
) -> contextlib.AbstractContextManager[Path]:
    """The run folder of a training run, held (locked) for a `with` block: see `himtm_hf.output_folders`.

    A new or empty folder, or one carrying the marker of an earlier run; `overwrite_output_dir` removes the names
    that marker lists (`RUN_LAYOUT`), nothing else; `resume` continues the run in it. `inputs` (`(role, path)`: the
    data, a pre-training) may not be, contain or hold the folder. Call it on every process.
    """
    return claim_output_dir(
        output_dir, kind=RUN_KIND, written=RUN_LAYOUT, overwrite=overwrite_output_dir, resume=resume, inputs=inputs,
        accelerator=accelerator, resume_flag="--resume_from_checkpoint latest",
    )


def prepare_output_dir(
    output_dir: str | os.PathLike[str],
    overwrite_output_dir: bool = False,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
) -> Path:
    """Checks and prepares a run folder as [`claim_run_dir`] does, without keeping it locked (for callers that write
    it on their own); call it on every process before anything writes there.

    Raises:
        FileExistsError: the folder is not empty and carries no marker, or `overwrite_output_dir`/`resume` is missing.
        UnsafeOutputError: it overlaps an input, or is the home, root, current or a project folder without marker.
        OutputFolderLockedError: a live run holds it.
    """
    with claim_run_dir(output_dir, overwrite_output_dir, resume, accelerator, inputs) as path:
        return path




def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_run_args(output_dir: str | os.PathLike[str], accelerator: Accelerator | None = None, **sections: Any) -> Path:
    """Writes `run_args.json`: every given section (dataclasses -> dicts), the command line and the environment."""
    path = Path(output_dir) / RUN_ARGS_FILE
    if accelerator is not None and not accelerator.is_main_process:
        return path
    import accelerate
    import transformers

    payload = {name: _jsonable(value) for name, value in sections.items()}
    payload["command_line"] = [sys.executable, *sys.argv]
    payload["environment"] = {
        "num_processes": accelerator.num_processes if accelerator is not None else 1,
        "distributed_type": str(accelerator.distributed_type) if accelerator is not None else "NO",
        "mixed_precision": accelerator.mixed_precision if accelerator is not None else "no",
        "device": str(accelerator.device) if accelerator is not None else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def count_log_lines(output_dir: str | os.PathLike[str]) -> int:
    """Events in `<output_dir>/log.jsonl` (0 if there is none)."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


class JsonlLogger:
    """Appends one JSON object per event to `<output_dir>/log.jsonl` (main process) and keeps them in `history`."""

    def __init__(self, output_dir: str | os.PathLike[str] | None, enabled: bool = True):
        self.path = Path(output_dir) / LOG_FILE if output_dir is not None else None
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []
        self.lines = 0  # events written to the file so far (counted on every process)

    def truncate(self, num_lines: int) -> None:
        """Keeps the first `num_lines` events of the file (a resumed run re-creates the ones after its checkpoint)."""
        self.lines = int(num_lines)
        if not self.enabled or self.path is None or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()][: self.lines]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, **record: Any) -> dict[str, Any]:
        record = {k: _jsonable(v) for k, v in record.items()}
        self.history.append(record)
        self.lines += 1
        if self.enabled and self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return record


# ----------------------------------------------------------------------------------------------------------------------
# Run result
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What [`train_model`] returns."""

    model: PreTrainedModel
    """The unwrapped model, with the best validation weights restored (the last weights if there was no validation)."""
    global_step: int
    epochs: float
    best_val_loss: float | None
    """Best validation value of `train_args.metric_for_best_model` (the weights in `model` are from that step)."""
    best_step: int | None
    stopped_early: bool
    wall_time_s: float
    history: list[dict[str, Any]]
    accelerator: Accelerator


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation inside the loop
# ----------------------------------------------------------------------------------------------------------------------


def _shard_batches(num_samples: int, batch_size: int, process_index: int, num_processes: int) -> list[tuple[int, list[int]]]:
    """`(batch_index, sample_indices)` of the consecutive batches of size `batch_size` that this process evaluates:
    batch `j` goes to process `j % num_processes`. No padding, so every window counts exactly once."""
    batches = []
    for j, begin in enumerate(range(0, num_samples, batch_size)):
        if j % num_processes == process_index:
            batches.append((j, list(range(begin, min(num_samples, begin + batch_size)))))
    return batches


def _validation_loss_names(is_pretraining: bool) -> tuple[str, ...]:
    """The validation losses [`_validation_losses`] can report (a pre-trainer reports those its output has)."""
    return ("loss", "reconstruction_loss", "distillation_loss") if is_pretraining else ("loss",)


def _check_metric_for_best_model(metric: str, available: Collection[str], model: torch.nn.Module) -> None:
    if metric not in available:
        raise ValueError(
            f"--metric_for_best_model {metric!r} is not among the validation losses of "
            f"{type(model).__name__} ({', '.join(sorted(available))}); pass one of those."
        )


@torch.no_grad()
def _validation_losses(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    accelerator: Accelerator,
    is_pretraining: bool,
    keys: set[str] | None,
    seed: int,
    draws_per_sample: int | None,
    noise_shape: tuple[int, int] | None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Validation loss over every window of `dataset`, on the unwrapped model.

    The windows are cut into consecutive batches of `batch_size`; batch `j` is evaluated by process
    `j % num_processes` with its masks seeded by `(seed, eval stream + j)`, and the sums are all-reduced, so the
    value does not depend on the number of processes (for a fixed `batch_size`) and is the same at every validation
    for the same weights. Forecasting: MSE of `prediction_outputs` against `future_values` over observed values (the
    standardised MSE that is reported). Pre-training: the model's loss (and its parts) averaged over windows.
    """
    was_training = model.training
    model.eval()
    shards = _shard_batches(len(dataset), batch_size, accelerator.process_index, accelerator.num_processes)
    loader = DataLoader(dataset, batch_sampler=[indices for _, indices in shards], num_workers=num_workers,
                        collate_fn=collate_fn)
    names = list(_validation_loss_names(is_pretraining))
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=accelerator.device)  # + count
    present = set()
    for (index, _), batch in zip(shards, loader):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        size = _batch_size(batch)
        inputs = _model_inputs(batch, keys)
        noise = seed_for_micro_batch(
            seed, _EVAL_STREAM + index, 0, size, draws_per_sample if is_pretraining else None,
            accelerator.device, noise_shape if is_pretraining else None,
        )
        if noise is not None:
            inputs["mask_noise"] = noise
        with accelerator.autocast():
            outputs = model(**inputs)
        if is_pretraining:
            for i, name in enumerate(names):
                value = getattr(outputs, name, None)
                if value is not None:
                    present.add(name)
                    sums[i] += value.detach().double() * size
            sums[-1] += size
        else:
            prediction = outputs.prediction_outputs.double()
            target = batch["future_values"].double()
            mask = batch.get("future_observed_mask")
            mask = torch.ones_like(target) if mask is None else mask.double()
            sums[0] += ((prediction - target) ** 2 * mask).sum()
            sums[-1] += mask.sum()
            present.add("loss")
    model.train(was_training)
    sums = accelerator.reduce(sums, reduction="sum") if accelerator.num_processes > 1 else sums
    count = float(sums[-1])
    if count == 0:
        return {}
    return {name: float(sums[i]) / count for i, name in enumerate(names) if name in present or name == "loss"}


EvalCallback = Callable[[PreTrainedModel, int], dict[str, float] | None]
"""`eval_callback(model, step) -> {name: number}` of [`train_model`]: extra numbers for each validation record."""


def _eval_callback_numbers(
    callback: EvalCallback | None, model: torch.nn.Module, step: int, losses: Collection[str]
) -> dict[str, float]:
    """Runs `callback` on the unwrapped model and returns its numbers for the validation record.

    The model's mode is restored afterwards (the callback may switch it to eval) so the next training step runs as it
    would have without the callback; names that would overwrite a field of the record are refused, since a silently
    replaced `loss` would change which weights are kept.
    """
    if callback is None:
        return {}
    was_training = model.training
    try:
        numbers = callback(model, step) or {}
    finally:
        model.train(was_training)
    reserved = {"step", "epoch", "split", "best", "best_val_loss", *losses}
    clashes = sorted(set(numbers) & reserved)
    if clashes:
        raise ValueError(f"eval_callback returned {clashes}, which are fields of the validation record; rename them "
                         "(e.g. with a prefix such as 'diag_').")
    return {str(k): float(v) for k, v in numbers.items()}


# ----------------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------------


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or name.endswith(".bias") else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameter.")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_model(
    model: PreTrainedModel,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    train_args: TrainArguments,
    accelerator: Accelerator | None = None,
    is_pretraining: bool = False,
    prepare_output: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    eval_callback: EvalCallback | None = None,
) -> TrainResult:
    """Trains `model` with AdamW + warm-up/decay, gradient accumulation and clipping, early stopping on the
    validation loss (`train_args.metric_for_best_model`, the total by default), best-weights restore and resumable
    accelerate checkpoints.

    Works for HiMTM and for other forecasters/pre-trainers with the same forward conventions (e.g.
    `PatchTSTForPrediction`, `PatchTSTForPretraining`): batches are dicts from `himtm_hf.data` datasets; only the
    keys the forward accepts are passed (for pre-training only `past_values`/`past_observed_mask`).

    Args:
        model: the model to train (not yet prepared).
        train_dataset, val_dataset: window datasets; `train_args.max_train_windows` / `max_eval_windows` cap them
            (evenly strided). `val_dataset=None` or empty: no validation, no early stopping.
        train_args: [`TrainArguments`]. Writes `log.jsonl` and `checkpoints/` under `train_args.output_dir`.
        accelerator: an `Accelerator` (default: [`make_accelerator`]); must have `gradient_accumulation_steps=1`
            (accumulation is `train_args.gradient_accumulation_steps`). Its references to the objects prepared here
            are released at the end.
        is_pretraining: self-supervised (validation losses = the model's `loss` and its parts, e.g.
            `reconstruction_loss`) instead of forecasting (validation `loss` = standardised MSE of
            `prediction_outputs`).
        prepare_output: check, create and hold (lock) the output folder for the run ([`claim_run_dir`]); pass False
            if the caller holds it already.
        collate_fn: DataLoader collate function (default: torch's default collate).
        eval_callback: called as `eval_callback(unwrapped_model, step)` at every validation, after the validation
            losses, on every process (it must be deterministic: only the main process logs); the flat numbers it
            returns join that validation's `"val"` record in `log.jsonl` (e.g. `himtm_hf.pretraining_diagnostics`).
            The model's train/eval mode is restored after it.

    Returns:
        [`TrainResult`]; `result.model` is unwrapped and holds the best validation weights.
    """
    accelerator = accelerator or make_accelerator(train_args)
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            "Pass an Accelerator with gradient_accumulation_steps=1; use train_args.gradient_accumulation_steps."
        )
    if not prepare_output:
        return _train(model, train_dataset, val_dataset, train_args, accelerator, is_pretraining, collate_fn,
                      eval_callback)
    resume = bool(train_args.resume_from_checkpoint)
    with claim_run_dir(train_args.output_dir, train_args.overwrite_output_dir, resume, accelerator):
        return _train(model, train_dataset, val_dataset, train_args, accelerator, is_pretraining, collate_fn,
                      eval_callback)


@dataclass
class _LossWindow:
    """The training losses summed since the last `"train"` record of `log.jsonl`, and the gradient norms of its
    optimiser steps."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    micro_batches: int = 0
    grad_norms: list[float] = field(default_factory=list)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Adds one micro-batch's losses (detached scalars on the model's device)."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, torch.zeros((), device=v.device)) + v
        self.micro_batches += 1

    def record(self, accelerator: Accelerator) -> dict[str, float]:
        """The window's losses averaged over its micro-batches and over processes, plus `grad_norm` (the mean over
        its steps) when gradients were clipped.

        Args:
            accelerator: reduces the means over processes (every process must call this).

        Returns:
            `{loss name: mean}` in sorted name order, then `grad_norm` if there is one.
        """
        names = sorted(self.sums)
        reduced = accelerator.reduce(
            torch.stack([self.sums[k] for k in names]) / max(self.micro_batches, 1), reduction="mean"
        )
        record = {k: float(v) for k, v in zip(names, reduced.tolist())}
        if self.grad_norms:
            record["grad_norm"] = float(np.mean(self.grad_norms))
        return record


@dataclass
class _Run:
    """One call of [`_train`]: what its setup prepared, and the state that changes while it runs.

    The optimiser step count lives in `state.global_step` only, so that a checkpoint always saves the step the loop
    is at.
    """

    train_args: TrainArguments
    accelerator: Accelerator
    is_pretraining: bool
    output_dir: Path
    start_time: float
    model: torch.nn.Module
    """The prepared (possibly compiled) model the training steps run through."""
    unwrapped: PreTrainedModel
    """The eager module: validation, best-weights snapshots and the returned model."""
    compiled: bool
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: EpochShuffleSampler
    train_loader: DataLoader
    val_subset: Dataset | None
    collate_fn: Callable[[list[Any]], Any] | None
    eval_callback: EvalCallback | None
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    stop_at: int
    """The step this call stops at: `total_steps`, or `stop_after_steps` if that is earlier."""
    metric: str
    keys: set[str] | None
    draws: int | None
    noise_shape: tuple[int, int] | None
    state: TrainerState
    run_logger: JsonlLogger
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    show: bool = False
    progress: Any = None
    """The tqdm bar of the steps (made by [`_train_steps`])."""
    window: _LossWindow = field(default_factory=_LossWindow)

    @property
    def epochs_done(self) -> float:
        """The `epoch` field of the log records: optimiser steps so far in epochs."""
        return round(self.state.global_step / self.steps_per_epoch, 4)


def _train(
    model: PreTrainedModel,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    train_args: TrainArguments,
    accelerator: Accelerator,
    is_pretraining: bool,
    collate_fn: Callable[[list[Any]], Any] | None,
    eval_callback: EvalCallback | None = None,
) -> TrainResult:
    """The loop of [`train_model`], in a run folder that is already prepared (and held).

    Args:
        model, train_dataset, val_dataset, train_args, accelerator, is_pretraining, collate_fn, eval_callback: as in
            [`train_model`].

    Returns:
        [`TrainResult`], with the best validation weights in the unwrapped model.
    """
    start_time = time.time()
    output_dir = Path(train_args.output_dir)
    resume = train_args.resume_from_checkpoint
    # Resolved first: a missing checkpoint fails before anything is prepared.
    checkpoint = find_checkpoint(output_dir, resume) if resume else None
    run = _set_up_run(model, train_dataset, val_dataset, train_args, accelerator, is_pretraining, collate_fn,
                      eval_callback, start_time)
    if checkpoint is None:
        run.run_logger.lines = count_log_lines(output_dir)
    else:
        _resume(run, checkpoint)
    _train_steps(run)
    return _finish(run)


# Setup ----------------------------------------------------------------------------------------------------------------


def _set_up_run(
    model: PreTrainedModel,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    train_args: TrainArguments,
    accelerator: Accelerator,
    is_pretraining: bool,
    collate_fn: Callable[[list[Any]], Any] | None,
    eval_callback: EvalCallback | None,
    start_time: float,
) -> _Run:
    """Caps the datasets, prepares model, optimiser and data loader, and makes the schedule of one run.

    Args:
        model, train_dataset, val_dataset, train_args, accelerator, is_pretraining, collate_fn, eval_callback: as in
            [`train_model`].
        start_time: `time.time()` at the start of the run (for `TrainResult.wall_time_s`).

    Returns:
        The [`_Run`] at step 0 (a resumed run loads its checkpoint into it afterwards).
    """
    seed = int(train_args.seed)
    train_subset = cap_windows(train_dataset, train_args.max_train_windows)
    val_subset = cap_windows(val_dataset, train_args.max_eval_windows) if val_dataset is not None else None
    if val_subset is not None and len(val_subset) == 0:
        val_subset = None

    sampler = EpochShuffleSampler(len(train_subset), seed)
    model, unwrapped, optimizer, train_loader = _prepare_for_training(
        model, train_subset, sampler, train_args, accelerator, collate_fn
    )
    micro_per_epoch = len(train_loader)
    if micro_per_epoch == 0:
        raise ValueError(
            f"No full training batch: {len(train_subset)} training windows < per_device_train_batch_size "
            f"({train_args.per_device_train_batch_size}) x processes ({accelerator.num_processes}). Use a smaller "
            "batch, more windows (--max_train_windows) or a shorter context/prediction length."
        )
    steps_per_epoch, total_steps, scheduler = _make_schedule(optimizer, micro_per_epoch, train_args)
    metric = train_args.metric_for_best_model
    if val_subset is not None:  # a typo fails here, not after the first epoch
        _check_metric_for_best_model(metric, _validation_loss_names(is_pretraining), unwrapped)

    draws = mask_draws_per_sample(unwrapped) if is_pretraining else None
    noise_shape = None
    if is_pretraining and draws is not None and _accepts_mask_noise(unwrapped):
        noise_shape = (int(unwrapped.config.num_input_channels), int(unwrapped.config.num_masking_units))
    stop_at = total_steps if train_args.stop_after_steps <= 0 else min(total_steps, int(train_args.stop_after_steps))
    return _Run(
        train_args=train_args, accelerator=accelerator, is_pretraining=is_pretraining,
        output_dir=Path(train_args.output_dir), start_time=start_time, model=model, unwrapped=unwrapped,
        compiled=is_compiled_module(model), optimizer=optimizer, scheduler=scheduler, sampler=sampler,
        train_loader=train_loader, val_subset=val_subset, collate_fn=collate_fn, eval_callback=eval_callback,
        micro_per_epoch=micro_per_epoch, steps_per_epoch=steps_per_epoch, total_steps=total_steps, stop_at=stop_at,
        metric=metric, keys=_forward_keys(unwrapped, is_pretraining), draws=draws, noise_shape=noise_shape,
        state=TrainerState(metric_for_best_model=metric),
        run_logger=JsonlLogger(Path(train_args.output_dir), enabled=accelerator.is_main_process),
    )


def _prepare_for_training(
    model: PreTrainedModel,
    train_subset: Dataset,
    sampler: EpochShuffleSampler,
    train_args: TrainArguments,
    accelerator: Accelerator,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> tuple[torch.nn.Module, PreTrainedModel, torch.optim.Optimizer, DataLoader]:
    """Builds the training data loader and AdamW, passes them and the model through `accelerator.prepare`, and
    compiles the model if `train_args.torch_compile`.

    Args:
        model: the model to train (not yet prepared).
        train_subset: the (capped) training windows.
        sampler: the run's [`EpochShuffleSampler`] over `train_subset`.
        train_args, accelerator, collate_fn: as in [`train_model`].

    Returns:
        `(model, unwrapped, optimizer, train_loader)`: the prepared (possibly compiled) model, its eager module, and
        the prepared optimiser and loader.
    """
    train_loader = DataLoader(
        train_subset, batch_size=train_args.per_device_train_batch_size, sampler=sampler, drop_last=True,
        num_workers=train_args.num_workers, collate_fn=collate_fn,
    )
    optimizer = torch.optim.AdamW(
        _param_groups(model, train_args.weight_decay), lr=train_args.learning_rate,
        betas=(train_args.adam_beta1, train_args.adam_beta2), eps=train_args.adam_epsilon,
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if train_args.torch_compile and not is_compiled_module(model):
        # Compiled here rather than through Accelerate's TorchDynamoPlugin: that plugin lives in the process-wide
        # AcceleratorState, so the first Accelerator of a process would decide for every later run in it.
        mode = {"mode": train_args.torch_compile_mode} if train_args.torch_compile_mode else {}
        model = torch.compile(model, backend=train_args.torch_compile_backend or "inductor", **mode)
    # The eager module (also under `accelerate launch --dynamo_backend`): validation, best-weights snapshots and the
    # returned model never go through torch.compile (its state-dict keys would carry `_orig_mod.` and validation
    # batches of another size would trigger recompiles).
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    return model, unwrapped, optimizer, train_loader


def _make_schedule(
    optimizer: torch.optim.Optimizer, micro_per_epoch: int, train_args: TrainArguments
) -> tuple[int, int, Any]:
    """The run's length and its learning-rate schedule.

    Args:
        optimizer: the prepared optimiser.
        micro_per_epoch: micro-batches per epoch on this process.
        train_args: `gradient_accumulation_steps`, `max_steps` / `num_train_epochs`, the warm-up and
            `lr_scheduler_type`.

    Returns:
        `(steps_per_epoch, total_steps, scheduler)`; the last optimiser step of an epoch may accumulate fewer
        micro-batches.
    """
    steps_per_epoch = math.ceil(micro_per_epoch / int(train_args.gradient_accumulation_steps))
    if train_args.max_steps > 0:
        total_steps = int(train_args.max_steps)
    else:
        total_steps = max(1, math.ceil(steps_per_epoch * train_args.num_train_epochs))
    warmup = train_args.warmup_steps if train_args.warmup_steps > 0 else math.ceil(train_args.warmup_ratio * total_steps)
    scheduler = get_scheduler(
        train_args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
    return steps_per_epoch, total_steps, scheduler


def _resume(run: _Run, checkpoint: Path) -> None:
    """Loads `checkpoint` into the run (weights, optimiser, RNG, scheduler, loop state) and cuts `log.jsonl` back to
    the events it had when the checkpoint was saved.

    Args:
        run: the run just set up.
        checkpoint: a complete checkpoint ([`find_checkpoint`]).
    """
    load_checkpoint(run.accelerator, checkpoint, run.scheduler, run.state)
    if run.state.metric_for_best_model != run.metric:
        # The best value saved so far is of the other metric: comparing the two would pick the wrong weights.
        raise ValueError(
            f"Checkpoint {checkpoint} chose its best weights by {run.state.metric_for_best_model!r}, but this run "
            f"asks for --metric_for_best_model {run.metric!r}. Resume with --metric_for_best_model "
            f"{run.state.metric_for_best_model}, or start a new run in another --output_dir."
        )
    run.run_logger.truncate(run.state.log_lines)
    logger.info("Resumed from %s at step %d", checkpoint, run.state.global_step)


# Steps ----------------------------------------------------------------------------------------------------------------


def _train_steps(run: _Run) -> None:
    """Runs the optimiser steps from `run.state.global_step` (0, or the resumed checkpoint's) to `run.stop_at`, or
    until early stopping, epoch by epoch.

    Args:
        run: the set-up (possibly resumed) run; its state, log and progress bar are updated in place.
    """
    state = run.state
    run.trainable = [p for p in run.model.parameters() if p.requires_grad]
    epoch = state.global_step // run.steps_per_epoch
    # A resumed run continues inside its epoch: the micro-batches of the steps already taken are skipped.
    start_micro = (state.global_step % run.steps_per_epoch) * int(run.train_args.gradient_accumulation_steps)
    run.show = run.accelerator.is_local_main_process and not run.train_args.disable_tqdm
    run.progress = tqdm(total=run.stop_at, initial=min(state.global_step, run.stop_at), disable=not run.show,
                        dynamic_ncols=True, desc="pretrain" if run.is_pretraining else "train")
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    try:
        while state.global_step < run.stop_at and not state.should_stop:
            if not _train_epoch(run, epoch, start_micro):
                break  # stopped inside the epoch
            epoch += 1
            start_micro = 0
    finally:
        run.progress.close()


def _train_epoch(run: _Run, epoch: int, start_micro: int) -> bool:
    """One pass over the training batches of `epoch`, from micro-batch `start_micro` on: forward/backward per
    micro-batch, and after each group of `gradient_accumulation_steps` the optimiser step, then logging, validation
    and checkpointing when they are due.

    Args:
        run: the run.
        epoch: the epoch (seeds the sampler's order).
        start_micro: micro-batches of this epoch already trained (a resumed run), 0 otherwise.

    Returns:
        True if the epoch ran to its end, False if the run stopped inside it (`stop_at` or early stopping).
    """
    args = run.train_args
    accumulation = int(args.gradient_accumulation_steps)
    run.sampler.set_epoch(epoch)
    if hasattr(run.train_loader, "set_epoch"):
        run.train_loader.set_epoch(epoch)
    loader = skip_first_batches(run.train_loader, start_micro) if start_micro else run.train_loader
    micro_index = start_micro
    for batch in loader:
        micro_in_step = micro_index % accumulation
        group_start = micro_index - micro_in_step
        # The last step of an epoch may get fewer micro-batches; its loss is averaged over those it has.
        group_size = min(accumulation, run.micro_per_epoch - group_start)
        last_micro = micro_in_step == group_size - 1
        _forward_backward(run, batch, micro_in_step, group_size, last_micro)
        micro_index += 1
        if not last_micro:
            continue

        _optimizer_step(run)
        step = run.state.global_step
        will_save = (args.save_steps > 0 and (step % args.save_steps == 0 or step == run.stop_at)) or (
            step == run.stop_at and run.stop_at < run.total_steps  # an early end (stop_after_steps) must be resumable
        )
        if step % args.logging_steps == 0 or step == run.stop_at or will_save:
            # Also at checkpoints, so that no partially averaged window is lost by a resume.
            _log_train_window(run)
        end_of_epoch = micro_index == run.micro_per_epoch
        if args.eval_every_steps > 0:
            if step % args.eval_every_steps == 0:
                _evaluate(run)
        elif end_of_epoch:
            _evaluate(run)
        if will_save:
            _save_checkpoint(run)
        if step >= run.stop_at or run.state.should_stop:
            return False
    return True


def _forward_backward(
    run: _Run, batch: dict[str, torch.Tensor], micro_in_step: int, group_size: int, last_micro: bool
) -> None:
    """Seeds, runs forward and backward for one micro-batch, and adds its losses to the run's window.

    Args:
        run: the run.
        batch: the micro-batch (on the device).
        micro_in_step: its index among the micro-batches of the current optimiser step.
        group_size: micro-batches in the current optimiser step (the loss is divided by it).
        last_micro: the step's last micro-batch: gradients are synchronised over processes only then.
    """
    accelerator = run.accelerator
    size = _batch_size(batch)
    inputs = _model_inputs(batch, run.keys)
    noise = seed_for_micro_batch(
        int(run.train_args.seed), run.state.global_step,
        micro_in_step * accelerator.num_processes + accelerator.process_index, size, run.draws, accelerator.device,
        run.noise_shape,
    )
    if noise is not None:
        inputs["mask_noise"] = noise
    if run.compiled:
        # Marks a new iteration for CUDA graphs (mode reduce-overhead); a no-op counter otherwise.
        torch.compiler.cudagraph_mark_step_begin()
    sync = contextlib.nullcontext() if last_micro else accelerator.no_sync(run.model)
    with sync:
        outputs = run.model(**inputs)
        loss = outputs.loss
        if loss is None:
            raise ValueError("The model returned no loss; check that the batch has the targets it needs.")
        accelerator.backward(loss / group_size)
    values = {"loss": loss.detach().float()}
    for name in ("reconstruction_loss", "distillation_loss"):
        extra = getattr(outputs, name, None)
        if extra is not None:
            values[name] = extra.detach().float()
    run.window.add(values)


def _optimizer_step(run: _Run) -> None:
    """Clips the accumulated gradients (keeping their norm for the log), steps optimiser and scheduler, and counts
    the step."""
    max_grad_norm = run.train_args.max_grad_norm
    if max_grad_norm and max_grad_norm > 0:
        norm = run.accelerator.clip_grad_norm_(run.trainable, max_grad_norm)
        if norm is not None:
            run.window.grad_norms.append(float(norm))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.global_step += 1
    run.progress.update(1)


def _log_train_window(run: _Run) -> None:
    """Writes the `"train"` record of the losses since the last one (averaged over processes) and starts a new
    window."""
    record = run.window.record(run.accelerator)
    run.run_logger.log(step=run.state.global_step, epoch=run.epochs_done, split="train",
                       lr=float(run.scheduler.get_last_lr()[0]), **record)
    if run.show:
        run.progress.set_postfix(loss=f"{record['loss']:.4f}")
    run.window = _LossWindow()


# Evaluation -----------------------------------------------------------------------------------------------------------


def _evaluate(run: _Run) -> None:
    """Validates the current weights (if the run has validation windows): updates the best weights and the early
    stopping count, runs the eval callback and writes the `"val"` record.

    Args:
        run: the run; `run.state` is updated in place.
    """
    if run.val_subset is None:
        return
    args, step = run.train_args, run.state.global_step
    losses = _validation_losses(run.unwrapped, run.val_subset, args.per_device_eval_batch_size, run.accelerator,
                                run.is_pretraining, run.keys, int(args.seed), run.draws, run.noise_shape,
                                run.collate_fn, args.num_workers)
    if not losses:
        return
    _check_metric_for_best_model(run.metric, losses, run.unwrapped)  # a part this model's output lacks
    val_loss = losses[run.metric]
    improved = _track_best(run.state, val_loss, run.unwrapped, args.early_stopping_patience)
    extra = _eval_callback_numbers(run.eval_callback, run.unwrapped, step, losses)
    run.run_logger.log(step=step, epoch=run.epochs_done, split="val", **{k: float(v) for k, v in losses.items()},
                       best=improved, best_val_loss=run.state.best_val_loss, **extra)
    if run.show:
        run.progress.set_postfix({"val_" + run.metric: f"{val_loss:.4f}"})


def _track_best(state: TrainerState, val_loss: float, model: torch.nn.Module, patience: int) -> bool:
    """Records a validation at `state.global_step`: keeps a CPU copy of the weights if `val_loss` is the best so far,
    else counts it towards early stopping.

    Args:
        state: the loop state, updated in place (`should_stop` once `patience` validations in a row did not improve).
        val_loss: the value of the run's `metric_for_best_model` (lower is better).
        model: the unwrapped model whose weights are kept.
        patience: `TrainArguments.early_stopping_patience` (<= 0: never stop early).

    Returns:
        Whether `val_loss` improved on the best so far.
    """
    step = state.global_step
    improved = state.best_val_loss is None or val_loss < state.best_val_loss
    if improved:
        state.best_val_loss, state.best_step = val_loss, step
        state.best_state = _cpu_state(model)
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    state.last_eval_step = step
    if patience > 0 and state.evals_without_improvement >= patience:
        state.should_stop = True
    return improved


# Checkpoints and the end of the run -----------------------------------------------------------------------------------


def _save_checkpoint(run: _Run) -> None:
    """Saves `checkpoints/step-N` of the current step (with the log position, so that a resume cuts `log.jsonl` back
    to it) and removes the checkpoints beyond `save_total_limit`."""
    run.state.log_lines = run.run_logger.lines
    root = run.output_dir / CHECKPOINTS_DIR
    save_checkpoint_atomically(run.accelerator, root, run.state.global_step, run.scheduler, run.state)
    prune_checkpoints(root, run.train_args.save_total_limit, run.accelerator)


def _finish(run: _Run) -> TrainResult:
    """Ends the run: validates the last weights if the last step was not validated, restores the best weights (with
    a `"best"` record) and releases what the accelerator prepared.

    Args:
        run: the run after its last step.

    Returns:
        The [`TrainResult`] of the run.
    """
    state, step = run.state, run.state.global_step
    if run.val_subset is not None and state.last_eval_step != step and step > 0:
        _evaluate(run)
    if state.best_state is not None:
        run.unwrapped.load_state_dict(state.best_state)
        run.run_logger.log(step=step, epoch=run.epochs_done, split="best", best_step=state.best_step,
                           best_val_loss=state.best_val_loss, metric_for_best_model=run.metric)
    run.accelerator.wait_for_everyone()
    result = TrainResult(
        model=run.unwrapped,
        global_step=step,
        epochs=run.epochs_done,
        best_val_loss=state.best_val_loss,
        best_step=state.best_step,
        stopped_early=bool(state.should_stop),
        wall_time_s=time.time() - run.start_time,
        history=run.run_logger.history,
        accelerator=run.accelerator,
    )
    # Release what was prepared here so that the accelerator can be reused.
    run.accelerator.free_memory()
    run.unwrapped.eval()
    return result


def set_encoder_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freezes (or unfreezes) a forecaster's encoder, leaving its head trainable: `HiMTMForPrediction.freeze_encoder`,
    or the `.model` backbone of transformers' forecasters (`PatchTSTForPrediction.model`)."""
    if hasattr(model, "freeze_encoder") and callable(model.freeze_encoder):
        model.freeze_encoder(frozen)
    elif isinstance(getattr(model, "model", None), torch.nn.Module):
        model.model.requires_grad_(not frozen)
    else:
        raise ValueError(
            f"{type(model).__name__} has neither a `freeze_encoder` method nor a `.model` encoder, so its head cannot "
            "be trained alone; fine-tune it without --head_only_epochs."
        )


def train_head_then_model(
    model: PreTrainedModel,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    train_args: TrainArguments,
    head_only_epochs: float = 0.0,
    accelerator: Accelerator | None = None,
    prepare_output: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    head_only_steps: int = 0,
) -> TrainResult:
    """Two-phase fine-tuning of a pre-trained forecaster (linear probing, then full fine-tuning: "LP-FT"), the
    protocol of PatchTST's own self-supervised fine-tuning (`Learner.fine_tune(n_epochs, base_lr, freeze_epochs)`).

    Phase 1 trains the head alone, with the encoder frozen, for `head_only_epochs` (or, with `max_steps`,
    `head_only_steps`) at `train_args.learning_rate` (its run files go to `output_dir/head_only/`). Phase 2 starts
    from phase 1's best-validated weights, unfreezes the encoder and trains everything for the rest of the budget at
    half that learning rate. Each phase has its own warm-up/decay schedule and early stopping; the returned weights
    are those with the lowest validation loss over both phases. Why: a fresh head trained together with a
    pre-trained encoder sends its early, large gradients into the encoder and distorts the features the pre-training
    learned; a head fitted first leaves the encoder less to undo (Kumar et al., 2022, "Fine-tuning can distort
    pretrained features").

    Args:
        model, train_dataset, val_dataset, accelerator, collate_fn: as in [`train_model`].
        train_args: [`TrainArguments`]; `num_train_epochs` (or `max_steps`) is the total of both phases (resuming is
            not supported).
        head_only_epochs: epochs of phase 1, `0 < head_only_epochs < num_train_epochs`, when `max_steps` is off.
        head_only_steps: optimiser steps of phase 1, `0 < head_only_steps < max_steps`, when `max_steps` is set.
        prepare_output: check, create and hold `train_args.output_dir` here.

    Returns:
        [`TrainResult`] over both phases: `global_step`, `epochs` and `wall_time_s` add up, `best_step` counts from the
        start of phase 1, `history` holds phase 1's log lines (`"phase": "head_only"`) then phase 2's.
    """
    check_head_only(train_args, head_only_epochs, head_only_steps)
    if getattr(getattr(model, "config", None), "freeze_encoder", False):
        raise ValueError("The model's encoder is frozen (linear probing); a head-only phase (LP-FT) needs a model "
                         "whose encoder is fine-tuned after the head. Use one or the other.")
    accelerator = accelerator or make_accelerator(train_args)
    phases = _phase_budgets(train_args, head_only_epochs, head_only_steps)
    if not prepare_output:
        return _train_head_then_model(model, train_dataset, val_dataset, train_args, phases, accelerator, collate_fn)
    with claim_run_dir(train_args.output_dir, train_args.overwrite_output_dir, False, accelerator):
        return _train_head_then_model(model, train_dataset, val_dataset, train_args, phases, accelerator, collate_fn)


def _phase_budgets(train_args: TrainArguments, head_only_epochs: float,
                   head_only_steps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `TrainArguments` fields that set the length of phase 1 and of phase 2 of LP-FT."""
    # Each phase is a plain run of `train_model` (a FinetuneArguments' own head-only fields are this split, done here).
    plain = {"head_only_epochs": 0.0} if hasattr(train_args, "head_only_epochs") else {}
    if hasattr(train_args, "head_only_steps"):
        plain["head_only_steps"] = 0
    if head_only_steps > 0:
        return ({"max_steps": head_only_steps, **plain},
                {"max_steps": train_args.max_steps - head_only_steps, **plain})
    return ({"num_train_epochs": head_only_epochs, **plain},
            {"num_train_epochs": train_args.num_train_epochs - head_only_epochs, **plain})


def _train_head_then_model(
    model: PreTrainedModel,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    train_args: TrainArguments,
    phases: tuple[dict[str, Any], dict[str, Any]],
    accelerator: Accelerator,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> TrainResult:
    """The two phases of [`train_head_then_model`], in a run folder that is already prepared (and held)."""
    output_dir = Path(train_args.output_dir)
    head_phase, full_phase = phases
    set_encoder_frozen(model, True)
    head_args = replace(train_args, output_dir=str(output_dir / HEAD_ONLY_DIR), overwrite_output_dir=True,
                        **head_phase)
    head = train_model(model, train_dataset, val_dataset, head_args, accelerator, prepare_output=True,
                       collate_fn=collate_fn)
    head_best = _cpu_state(head.model) if head.best_val_loss is not None else None

    set_encoder_frozen(head.model, False)
    all_args = replace(train_args, learning_rate=train_args.learning_rate / 2, **full_phase)
    full = train_model(head.model, train_dataset, val_dataset, all_args, head.accelerator, prepare_output=False,
                       collate_fn=collate_fn)

    best_val_loss, best_step = full.best_val_loss, full.best_step
    if best_step is not None:
        best_step += head.global_step
    if head_best is not None and (full.best_val_loss is None or head.best_val_loss <= full.best_val_loss):
        full.model.load_state_dict(head_best)  # the head-only weights validated better than any later ones
        best_val_loss, best_step = head.best_val_loss, head.best_step
    return TrainResult(
        model=full.model,
        global_step=head.global_step + full.global_step,
        epochs=round(head.epochs + full.epochs, 4),
        best_val_loss=best_val_loss,
        best_step=best_step,
        stopped_early=full.stopped_early,
        wall_time_s=head.wall_time_s + full.wall_time_s,
        history=[{**h, "phase": HEAD_ONLY_DIR} for h in head.history] + full.history,
        accelerator=full.accelerator,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def iterate_forecasts(
    model: PreTrainedModel,
    dataset: Dataset,
    batch_size: int = 128,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
    max_windows: int | None = None,
    desc: str | None = None,
    disable_tqdm: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields `{"predictions", "targets", "observed_mask"}` float32 CPU tensors `(batch, H, C)` batch by batch
    (plus the windows' `series_mean` / `series_std` `(batch, 1, C)` for panel windows, see `himtm_hf.panel`),
    gathered over processes (padding duplicates dropped), in dataset order, for every window of `dataset` (or an
    evenly strided `max_windows` subset). Predictions are `.prediction_outputs` (the dataset's units: standardised
    for `himtm_hf.data` splits)."""
    subset = cap_windows(dataset, max_windows)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
        device = accelerator.device
        model.to(device)
        autocast = accelerator.autocast
        show = accelerator.is_local_main_process and not disable_tqdm
    else:
        device = next(model.parameters()).device
        autocast = contextlib.nullcontext
        show = not disable_tqdm
    keys = _forward_keys(model, is_pretraining=True)  # inputs only: no targets, no loss
    try:
        for batch in tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                outputs = model(**_model_inputs(batch, keys))
            target = batch["future_values"].float()
            mask = batch.get("future_observed_mask")
            item = {
                "predictions": outputs.prediction_outputs.float(),
                "targets": target,
                "observed_mask": torch.ones_like(target) if mask is None else mask.float(),
            }
            for key in SERIES_STATISTICS:  # panel windows: each window's own standardisation (himtm_hf.panel)
                if key in batch:
                    item[key] = batch[key]
            if accelerator is not None:
                item = accelerator.gather_for_metrics(item)
            yield {k: v.cpu() for k, v in item.items()}
    finally:
        model.train(was_training)


def predict(
    model: PreTrainedModel,
    dataset: Dataset,
    batch_size: int = 128,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
    max_windows: int | None = None,
    disable_tqdm: bool = False,
) -> dict[str, np.ndarray]:
    """Forecasts every window of `dataset` (or an evenly strided `max_windows` subset).

    Args:
        model: a forecaster returning `.prediction_outputs` `(batch, H, C)` (HiMTM, PatchTST, ...).
        dataset: a window dataset (items with `past_values`, `future_values`, optional masks).
        accelerator: shard the windows over processes and gather (every process gets all results); `None`: run on
            the model's device in this process.

    Returns:
        `{"predictions", "targets", "observed_mask"}` float32 arrays of shape `(windows, H, C)`, in the dataset's
        (standardised) units and order.
    """
    parts: dict[str, list[torch.Tensor]] = {"predictions": [], "targets": [], "observed_mask": []}
    for item in iterate_forecasts(model, dataset, batch_size, accelerator, num_workers, max_windows,
                                  desc="predict", disable_tqdm=disable_tqdm):
        for k in parts:
            parts[k].append(item[k])
    return {k: torch.cat(v).numpy() if v else np.zeros((0,), dtype=np.float32) for k, v in parts.items()}
