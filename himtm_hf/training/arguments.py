"""Argument dataclasses of the training scripts, parsed with `transformers.HfArgumentParser`.

- [`ModelArguments`] is *generated* from the signature of `HiMTMConfig.__init__`, so it exposes every config field
  (a field added to the config shows up here and on the command line without edits). Every field defaults to
  `None` = "not given": the config default applies (from scratch), or the pre-trained checkpoint's value
  (fine-tuning). List-valued or nullable fields (`d_model`, `num_layers`, `num_attention_heads`, `ffn_dim`,
  `decoder_d_model`, `hierarchy_loss_weights`, `scaling`) take `--d_model 64`, `--d_model 32,64,128` or
  `--d_model "[32, 64, 128]"` (parsed as YAML); `none`/`null` sets the value `None` (e.g. `--scaling none`).
  `context_length` and `prediction_length` are `init=False` fields here: they are set by the [`DataArguments`] flags
  of the same name (so any `HfArgumentParser` over these dataclasses has no conflicting options).
  `num_input_channels` defaults to the number of data columns.
- [`DataArguments`]: what `himtm_hf.data.load_splits` needs.
- [`TrainArguments`] (our own, not `transformers.TrainingArguments`) and its script variants
  [`PretrainArguments`], [`FinetuneArguments`]; [`EvaluateArguments`] and [`MainJobArguments`].

[`parse_args`] parses the command line, or a single `.json`/`.yaml` file given as the only argument.
"""

import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..configuration_himtm import HiMTMConfig

__all__ = [
    "COMPILE_BACKENDS",
    "COMPILE_MODES",
    "DataArguments",
    "EvaluateArguments",
    "FinetuneArguments",
    "MainJobArguments",
    "ModelArguments",
    "PretrainArguments",
    "TrainArguments",
    "parse_args",
    "parse_list_value",
]

SHARED_WITH_DATA = ("context_length", "prediction_length")
"""ModelArguments fields that are set by the same flag as the DataArguments field of the same name."""

_NONE_STRINGS = ("none", "null", "~", "")
# Config fields for which the word "none" is one of the values (a string), not "not given".
_NONE_IS_A_VALUE = ("distillation_target_norm",)

COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")
"""`--torch_compile_backend` values: torch's built-in backends (others need extra packages)."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""`--torch_compile_mode` values (`torch.compile(mode=...)`)."""


# ----------------------------------------------------------------------------------------------------------------------
# Value parsing helpers
# ----------------------------------------------------------------------------------------------------------------------


def parse_list_value(value: Any) -> Any:
    """Parses a command-line value that may be a scalar, a list or `None`.

    `"64"` -> 64, `"32,64,128"` / `"[32, 64, 128]"` -> [32, 64, 128], `"none"`/`"null"` -> None,
    `"std"` -> "std". Non-string values (from JSON/YAML files) are returned unchanged.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in _NONE_STRINGS:
        return None
    if "," in text and not text.startswith(("[", "{", "'", '"')):
        text = f"[{text}]"
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"Cannot parse {value!r}: give a number, a comma-separated list or a JSON/YAML list.") from error


def _as_str_list(value: Any, name: str) -> list[str] | None:
    """`None`, a list, or a comma-separated string -> list of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NONE_STRINGS:
            return None
        if text.startswith("["):
            parsed = yaml.safe_load(text)
            return [str(v) for v in parsed]
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    raise ValueError(f"`{name}` must be a comma-separated string or a list, got {value!r}.")


def _config_arg_docs() -> dict[str, str]:
    """One-line help per HiMTMConfig argument, taken from the config's docstring."""
    docs: dict[str, str] = {}
    current = None
    for line in (HiMTMConfig.__doc__ or "").splitlines():
        match = re.match(r"^\s{8}(\w+) \(`[^)]*`(?:[^)]*)\):\s*(.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.startswith(" " * 12) and line.strip():
            docs[current] += " " + line.strip()
        else:
            current = None if not line.strip() else current
    return docs


# ----------------------------------------------------------------------------------------------------------------------
# ModelArguments, generated from HiMTMConfig
# ----------------------------------------------------------------------------------------------------------------------

_PLAIN_TYPES = (int, float, bool, str)


def _model_argument_fields() -> tuple[list[tuple[str, Any, Any]], dict[str, str]]:
    hints = typing.get_type_hints(HiMTMConfig.__init__)
    signature = inspect.signature(HiMTMConfig.__init__)
    docs = _config_arg_docs()
    specs: list[tuple[str, Any, Any]] = []
    kinds: dict[str, str] = {}
    for name, parameter in signature.parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        hint = hints.get(name, str)
        if hint in _PLAIN_TYPES:
            cli_type, kind = hint, "plain"
        else:  # unions with lists or None: parsed from a string (YAML), or taken as-is from a JSON/YAML file
            cli_type, kind = str, "yaml"
        kinds[name] = kind
        help_text = docs.get(name, "HiMTMConfig field.")
        if name in SHARED_WITH_DATA:
            help_text = f"{help_text} Set through DataArguments.{name} (one flag for the windows and the model)."
        elif name == "num_input_channels":
            help_text = f"{help_text} Not given: the number of data columns."
        default_text = "None" if parameter.default is None else repr(parameter.default)
        note = " Give 'none' for None." if type(None) in typing.get_args(hint) else ""
        metadata = {"help": f"{help_text} [HiMTMConfig default: {default_text}; not given = keep the default or "
                            f"the pre-trained value].{note}"}
        # The shared fields are not __init__/CLI arguments here (the DataArguments flag sets them), so that any
        # HfArgumentParser over (ModelArguments, DataArguments, ...) has no conflicting option strings.
        init = name not in SHARED_WITH_DATA
        specs.append((name, cli_type | None, field(default=None, init=init, metadata=metadata)))
    return specs, kinds


_MODEL_FIELDS, _MODEL_FIELD_KINDS = _model_argument_fields()


def _model_args_to_config_kwargs(self) -> dict[str, Any]:
    """The fields that were given (not None), parsed to config values (`"none"` -> None, lists parsed)."""
    kwargs: dict[str, Any] = {}
    for f in fields(self):
        value = getattr(self, f.name, None)
        if value is None:
            continue
        if f.name in _NONE_IS_A_VALUE and isinstance(value, str) and value.strip().lower() == "none":
            kwargs[f.name] = "none"
            continue
        if _MODEL_FIELD_KINDS.get(f.name) == "yaml":
            value = parse_list_value(value)
        elif isinstance(value, str) and f.type is not str and _MODEL_FIELD_KINDS.get(f.name) == "plain":
            value = parse_list_value(value)  # a number given as a string in a JSON/YAML file
        kwargs[f.name] = value
    return kwargs


def _model_args_post_init(self) -> None:
    for name, kind in _MODEL_FIELD_KINDS.items():
        if kind == "plain":
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in _NONE_STRINGS and name not in _NONE_IS_A_VALUE:
                setattr(self, name, None)


ModelArguments = dataclasses.make_dataclass(
    "ModelArguments",
    _MODEL_FIELDS,
    namespace={
        "to_config_kwargs": _model_args_to_config_kwargs,
        "__post_init__": _model_args_post_init,
        "__doc__": (
            "Every `HiMTMConfig.__init__` argument as an optional field (generated from the signature). `None` = not "
            "given. `to_config_kwargs()` returns the given ones, parsed. `context_length`/`prediction_length` are "
            "`init=False` fields filled from `DataArguments` (the one `--context_length`/`--prediction_length` flag); "
            "`num_input_channels` defaults to the data's column count."
        ),
        "__module__": __name__,
    },
)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    """Which series to load and how to window and split it (see `himtm_hf.data.load_splits`)."""

    dataset: str = field(
        default="ETTh1",
        metadata={"help": "Benchmark name (ETTh1, ETTh2, ETTm1, ETTm2, weather, exchange_rate, national_illness), "
                          "a .csv/.csv.gz/.parquet path or a Hub dataset id. Pre-training only: several, "
                          "comma-separated (e.g. ETTh1,ETTh2,ETTm1,ETTm2,weather), mixed channel-independently (every "
                          "channel a univariate series, each dataset standardised by its own train split; the model "
                          "gets num_input_channels=1)."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder with the benchmark files (default: $HIMTM_DATA_DIR or ../shared/data)."}
    )
    context_length: int = field(default=512, metadata={"help": "Look-back window L (also the model's context_length)."})
    prediction_length: int = field(default=96, metadata={"help": "Horizon H (also the model's prediction_length)."})
    timestamp_column: str | None = field(
        default=None, metadata={"help": "Timestamp column (default: 'date' if present; 'false' = none)."}
    )
    target_columns: str | None = field(
        default=None, metadata={"help": "Comma-separated columns to model (default: every numeric column)."}
    )
    split_fractions: str | None = field(
        default=None, metadata={"help": "train,val,test fractions, e.g. 0.7,0.1,0.2 (default: the benchmark protocol)."}
    )
    split_dates: str | None = field(
        default=None, metadata={"help": "train_end,val_end dates (instead of fractions)."}
    )
    sort_timestamps: bool = field(
        default=False,
        metadata={"help": "Sort the rows by timestamp instead of refusing rows out of order (duplicated timestamps "
                          "are refused either way)."},
    )
    train_fraction: float = field(
        default=1.0,
        metadata={"help": "Train on only the last fraction (0 < f <= 1) of the train windows, those nearest the val "
                          "split (a short, recent history); val, test and the scaler (full train split) are unchanged. "
                          "See himtm_hf.data.few_shot_split."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "The configuration (name) of a Hub dataset or local dataset folder that has several."},
    )
    id_column: str | None = field(
        default=None,
        metadata={"help": "Datasets with one row per series (a `target` sequence column): the column naming each "
                          "series (default: item_id or id; else the row number)."},
    )
    freq: str | None = field(
        default=None,
        metadata={"help": "Datasets with one row per series: the pandas frequency of their `start` column (e.g. h, "
                          "15min, D) when the dataset has no `freq` column. Only needed for --split_dates."},
    )
    short_series: str = field(
        default="skip",
        metadata={"help": "Datasets of many series: 'skip' leaves out a series too short for one train window (a "
                          "warning counts them), 'error' refuses it.", "choices": ["skip", "error"]},
    )
    leave_out: str | None = field(
        default=None,
        metadata={"help": "Pre-training on several datasets: leave these out of --dataset (comma-separated names, "
                          "e.g. ETTh1 for a leave-one-out checkpoint); a name not in the list is an error."},
    )
    max_windows_per_dataset: int | None = field(
        default=None,
        metadata={"help": "Pre-training on several datasets: each dataset contributes at most this many univariate "
                          "windows (one channel of one look-back window) per split, an evenly strided subset, so "
                          "that large sets (weather, ETTm) do not dominate. Not given: every window of every dataset "
                          "(concatenated)."},
    )

    @property
    def is_corpus(self) -> bool:
        """Whether `dataset` names several datasets (multi-domain pre-training)."""
        from ..data import split_dataset_list

        return len(split_dataset_list(self.dataset)) > 1

    def dataset_names(self) -> list[str]:
        """The dataset entries that are read: those of `dataset` without the `leave_out` ones."""
        from ..data import select_datasets, split_dataset_list

        return select_datasets(self.dataset, self.leave_out) if self.is_corpus else split_dataset_list(self.dataset)

    def _check_one_dataset(self) -> None:
        """Raises unless the arguments name one dataset (fine-tuning, evaluation, single-dataset pre-training)."""
        from ..data import split_dataset_list

        entries = split_dataset_list(self.dataset)
        if len(entries) > 1:
            raise ValueError(
                f"--dataset {self.dataset!r} names {len(entries)} datasets; only pre-training (scripts/pretrain.py) "
                f"mixes several. Fine-tuning and evaluation take one, e.g. --dataset {entries[0]}."
            )
        hints = {"leave_out": "drop it", "max_windows_per_dataset": "cap the windows with --max_train_windows"}
        for name, hint in hints.items():
            if getattr(self, name) is not None:
                raise ValueError(
                    f"--{name} applies to pre-training on several datasets (--dataset A,B,...), but --dataset "
                    f"{self.dataset!r} names one; {hint}."
                )

    def _train_fraction(self) -> float:
        fraction = self.train_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"--train_fraction must be a number in (0, 1] (1: every train window), got {fraction!r}.")
        return float(fraction)

    def load_pretraining(self):
        """The pre-training data: look-back-only windows of `context_length` rows (no future is read).

        One dataset: its `himtm_hf.data.SplitData` (`prediction_length=0`, multivariate windows, its `scaler`).
        Several: a `himtm_hf.data.PretrainingCorpus` (univariate windows, one scaler per dataset, `leave_out` and
        `max_windows_per_dataset` applied). Both have `.train`, `.val` and `.num_channels`.
        """
        from ..data import load_pretraining_corpus, lookback_splits

        fraction = self._train_fraction()
        if not self.is_corpus:
            self._check_one_dataset()
            return lookback_splits(self.load_kwargs(), fraction)
        for name in ("target_columns", "split_dates"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"--{name} names columns or dates of one dataset, but --dataset {self.dataset!r} names several; "
                    f"leave it out (every numeric column of every dataset is used, split by its own protocol)."
                )
        if self.dataset_config is not None:
            raise ValueError(
                f"--dataset_config names a configuration of one dataset, but --dataset {self.dataset!r} names several; "
                f"pre-train on one configuration at a time, or save each configuration as its own dataset folder."
            )
        kwargs = self._load_kwargs_unchecked()
        return load_pretraining_corpus(
            self.dataset, data_dir=self.data_dir, context_length=int(self.context_length), leave_out=self.leave_out,
            max_windows_per_dataset=self.max_windows_per_dataset, timestamp_column=kwargs["timestamp_column"],
            split_fractions=kwargs["split_fractions"], sort_timestamps=kwargs["sort_timestamps"],
            train_fraction=fraction, id_column=self.id_column, freq=self.freq, short_series=kwargs["short_series"],
        )

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `himtm_hf.data.load_splits` (one dataset: several are an error here)."""
        self._check_one_dataset()
        return self._load_kwargs_unchecked()

    def _load_kwargs_unchecked(self) -> dict[str, Any]:
        timestamp: Any = self.timestamp_column
        if isinstance(timestamp, str) and timestamp.strip().lower() in ("false", "no", "none"):
            timestamp = False
        fractions = parse_list_value(self.split_fractions) if isinstance(self.split_fractions, str) else self.split_fractions
        if fractions is not None and not isinstance(fractions, (list, tuple)):
            raise ValueError(f"`split_fractions` must be three numbers, e.g. 0.7,0.1,0.2; got {self.split_fractions!r}.")
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "context_length": int(self.context_length),
            "prediction_length": int(self.prediction_length),
            "timestamp_column": timestamp,
            "target_columns": _as_str_list(self.target_columns, "target_columns"),
            "split_fractions": None if fractions is None else [float(f) for f in fractions],
            "split_dates": _as_str_list(self.split_dates, "split_dates"),
            "sort_timestamps": bool(self.sort_timestamps),
            "dataset_config": self.dataset_config,
            "id_column": self.id_column,
            "freq": self.freq,
            "short_series": self._short_series(),
        }

    def _short_series(self) -> str:
        if self.short_series not in ("skip", "error"):
            raise ValueError(f"--short_series must be 'skip' or 'error', got {self.short_series!r}.")
        return self.short_series

    def load(self):
        """Loads the splits (`himtm_hf.data.SplitData`), the train split cut to its last `train_fraction`."""
        from ..data import few_shot_split, load_splits

        fraction = self.train_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"--train_fraction must be a number in (0, 1] (1: every train window), got {fraction!r}.")
        return few_shot_split(load_splits(**self.load_kwargs()), float(fraction))


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainArguments:
    """Optimisation, evaluation, checkpointing and run-folder options shared by pre-training and fine-tuning."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Run folder (model, logs, metrics, checkpoints)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace an earlier run in output_dir: removes the files its .himtm-run.json marker lists, "
                          "nothing else (a non-empty folder without that marker is never written into)."},
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training windows per process and micro-step."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation windows per process and batch."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not applied to biases / norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the optimiser steps spent in linear warm-up."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps; > 0 overrides warmup_ratio."})
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={"help": "transformers.get_scheduler name: cosine, linear, constant_with_warmup, constant, ..."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (<= 0: no clipping)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs (used when max_steps <= 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimiser steps in total (-1: use num_train_epochs)."})
    stop_after_steps: int = field(
        default=-1,
        metadata={"help": "End this run after this many optimiser steps (with a checkpoint) without changing the LR "
                          "schedule; resume later with --resume_from_checkpoint latest. -1: off."},
    )
    eval_every_steps: int = field(default=0, metadata={"help": "Validate every N optimiser steps (0: at every epoch end)."})
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Stop after this many validations without improvement (0: off)."}
    )
    # Named as in `transformers.TrainingArguments` (lower is better here: every value is a loss).
    metric_for_best_model: str = field(
        default="loss",
        metadata={"help": "Validation loss that picks the best weights and drives early stopping: 'loss' (the "
                          "total) or a part the model reports, e.g. 'reconstruction_loss' of HiMTMForPretraining "
                          "(the one pre-training loss whose target does not move with the weights). Lower is "
                          "better."},
    )
    save_steps: int = field(
        default=0, metadata={"help": "Save the accelerate state every N steps to output_dir/checkpoints/step-N (0: off)."}
    )
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Checkpoint folder to resume from, or 'latest' (the newest complete one in "
                          "output_dir/checkpoints). Weights and loop state are read from safetensors/JSON and the "
                          "optimizer/RNG files with torch.load(weights_only=True); still, resume only from checkpoints "
                          "you wrote or trust."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the weights, data order, masks and dropout."})
    mixed_precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on a bf16-capable GPU, else no), no, bf16 or fp16."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is available."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N optimiser steps."})
    max_train_windows: int | None = field(
        default=None, metadata={"help": "Use at most N training windows (an evenly strided subset)."}
    )
    max_eval_windows: int | None = field(
        default=None, metadata={"help": "Use at most N validation windows (an evenly strided subset)."}
    )
    ddp_find_unused_parameters: bool = field(
        default=False, metadata={"help": "DistributedDataParallel find_unused_parameters."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})
    # Named as in `transformers.TrainingArguments`.
    torch_compile: bool = field(
        default=False,
        metadata={"help": "Train through torch.compile (validation and the saved model stay eager). Implied by "
                          "--torch_compile_backend or --torch_compile_mode."},
    )
    torch_compile_backend: str | None = field(
        default=None, metadata={"help": f"torch.compile backend: {', '.join(COMPILE_BACKENDS)} (default inductor)."}
    )
    torch_compile_mode: str | None = field(
        default=None,
        metadata={"help": f"torch.compile mode: {', '.join(COMPILE_MODES)} (reduce-overhead = CUDA graphs)."},
    )

    def __post_init__(self) -> None:
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True
        if self.torch_compile_backend is not None and self.torch_compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"--torch_compile_backend must be one of {', '.join(COMPILE_BACKENDS)}; "
                             f"got {self.torch_compile_backend!r}.")
        if self.torch_compile_mode is not None and self.torch_compile_mode not in COMPILE_MODES:
            raise ValueError(f"--torch_compile_mode must be one of {', '.join(COMPILE_MODES)}; "
                             f"got {self.torch_compile_mode!r}.")
        checks = {
            "per_device_train_batch_size": self.per_device_train_batch_size >= 1,
            "per_device_eval_batch_size": self.per_device_eval_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "logging_steps": self.logging_steps >= 1,
            "learning_rate": self.learning_rate > 0,
            "warmup_ratio": 0.0 <= self.warmup_ratio <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"Invalid --{name} {getattr(self, name)!r}.")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("Give --max_steps > 0 or --num_train_epochs > 0.")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"--mixed_precision must be auto, no, bf16 or fp16; got {self.mixed_precision!r}.")
        if not self.metric_for_best_model or not self.metric_for_best_model.strip():
            raise ValueError("--metric_for_best_model must name a validation loss, e.g. 'loss' or "
                             "'reconstruction_loss'; got an empty string.")
        for name in ("max_train_windows", "max_eval_windows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 (or not given), got {value}.")


@dataclass
class PretrainArguments(TrainArguments):
    """Training arguments of `scripts/pretrain.py`."""

    output_dir: str = field(default="outputs/pretrain", metadata={"help": "Run folder of the pre-training."})
    metric_for_best_model: str = field(
        default="reconstruction_loss",
        metadata={"help": "Validation loss that picks the kept weights and drives early stopping. Default: the "
                          "masked reconstruction loss, the one pre-training loss whose target does not move with "
                          "the weights (the distillation loss can fall while the encoder learns nothing); 'loss': "
                          "the total."},
    )
    diagnostics_windows: int = field(
        default=256,
        metadata={"help": "Validation windows (evenly strided, fixed masks) scored at every validation for "
                          "reconstruction skill vs trivial predictors, feature spread and a linear probe "
                          "(himtm_hf.pretraining_diagnostics; metrics.json, pretraining_diagnostics.png). 0: off."},
    )
    diagnostics_period: int | None = field(
        default=None,
        metadata={"help": "Season length in steps for the 'period_copy' trivial predictor. Not given: the daily "
                          "period inferred from the timestamps (hourly 24, 15-minute 96, ...); 0: none."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.diagnostics_windows < 0:
            raise ValueError(f"--diagnostics_windows must be >= 0 (0: off), got {self.diagnostics_windows}.")
        if self.diagnostics_period is not None and self.diagnostics_period < 0:
            raise ValueError(f"--diagnostics_period must be >= 0 (0: none), got {self.diagnostics_period}.")


@dataclass
class FinetuneArguments(TrainArguments):
    """Training arguments of `scripts/finetune.py`."""

    output_dir: str = field(default="outputs/finetune", metadata={"help": "Run folder of the fine-tuning."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    pretrained_model_path: str | None = field(
        default=None, metadata={"help": "Pre-training run folder (or Hub id) to start from; not given: from scratch."}
    )
    linear_probe: bool = field(default=False, metadata={"help": "Freeze the encoder; train the CSA-FT head only."})
    head_only_epochs: float = field(
        default=0.0,
        metadata={"help": "Train the CSA-FT head alone (encoder frozen) for this many of the --num_train_epochs first, "
                          "then the whole model at half the learning rate (LP-FT, PatchTST's own fine-tuning of a "
                          "pre-trained encoder); 0: fine-tune everything from the start."},
    )
    head_only_steps: int = field(
        default=0,
        metadata={"help": "With --max_steps: train the CSA-FT head alone for this many of the --max_steps first, then "
                          "the whole model at half the learning rate (LP-FT counted in steps); 0: off."},
    )
    max_test_windows: int | None = field(
        default=None,
        metadata={"help": "Cap the TEST windows (evenly strided). Not given: every test window, as the protocol says."},
    )
    plot_windows: int = field(default=3, metadata={"help": "Test windows in forecast_plot.png (0: no plot)."})
    plot_channels: int = field(default=3, metadata={"help": "Channels in forecast_plot.png."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_only_epochs < 0:
            raise ValueError(f"--head_only_epochs must be >= 0, got {self.head_only_epochs}.")
        if self.head_only_steps < 0:
            raise ValueError(f"--head_only_steps must be >= 0, got {self.head_only_steps}.")
        if self.head_only_epochs > 0 or self.head_only_steps > 0:
            flag = "--head_only_steps" if self.head_only_steps > 0 else "--head_only_epochs"
            if self.linear_probe:
                raise ValueError(f"{flag} and --linear_probe contradict each other: linear probing never "
                                 "unfreezes the encoder. Use one of them.")
            check_head_only(self, self.head_only_epochs, self.head_only_steps)

    @property
    def trains_head_first(self) -> bool:
        """Whether the run is LP-FT (`--head_only_epochs` or `--head_only_steps`)."""
        return self.head_only_epochs > 0 or self.head_only_steps > 0


def check_head_only(train_args: TrainArguments, head_only_epochs: float = 0.0, head_only_steps: int = 0) -> None:
    """Raises unless `train_args` can be split into a head-only phase and the rest for the whole model
    (`train_head_then_model`): `head_only_epochs` of `--num_train_epochs`, or `head_only_steps` of `--max_steps`
    (exactly one of the two); a shorter head-only phase than the whole; no resume."""
    if head_only_epochs > 0 and head_only_steps > 0:
        raise ValueError(f"--head_only_epochs ({head_only_epochs}) and --head_only_steps ({head_only_steps}) both set "
                         "the head-only phase; give one (steps with --max_steps, epochs with --num_train_epochs).")
    if head_only_steps > 0:
        if train_args.max_steps <= 0:
            raise ValueError(f"--head_only_steps ({head_only_steps}) splits --max_steps between the head-only and the "
                             "full phase, but --max_steps is not set; set it, or use --head_only_epochs.")
        if head_only_steps >= train_args.max_steps:
            raise ValueError(f"--head_only_steps ({head_only_steps}) must be below --max_steps "
                             f"({train_args.max_steps}): the remaining steps fine-tune the whole model.")
    elif head_only_epochs > 0:
        if train_args.max_steps > 0:
            raise ValueError(f"--head_only_epochs splits --num_train_epochs between the head-only and the full phase, "
                             f"but --max_steps {train_args.max_steps} is set; use --head_only_steps with --max_steps, "
                             "or --num_train_epochs instead.")
        if head_only_epochs >= train_args.num_train_epochs:
            raise ValueError(f"--head_only_epochs ({head_only_epochs}) must be below --num_train_epochs "
                             f"({train_args.num_train_epochs}): the remaining epochs fine-tune the whole model.")
    else:
        raise ValueError(f"The head-only phase must be > 0 to train the head first, got --head_only_epochs "
                         f"{head_only_epochs} and --head_only_steps {head_only_steps}.")
    if train_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint is not supported with a head-only phase (LP-FT); start the run "
                         "again.")


@dataclass
class EvaluateArguments:
    """Arguments of `scripts/evaluate.py`."""

    model_dir: str = field(metadata={"help": "Saved prediction model folder (config.json + model.safetensors)."})
    dataset: str = field(default="ETTh1", metadata={"help": "Dataset to evaluate on (see DataArguments.dataset)."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder with the benchmark files."})
    prediction_length: int | None = field(
        default=None, metadata={"help": "Expected horizon; must equal the model's prediction_length if given."}
    )
    context_length: int | None = field(
        default=None,
        metadata={"help": "Expected look-back; must equal the model's context_length if given (an evaluation always "
                          "uses the model's own)."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where metrics.json goes (default: <model_dir>-eval-<dataset>, next to the model folder)."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an earlier evaluation in output_dir (the files its marker lists)."}
    )
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Windows per process and batch."})
    max_test_windows: int | None = field(default=None, metadata={"help": "Cap the test windows (default: all)."})
    max_eval_windows: int | None = field(default=None, metadata={"help": "Cap the validation windows (default: all)."})
    timestamp_column: str | None = field(default=None, metadata={"help": "See DataArguments."})
    target_columns: str | None = field(default=None, metadata={"help": "See DataArguments."})
    split_fractions: str | None = field(default=None, metadata={"help": "See DataArguments."})
    split_dates: str | None = field(default=None, metadata={"help": "See DataArguments."})
    sort_timestamps: bool = field(default=False, metadata={"help": "See DataArguments."})
    dataset_config: str | None = field(default=None, metadata={"help": "See DataArguments."})
    id_column: str | None = field(default=None, metadata={"help": "See DataArguments."})
    freq: str | None = field(default=None, metadata={"help": "See DataArguments."})
    short_series: str = field(default="skip", metadata={"help": "See DataArguments.", "choices": ["skip", "error"]})
    mixed_precision: str = field(default="auto", metadata={"help": "auto, no, bf16 or fp16."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is available."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    seed: int = field(default=42, metadata={"help": "Seed (evaluation itself is deterministic)."})
    plot_windows: int = field(default=3, metadata={"help": "Test windows in forecast_plot.png (0: no plot)."})
    plot_channels: int = field(default=3, metadata={"help": "Channels in forecast_plot.png."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


@dataclass
class MainJobArguments:
    """Arguments of `scripts/main_job.py`: pre-train -> fine-tune -> evaluate, small enough for a 2-core CPU."""

    output_dir: str = field(default="outputs/main_job", metadata={"help": "Folder of the whole job."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an earlier main job in output_dir (the files its marker lists)."}
    )
    dataset: str = field(default="ETTh1", metadata={"help": "Dataset (see DataArguments.dataset)."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder with the benchmark files."})
    context_length: int = field(default=512, metadata={"help": "Look-back window L."})
    prediction_length: int = field(default=96, metadata={"help": "Horizon H."})
    patch_length: int = field(default=16, metadata={"help": "Patch length (= stride)."})
    num_hierarchies: int = field(default=3, metadata={"help": "HMT hierarchies."})
    d_model: str = field(default="32", metadata={"help": "Width per hierarchy (int or list)."})
    num_layers: str = field(default="1", metadata={"help": "Blocks per hierarchy (int or list)."})
    num_attention_heads: int = field(default=4, metadata={"help": "Heads (encoder, DED and CSA-FT)."})
    ffn_dim: str = field(default="64", metadata={"help": "Feed-forward width per hierarchy (int or list)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout."})
    mask_ratio: float = field(default=0.5, metadata={"help": "Pre-training mask ratio."})
    pretrain_steps: int = field(default=300, metadata={"help": "Pre-training optimiser steps."})
    pretrain_learning_rate: float = field(default=1e-3, metadata={"help": "Pre-training learning rate."})
    finetune_steps: int = field(default=300, metadata={"help": "Fine-tuning optimiser steps."})
    finetune_learning_rate: float = field(default=5e-4, metadata={"help": "Fine-tuning learning rate."})
    linear_probe: bool = field(default=False, metadata={"help": "Fine-tune the head only."})
    batch_size: int = field(default=32, metadata={"help": "Per-device training batch size."})
    eval_every_steps: int = field(default=50, metadata={"help": "Validate every N steps."})
    early_stopping_patience: int = field(default=4, metadata={"help": "Validations without improvement before stopping."})
    max_train_windows: int | None = field(default=4096, metadata={"help": "Training windows (evenly strided subset)."})
    max_eval_windows: int | None = field(default=512, metadata={"help": "Validation windows used during training."})
    seed: int = field(default=42, metadata={"help": "Seed."})
    mixed_precision: str = field(default="auto", metadata={"help": "auto, no, bf16 or fp16."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is available."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


# ----------------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parses the command line (or `args`) into one instance per dataclass with `transformers.HfArgumentParser`.

    A single `.json`, `.yaml` or `.yml` file as the only argument is read with `parse_json_file` / `parse_yaml_file`
    (unknown keys are an error). `ModelArguments.context_length`/`prediction_length` are filled from the
    `DataArguments` in the result.
    """
    argv = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(tuple(dataclass_types))
    if len(argv) == 1 and argv[0].lower().endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            parser.error(f"argument file {path} does not exist")
        parsed = parser.parse_json_file(path) if path.suffix.lower() == ".json" else parser.parse_yaml_file(path)
    else:
        parsed = parser.parse_args_into_dataclasses(argv)
    parsed = tuple(parsed)
    data = next((p for p in parsed if isinstance(p, DataArguments)), None)
    for item in parsed:
        if data is not None and type(item).__name__ == "ModelArguments":
            for name in SHARED_WITH_DATA:
                setattr(item, name, getattr(data, name))
    return parsed
