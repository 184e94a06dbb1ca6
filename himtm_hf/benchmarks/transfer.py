"""Cross-dataset transfer experiments: pre-train on a source series, fine-tune and test on a target series.

The driver runs a matrix over

* source -> target pairs (``"weather:ETTh1"``); the channel counts may differ: both models are channel-independent,
  so the pre-trained encoder is reused as is and only the forecasting head is new. A source may name several
  datasets (``"ETTh2,ETTm1,ETTm2,weather:ETTh1"``): a multi-domain corpus, mixed channel-independently (univariate
  windows, each dataset scaled by its own train statistics, at most the budget's ``max_windows_per_dataset`` windows
  each; :func:`himtm_hf.data.load_pretraining_corpus`), which leaves the target out when the target is not in it,
* models: ``himtm`` (:class:`~himtm_hf.HiMTMForPretraining` -> :class:`~himtm_hf.HiMTMForPrediction`) and
  ``patchtst`` (self-supervised PatchTST: ``transformers.PatchTSTForPretraining`` -> ``PatchTSTForPrediction``
  initialised from it, configured as in the PatchTST paper: patch 12, stride 12, mask ratio 0.4,
  ``pooling_type=None`` (flatten head), ``scaling="std"``, d_model 128, 16 heads, d_ff 512, 3 layers, dropout 0.2),
* protocols: ``finetune`` (full fine-tuning), ``lp_ft`` (the head alone for the first ``HEAD_ONLY_FRACTION`` of the
  fine-tuning steps, then everything at half the learning rate: :func:`~himtm_hf.training.train_head_then_model`,
  PatchTST's own protocol for a pre-trained encoder), ``linear_probe`` (frozen encoder, only the head is trained),
  ``zero_shot`` (HiMTM only: no training on the target at all; the pre-training model forecasts by reconstructing
  the masked horizon units, :meth:`~himtm_hf.HiMTMForPretraining.forecast`, from the last look-back steps its window
  leaves; one evaluation per pair, recorded in every fraction's row) and optionally ``scratch`` (no pre-training: the
  same forecaster randomly initialised, the reference that shows what pre-training buys),
* few-shot fractions of the target's training windows (``0.05``, ``0.1``, ``1.0``): ``ceil(f * N)`` windows, the
  most recent ones (:func:`himtm_hf.data.few_shot_split`, the training library's ``train_fraction``: what a user
  with a short history has),

and writes one JSON record per run under ``docs/results/transfer/<budget>/`` plus a ``summary.md`` table (a record's
``pretrained_checkpoint`` is relative to ``--work_dir``, so records name no folder of the machine they ran on). Every
(target, fraction) also gets the two closed-form rows on the same test windows (``model`` ``naive``: the last
look-back value; ``linear``: the NLinear-style ridge of :mod:`himtm_hf.benchmarks.baselines`, fitted on the same
few-shot train windows), so a table shows where the networks stand.

Everything trains through the project's training library (:mod:`himtm_hf.training`): HiMTM with
:func:`~himtm_hf.training.pretrain` / :func:`~himtm_hf.training.finetune`, PatchTST with the same loop
(:func:`~himtm_hf.training.train_model`) and the same test metric (:func:`~himtm_hf.training.forecast_metrics`).
Both models get the same *budget* (:data:`BUDGETS`): look-back, horizon, optimiser steps, batch size, learning
rates and schedule, validation schedule, early stopping and test windows. A fixed number of steps is used for every
fraction, so a smaller fraction means more passes over less data, not less compute. Each model trains with its own
loss (HiMTM: MSE after its per-instance scaling; PatchTST: MSE in the input's standardised units, as in the
PatchTST paper); validation and test use the same standardised MSE for both.

Linear probing: the encoder's parameters are frozen for both models. PatchTST's encoder is also kept in eval mode
(its batch-norm running statistics would otherwise keep adapting to the target, which is no longer a linear probe);
HiMTM's encoder has no running statistics (layer norm), and the library runs it without gradients.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .budgets import HEAD_ONLY_FRACTION
from .records import HIMTM_DEFAULTS_VERSION, git_commit, portable_path

__all__ = [
    "BUDGETS",
    "MODELS",
    "PROTOCOLS",
    "Budget",
    "TransferArguments",
    "TransferRun",
    "build_patchtst_config",
    "finetune_run",
    "parse_pair",
    "plan_runs",
    "pretrain_run",
    "run_transfer",
    "summarise_results",
    "transfer_table",
]

MODELS = ("himtm", "patchtst")
PROTOCOLS = ("finetune", "lp_ft", "linear_probe", "zero_shot", "scratch")
# The closed-form rows of every (target, fraction): record key "model" -> what the summary calls it.
CLOSED_FORM = {"naive": "naive (last value)", "linear": "linear (ridge)"}


# ----------------------------------------------------------------------------------------------------------------------
# Budgets
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Everything that sets the compute of one run; both models get the same budget.

    Model sizes are part of the budget (``himtm`` holds ``HiMTMConfig`` fields, ``patchtst`` ``PatchTSTConfig``
    fields).
    """

    name: str
    context_length: int
    prediction_length: int
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    pretrain_learning_rate: float
    finetune_learning_rate: float
    linear_probe_learning_rate: float
    eval_batch_size: int = 256
    eval_every_steps: int = 0  # 0: validate at every epoch end (and at the end of the run)
    early_stopping_patience: int = 0  # 0: off (the step budget is spent in full)
    max_eval_windows: int | None = None  # validation windows (evenly strided); None = all
    max_test_windows: int | None = None  # None = every test window (the standard protocol)
    max_windows_per_dataset: int | None = None  # a multi-domain source: univariate windows per dataset and split
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # bf16 on a bf16-capable GPU, else fp32
    himtm: dict[str, Any] = field(default_factory=dict)
    patchtst: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PATCHTST_PAPER = dict(  # PatchTST self-supervised (Nie et al. 2023, and HIMTM-NOTES.md)
    patch_length=12, patch_stride=12, random_mask_ratio=0.4, d_model=128, num_attention_heads=16, ffn_dim=512,
    num_hidden_layers=3, ff_dropout=0.2, positional_dropout=0.2, attention_dropout=0.0, head_dropout=0.0,
)
_HIMTM_BASE = dict(patch_length=16, patch_stride=16, num_hierarchies=3, d_model=128, num_layers=1,
                   num_attention_heads=8, ffn_dim=256, mask_ratio=0.5)

BUDGETS: dict[str, Budget] = {
    # Tests and smoke runs: tiny models, a handful of steps, capped evaluation. The numbers mean nothing.
    "quick": Budget(
        name="quick", context_length=64, prediction_length=16, pretrain_steps=3, finetune_steps=3, batch_size=8,
        pretrain_learning_rate=1e-3, finetune_learning_rate=1e-3, linear_probe_learning_rate=1e-3,
        eval_batch_size=64, max_eval_windows=16, max_test_windows=64, max_windows_per_dataset=256,
        himtm=dict(patch_length=8, patch_stride=8, num_hierarchies=2, d_model=16, num_attention_heads=2,
                   ffn_dim=32, decoder_num_attention_heads=2, csa_num_attention_heads=2),
        patchtst=dict(_PATCHTST_PAPER, d_model=16, num_attention_heads=2, ffn_dim=32, num_hidden_layers=2),
    ),
    # A 2-core CPU budget: the standard look-back and horizon, paper-sized models, a few hundred steps, every test
    # window, the best validation checkpoint. Measured with the 2 cores shared: 4-10 s per optimiser step (batch 32,
    # L=512), so expect several hours for the 12 runs of one pair; run it unattended.
    "cpu": Budget(
        name="cpu", context_length=512, prediction_length=96, pretrain_steps=400, finetune_steps=300, batch_size=32,
        pretrain_learning_rate=1e-3, finetune_learning_rate=1e-4, linear_probe_learning_rate=1e-3,
        eval_batch_size=256, eval_every_steps=100, max_eval_windows=1024, max_test_windows=None,
        himtm=dict(_HIMTM_BASE), patchtst=dict(_PATCHTST_PAPER),
    ),
    # Few-shot transfer from a multi-domain corpus on a 2-core CPU (about 10 minutes per target and fraction): L=336,
    # pre-training on univariate corpus windows (cheap: 15 steps/s at batch 64), a short fine-tuning that keeps the
    # best validation checkpoint, every test window.
    "cpu_fewshot": Budget(
        name="cpu_fewshot", context_length=336, prediction_length=96, pretrain_steps=2000, finetune_steps=300,
        batch_size=64, pretrain_learning_rate=1e-3, finetune_learning_rate=5e-4, linear_probe_learning_rate=1e-3,
        eval_batch_size=256, eval_every_steps=50, max_eval_windows=1024, max_test_windows=None,
        max_windows_per_dataset=20000, himtm=dict(_HIMTM_BASE), patchtst=dict(_PATCHTST_PAPER),
    ),
    # One accelerator: ten times the CPU steps, full validation.
    "gpu": Budget(
        name="gpu", context_length=512, prediction_length=96, pretrain_steps=4000, finetune_steps=3000,
        batch_size=64, pretrain_learning_rate=1e-3, finetune_learning_rate=1e-4, linear_probe_learning_rate=1e-3,
        eval_batch_size=512, eval_every_steps=500, max_eval_windows=None, max_test_windows=None,
        himtm=dict(_HIMTM_BASE), patchtst=dict(_PATCHTST_PAPER),
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# Arguments and the matrix
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TransferArguments:
    """Arguments of ``scripts/transfer.py`` (parsed with ``transformers.HfArgumentParser``)."""

    pairs: list[str] = field(
        default_factory=lambda: ["weather:ETTh1"],
        metadata={"help": "source:target dataset pairs, e.g. weather:ETTh1 ETTm1:ETTh2 (names, files or repo ids)."},
    )
    models: list[str] = field(default_factory=lambda: ["himtm", "patchtst"], metadata={"help": f"Of {MODELS}."})
    protocols: list[str] = field(
        default_factory=lambda: ["finetune", "linear_probe"], metadata={"help": f"Of {PROTOCOLS}."}
    )
    fractions: list[float] = field(
        default_factory=lambda: [0.05, 0.1, 1.0], metadata={"help": "Fractions of the target's training windows."}
    )
    budget: str = field(default="cpu", metadata={"help": f"Budget name: {', '.join(BUDGETS)}."})
    prediction_length: int | None = field(default=None, metadata={"help": "Target horizon (default: budget's)."})
    context_length: int | None = field(default=None, metadata={"help": "Look-back (default: the budget's)."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, masking and batch order."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the benchmark files ($HIMTM_DATA_DIR)."})
    results_dir: str = field(default="docs/results/transfer", metadata={"help": "Where the JSON records go."})
    work_dir: str = field(
        default="outputs/transfer", metadata={"help": "Run folders: pre-trained encoders (reused) and fine-tunings."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is available."})
    overwrite: bool = field(default=False, metadata={"help": "Re-run runs whose record exists (default: skip)."})
    repretrain: bool = field(default=False, metadata={
        "help": "Pre-train again even where the work folder holds a finished pre-training of the same model, source, "
                "seed, budget and commit (default: reuse it)."})
    list_only: bool = field(default=False, metadata={"help": "Print the planned runs and exit."})


@dataclass(frozen=True)
class TransferRun:
    """One cell of the matrix."""

    source: str
    target: str
    model: str
    protocol: str
    fraction: float

    @property
    def pretrained(self) -> bool:
        return self.protocol != "scratch"

    def record_name(self, seed: int, context_length: int, prediction_length: int) -> str:
        """The record's path under the budget's results folder. Every setting that changes the numbers and can
        differ between two matrices of one budget is in it (the look-back too), so a kept record is only ever
        read back for the run it describes."""
        fraction = f"{self.fraction:g}".replace(".", "p")
        return (f"{_slug(self.source)}-to-{_slug(self.target)}/L{context_length}-H{prediction_length}/"
                f"{self.model}-{self.protocol}-f{fraction}-seed{seed}.json")


def _slug(name: str) -> str:
    stem = Path(name).name
    for suffix in (".csv.gz", ".csv", ".parquet"):
        stem = stem.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def checkpoint_source(source: str) -> Path | None:
    """The folder of a source that names a finished HiMTM pre-training (a folder with a ``config.json`` of
    ``model_type`` ``himtm``, such as ``checkpoints/himtm-base``): the harness fine-tunes from it instead of
    pre-training. None for a dataset source."""
    folder = Path(source)
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise ValueError(f"Source {source!r} has a config.json that does not read as JSON ({error}).") from error
    if model_type != "himtm":
        raise ValueError(f"Source {source!r} is a {model_type!r} model folder; a checkpoint source must be a HiMTM "
                         "pre-training (model_type 'himtm'), e.g. checkpoints/himtm-base.")
    return folder


def parse_pair(pair: str) -> tuple[str, str]:
    """``"weather:ETTh1"`` or ``"weather->ETTh1"`` -> ``("weather", "ETTh1")``."""
    for separator in ("->", ":", ","):
        if separator in pair:
            source, target = (p.strip() for p in pair.split(separator, 1))
            if source and target:
                return source, target
    raise ValueError(f"Bad pair {pair!r}: write it as source:target, e.g. weather:ETTh1.")


def resolve_budget(name: str, context_length: int | None = None, prediction_length: int | None = None) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"Unknown budget {name!r}; choose one of {sorted(BUDGETS)}.")
    budget = BUDGETS[name]
    if context_length is not None:
        budget = replace(budget, context_length=context_length)
    if prediction_length is not None:
        budget = replace(budget, prediction_length=prediction_length)
    return budget


def plan_runs(args: TransferArguments) -> list[TransferRun]:
    """The matrix, in execution order (runs sharing a pre-trained encoder are adjacent)."""
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        raise ValueError(f"Unknown model(s) {bad}; choose from {MODELS}.")
    bad = [p for p in args.protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"Unknown protocol(s) {bad}; choose from {PROTOCOLS}.")
    bad_fractions = [f for f in args.fractions if not 0.0 < f <= 1.0]
    if bad_fractions:
        raise ValueError(f"Fractions must be in (0, 1], got {bad_fractions}.")
    runs = []
    for pair in args.pairs:
        source, target = parse_pair(pair)
        if checkpoint_source(source) is not None and args.models != ["himtm"]:
            raise ValueError(f"Source {source!r} is a HiMTM checkpoint, which only HiMTM can fine-tune from; run it "
                             "with --models himtm (and a dataset source for PatchTST).")
        for model in args.models:
            for protocol in args.protocols:
                if protocol == "zero_shot" and model != "himtm":
                    continue  # PatchTST's pre-training model has no forecasting path; see the module docstring
                for fraction in args.fractions:
                    runs.append(TransferRun(source, target, model, protocol, float(fraction)))
    if not runs and args.pairs:
        raise ValueError(f"Nothing to run: protocol zero_shot is HiMTM's only (models {args.models}); add "
                         "--models himtm or another protocol.")
    return runs


# ----------------------------------------------------------------------------------------------------------------------
# Models and runs (through himtm_hf.training)
# ----------------------------------------------------------------------------------------------------------------------


def build_patchtst_config(budget: Budget, num_channels: int, prediction_length: int | None = None,
                          pretraining: bool = False, **overrides: Any):
    """PatchTST as in the paper's self-supervised setting (HIMTM-NOTES.md, "Configuring the PatchTST baseline
    faithfully"): non-overlapping patches of 12, 40 % random patch masking, flatten head (``pooling_type=None``; the
    default ``"mean"`` averages the patches away), per-instance standardisation (``scaling="std"``),
    channel-independent shared weights."""
    from transformers import PatchTSTConfig

    values = dict(budget.patchtst)
    values.update(overrides)
    return PatchTSTConfig(
        num_input_channels=num_channels,
        context_length=budget.context_length,
        prediction_length=prediction_length or budget.prediction_length,
        do_mask_input=pretraining,
        mask_type="random",
        channel_consistent_masking=False,
        pooling_type=None,
        scaling="std",
        share_embedding=True,
        share_projection=True,
        channel_attention=False,
        loss="mse",
        **values,
    )


def _data_args(budget: Budget, dataset: str, data_dir: str | None, train_fraction: float = 1.0):
    """The training library's data arguments of one run; ``dataset`` may name several datasets (a corpus source)."""
    from ..training import DataArguments

    args = DataArguments(dataset=dataset, data_dir=data_dir, context_length=budget.context_length,
                         prediction_length=budget.prediction_length, train_fraction=train_fraction)
    if args.is_corpus:
        args.max_windows_per_dataset = budget.max_windows_per_dataset
    return args


def _train_args(cls, budget: Budget, output_dir: Path, steps: int, learning_rate: float, seed: int, use_cpu: bool,
                **extra: Any):
    return cls(
        output_dir=str(output_dir), overwrite_output_dir=True, per_device_train_batch_size=budget.batch_size,
        per_device_eval_batch_size=budget.eval_batch_size, learning_rate=learning_rate, max_steps=steps,
        weight_decay=budget.weight_decay, warmup_ratio=budget.warmup_ratio, lr_scheduler_type="cosine",
        max_grad_norm=budget.max_grad_norm, eval_every_steps=budget.eval_every_steps,
        early_stopping_patience=budget.early_stopping_patience, max_eval_windows=budget.max_eval_windows,
        seed=seed, mixed_precision=budget.mixed_precision, use_cpu=use_cpu, logging_steps=max(1, min(10, steps)),
        disable_tqdm=True, **extra,
    )


def _pin_eval(module: torch.nn.Module) -> None:
    """Keeps ``module`` in eval mode even when its parent is switched to training (frozen features)."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: self, module)


def _count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pretrain_run(model: str, budget: Budget, dataset: str, data_dir: str | None, output_dir: Path, seed: int,
                 use_cpu: bool = False) -> dict[str, Any]:
    """Self-supervised pre-training on the train split of ``dataset`` (validation on its val split); writes a run
    folder at ``output_dir`` and returns facts about it (``path``, ``steps``, ``epochs``, ``best_val_loss``,
    ``wall_time_s``)."""
    import time

    from .. import training

    start = time.time()
    data_args = _data_args(budget, dataset, data_dir)
    # HiMTM keeps the weights of its lowest validation reconstruction loss (PretrainArguments' default); PatchTST
    # reports one loss, its reconstruction loss.
    train_args = _train_args(training.PretrainArguments, budget, output_dir, budget.pretrain_steps,
                             budget.pretrain_learning_rate, seed, use_cpu,
                             **({} if model == "himtm" else {"metric_for_best_model": "loss"}))
    if model == "himtm":
        path = training.pretrain(training.ModelArguments(**budget.himtm), data_args, train_args)
        log = [json.loads(line) for line in (Path(path) / "log.jsonl").read_text().splitlines() if line.strip()]
        metric = train_args.metric_for_best_model
        val = [r[metric] for r in log if r.get("split") == "val" and metric in r]
        info = {"best_val_loss": min(val) if val else None}
    else:
        from accelerate.utils import set_seed
        from transformers import PatchTSTForPretraining

        # Look-back-only windows, as for HiMTM; a corpus gives univariate windows (a 1-channel model).
        splits = data_args.load_pretraining()
        set_seed(seed)
        net = PatchTSTForPretraining(build_patchtst_config(budget, splits.num_channels, pretraining=True))
        result = training.train_model(net, splits.train, splits.val, train_args, is_pretraining=True)
        path = Path(output_dir)
        result.model.save_pretrained(path)
        if data_args.is_corpus:
            splits.save(path)  # corpus.json: the datasets, their scalers and windows
        else:
            splits.scaler.save(path)
        info = {"best_val_loss": result.best_val_loss}
    info.update(path=str(path), steps=budget.pretrain_steps, wall_time_s=time.time() - start)
    return info


def _load_patchtst_forecaster(pretrained: str | Path | None, budget: Budget, num_channels: int,
                              linear_probe: bool):
    from transformers import PatchTSTForPrediction
    from transformers.utils import logging as hf_logging

    if pretrained is None:
        return PatchTSTForPrediction(build_patchtst_config(budget, num_channels)), 0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the expected new head / dropped pre-training head
    try:
        net, info = PatchTSTForPrediction.from_pretrained(
            pretrained, num_input_channels=num_channels, prediction_length=budget.prediction_length,
            do_mask_input=False, pooling_type=None, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info["missing_keys"])
    if any(k.startswith("model.") for k in missing) or info.get("mismatched_keys"):
        raise RuntimeError(f"The pre-trained PatchTST encoder in {pretrained} did not load: missing {missing}, "
                           f"mismatched {info.get('mismatched_keys')}.")
    if linear_probe:
        net.model.requires_grad_(False)
        _pin_eval(net.model)
    return net, sum(1 for k in net.state_dict() if k.startswith("model.") and k not in missing)


def finetune_run(model: str, budget: Budget, dataset: str, data_dir: str | None, output_dir: Path, seed: int,
                 pretrained: str | Path | None, linear_probe: bool, train_fraction: float = 1.0,
                 use_cpu: bool = False, head_only_steps: int = 0) -> dict[str, Any]:
    """Fine-tunes (``pretrained`` given) or trains from scratch a forecaster on ``dataset`` (the last
    ``train_fraction`` of its train windows), tests it, and writes a run folder (model, scaler, metrics.json) at
    ``output_dir``. ``head_only_steps`` > 0: LP-FT, that many of the budget's steps train the head alone first.
    Returns the ``metrics.json`` content plus ``trainable_parameters`` and ``encoder_tensors_loaded``."""
    import time

    from .. import training

    start = time.time()
    data_args = _data_args(budget, dataset, data_dir, train_fraction)
    lr = budget.linear_probe_learning_rate if linear_probe else budget.finetune_learning_rate
    train_args = _train_args(
        training.FinetuneArguments, budget, output_dir, budget.finetune_steps, lr, seed, use_cpu,
        pretrained_model_path=str(pretrained) if pretrained else None, linear_probe=linear_probe,
        max_test_windows=budget.max_test_windows, plot_windows=0, head_only_steps=head_only_steps,
    )
    if model == "himtm":
        model_args = training.ModelArguments() if pretrained else training.ModelArguments(**budget.himtm)
        metrics = training.finetune(model_args, data_args, train_args)
        from ..modeling_himtm import HiMTMForPrediction

        saved = HiMTMForPrediction.from_pretrained(output_dir)  # config.freeze_encoder is saved with it
        metrics["trainable_parameters"] = _count_trainable(saved)
        metrics["encoder_tensors_loaded"] = (
            sum(1 for k in saved.state_dict() if k.startswith("model.")) if pretrained else 0
        )
        return metrics

    from accelerate.utils import set_seed

    splits = data_args.load()
    set_seed(seed)
    net, loaded = _load_patchtst_forecaster(pretrained, budget, len(splits.columns), linear_probe)
    trainable = _count_trainable(net)
    if head_only_steps > 0:
        result = training.train_head_then_model(net, splits.train, splits.val, train_args,
                                                head_only_steps=head_only_steps)
    else:
        result = training.train_model(net, splits.train, splits.val, train_args, is_pretraining=False)
    net = result.model
    test = training.forecast_metrics(net, splits.test, splits.scaler, budget.eval_batch_size, result.accelerator,
                                     budget.max_test_windows, desc="test", disable_tqdm=True)
    val = training.forecast_metrics(net, splits.val, splits.scaler, budget.eval_batch_size, result.accelerator,
                                    budget.max_eval_windows, desc="val", disable_tqdm=True)
    test["full_test_split"] = budget.max_test_windows is None or test["num_windows"] == len(splits.test)
    metrics = {
        "dataset": splits.name, "prediction_length": budget.prediction_length,
        "context_length": budget.context_length, "num_channels": len(splits.columns), "test": test, "val": val,
        "best_val_loss": result.best_val_loss, "best_step": result.best_step, "epochs": result.epochs,
        "steps": result.global_step, "stopped_early": result.stopped_early,
        "wall_time_s": round(time.time() - start, 2), "train_wall_time_s": round(result.wall_time_s, 2),
        "pretrained_model_path": str(pretrained) if pretrained else None, "linear_probe": linear_probe,
        "head_only_steps": head_only_steps,
    }
    output_dir = Path(output_dir)
    net.save_pretrained(output_dir)
    splits.scaler.save(output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    metrics["trainable_parameters"] = trainable
    metrics["encoder_tensors_loaded"] = loaded
    return metrics


class _ZeroShotForecaster(torch.nn.Module):
    """:meth:`~himtm_hf.HiMTMForPretraining.forecast` behind a forecaster's call (``past_values`` and
    ``past_observed_mask`` in, ``.prediction_outputs`` out), so the training library scores it like any network."""

    def __init__(self, model: torch.nn.Module, prediction_length: int):
        super().__init__()
        self.model = model
        self.prediction_length = prediction_length

    def forward(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None = None):
        return self.model.forecast(past_values, self.prediction_length, past_observed_mask=past_observed_mask,
                                   return_dict=True)


def zero_shot_run(budget: Budget, dataset: str, data_dir: str | None, pretrained: str | Path,
                  use_cpu: bool = False) -> dict[str, Any]:
    """Scores a HiMTM pre-training as it is on ``dataset``: no training on it, forecasts by masked reconstruction
    of the horizon units (:meth:`~himtm_hf.HiMTMForPretraining.forecast`) on the same test (and validation) windows
    as the networks, reading the last ``forecast_look_back`` steps of each look-back. Returns ``finetune_run``'s
    keys (no training: 0 steps, 0 trainable parameters) plus ``forecast_look_back``."""
    import time

    from .. import training
    from ..modeling_himtm import HiMTMForPretraining

    start = time.time()
    splits = _data_args(budget, dataset, data_dir).load()
    model = HiMTMForPretraining.from_pretrained(pretrained, num_input_channels=len(splits.columns))
    device = "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"
    forecaster = _ZeroShotForecaster(model, budget.prediction_length).to(device)
    with torch.no_grad():
        test = training.forecast_metrics(forecaster, splits.test, splits.scaler, budget.eval_batch_size, None,
                                         budget.max_test_windows, desc="test", disable_tqdm=True)
        val = training.forecast_metrics(forecaster, splits.val, splits.scaler, budget.eval_batch_size, None,
                                        budget.max_eval_windows, desc="val", disable_tqdm=True)
    test["full_test_split"] = test["num_windows"] == len(splits.test)
    return {"test": test, "val": val, "steps": 0, "epochs": 0.0, "best_step": None, "stopped_early": False,
            "wall_time_s": round(time.time() - start, 2), "trainable_parameters": 0,
            "encoder_tensors_loaded": sum(1 for k in model.state_dict() if k.startswith("model.")),
            "forecast_look_back": model.forecast_look_back(budget.prediction_length)}


# ----------------------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------------------


_THREADS_SUFFIX = re.compile(r" x\d+ threads?$")


def _device_description(use_cpu: bool) -> str:
    if torch.cuda.is_available() and not use_cpu:
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_machine(device: str) -> str:
    """The machine of a record's ``device`` (``_device_description``'s text) without its CPU thread count: runs of
    one CPU at different thread counts compute the same numbers and share a results table."""
    return _THREADS_SUFFIX.sub("", device)


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------


PRETRAIN_MARKER = "transfer_pretraining.json"


def _finished_pretraining(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The facts of a finished pre-training in ``folder`` if it was made with exactly ``identity`` (model, source,
    seed, budget, commit); None otherwise. The marker is written only after the weights are saved, so an
    interrupted pre-training is never reused."""
    marker = folder / PRETRAIN_MARKER
    if not marker.is_file():
        return None
    saved = json.loads(marker.read_text())
    same = json.loads(json.dumps(identity, default=str)) == {k: saved.get(k) for k in identity}
    return saved["info"] if same and (folder / "model.safetensors").is_file() else None


def run_transfer(args: TransferArguments, command: str | None = None, log=print) -> list[dict[str, Any]]:
    """Runs the matrix of ``args`` and writes one JSON record per run.

    Args:
        args: The matrix, budget, seed and folders.
        command: The command line the records name (default: this process's).
        log: Where progress lines go.

    Returns:
        The records, in run order (existing records are read back instead of re-run unless ``args.overwrite``).
    """
    from ..data import load_splits

    budget = resolve_budget(args.budget, args.context_length, args.prediction_length)
    runs = plan_runs(args)
    results_dir = Path(args.results_dir) / budget.name
    work_dir = Path(args.work_dir) / budget.name
    provenance = {"device": _device_description(args.use_cpu), "git_commit": git_commit(),
                  "command": command or " ".join([Path(sys.executable).name, *sys.argv])}
    facts: dict[str, tuple[str, int, int]] = {}
    pretrained: dict[tuple[str, str], dict[str, Any]] = {}
    zero_shot: dict[tuple[str, str], dict[str, Any]] = {}  # one evaluation per pair serves every fraction
    records = []

    def dataset_facts(name: str) -> tuple[str, int, int]:
        """(name, channels, train windows) of a source or target, each loaded once; a corpus source is named by its
        datasets joined with "+", has 1 channel and counts univariate windows."""
        if name not in facts:
            checkpoint = checkpoint_source(name)
            if checkpoint is not None:
                facts[name] = _checkpoint_facts(checkpoint)
            elif (data_args := _data_args(budget, name, args.data_dir)).is_corpus:
                corpus = data_args.load_pretraining()
                facts[name] = ("+".join(corpus.names), 1, len(corpus.train))
            else:
                splits = load_splits(name, data_dir=args.data_dir, context_length=budget.context_length,
                                     prediction_length=budget.prediction_length)
                facts[name] = (splits.name, len(splits.columns), len(splits.train))
        return facts[name]

    for index, run in enumerate(runs, 1):
        name = run.record_name(args.seed, budget.context_length, budget.prediction_length)
        record_path = results_dir / name
        if record_path.is_file() and not args.overwrite:
            log(f"[{index}/{len(runs)}] exists, skipped: {record_path}")
            records.append(json.loads(record_path.read_text()))
            continue
        log(f"[{index}/{len(runs)}] {run.model} {run.source} -> {run.target} {run.protocol} fraction {run.fraction:g}")
        source, target = dataset_facts(run.source), dataset_facts(run.target)
        pretrain_info: dict[str, Any] = {}
        if run.pretrained:
            key = (run.model, run.source)
            if key not in pretrained:
                pretrained[key] = _pretraining(run, budget, args, work_dir, provenance["git_commit"], log)
            pretrain_info = pretrained[key]
        if run.protocol == "zero_shot":
            windows = 0
            if (run.source, run.target) not in zero_shot:
                zero_shot[run.source, run.target] = zero_shot_run(budget, run.target, args.data_dir,
                                                                  pretrain_info["path"], args.use_cpu)
            metrics = zero_shot[run.source, run.target]
        else:
            windows = target[2] if run.fraction >= 1.0 else max(1, math.ceil(run.fraction * target[2]))
            metrics = finetune_run(
                run.model, budget, run.target, args.data_dir, work_dir / "finetune" / name.removesuffix(".json"),
                args.seed, pretrain_info.get("path"), run.protocol == "linear_probe", run.fraction, args.use_cpu,
                head_only_steps=head_only_steps(run, budget),
            )
        record = _transfer_record(run, budget, args, source, target, windows, metrics, pretrain_info, provenance)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2, default=float) + "\n")
        log(f"    test mse {record['mse']:.4f} mae {record['mae']:.4f} ({record['wall_time_s']:.1f} s) -> {record_path}")
        records.append(record)
    # The closed-form rows of each (pair, fraction), on the same windows as the networks.
    for source_name, target_name, fraction in dict.fromkeys((r.source, r.target, r.fraction) for r in runs):
        cell = TransferRun(source_name, target_name, "naive", "closed_form", fraction)
        records += _closed_form_records(cell, budget, args, dataset_facts(source_name), dataset_facts(target_name),
                                        results_dir, provenance, log)
    if records:
        (results_dir / "summary.md").write_text(summarise_results(results_dir))
    return records


def head_only_steps(run: TransferRun, budget: Budget) -> int:
    """The head-only steps of ``run``: ``HEAD_ONLY_FRACTION`` of the budget's fine-tuning steps for ``lp_ft`` (as the
    accuracy benchmark's head-first models), 0 otherwise."""
    if run.protocol != "lp_ft":
        return 0
    return max(1, min(budget.finetune_steps - 1, round(HEAD_ONLY_FRACTION * budget.finetune_steps)))


def _closed_form_records(run: TransferRun, budget: Budget, args: TransferArguments, source: tuple[str, int, int],
                         target: tuple[str, int, int], results_dir: Path, provenance: dict[str, str],
                         log) -> list[dict[str, Any]]:
    """The naive and linear-ridge records of ``run``'s pair, horizon and fraction (read back when they exist and
    ``args.overwrite`` is off; computed once per (pair, fraction): later runs of the same cell find them)."""
    from ..training import forecast_metrics
    from .baselines import LastValueLinearForecaster, fit_linear_ridge

    out = []
    splits = None
    for model in CLOSED_FORM:
        cell = TransferRun(run.source, run.target, model, "closed_form", run.fraction)
        path = results_dir / cell.record_name(args.seed, budget.context_length, budget.prediction_length)
        if path.is_file() and not args.overwrite:
            out.append(json.loads(path.read_text()))
            continue
        if splits is None:
            splits = _data_args(budget, run.target, args.data_dir, run.fraction).load()
        fit = fit_linear_ridge(splits) if model == "linear" else None  # on the few-shot train windows, λ on val
        forecaster = fit.model if fit else LastValueLinearForecaster.naive(budget.context_length,
                                                                            budget.prediction_length)
        metrics = forecast_metrics(forecaster, splits.test, splits.scaler, budget.eval_batch_size, None,
                                   budget.max_test_windows, desc="test", disable_tqdm=True)
        metrics["full_test_split"] = metrics["num_windows"] == len(splits.test)
        record = _transfer_record(cell, budget, args, source, target, len(splits.train),
                                  {"test": metrics, "wall_time_s": 0.0, "trainable_parameters": 0}, {}, provenance)
        if fit is not None:
            record["ridge_lambda"] = fit.ridge_lambda
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=float) + "\n")
        log(f"    {CLOSED_FORM[model]}: test mse {record['mse']:.4f} -> {path}")
        out.append(record)
    return out


def _checkpoint_facts(folder: Path) -> tuple[str, int, int]:
    """(name, channels, train windows) of a checkpoint source: the folder's name, its input channels and the
    univariate train windows its ``corpus.json`` counts (0 when it has none)."""
    from ..data import CORPUS_FILE

    config = json.loads((folder / "config.json").read_text())
    corpus = folder / CORPUS_FILE
    windows = json.loads(corpus.read_text()).get("total_windows", {}).get("train", 0) if corpus.is_file() else 0
    return folder.resolve().name, int(config.get("num_input_channels", 1)), int(windows)


def _checkpoint_pretraining(folder: Path, budget: Budget) -> dict[str, Any]:
    """The facts of a finished pre-training given as the source (``_pretraining``'s keys), after checking that its
    look-back is the budget's (the encoder reads windows of exactly that length)."""
    config = json.loads((folder / "config.json").read_text())
    if int(config.get("context_length", -1)) != budget.context_length:
        raise ValueError(f"The checkpoint {folder} reads look-backs of {config.get('context_length')} steps but the "
                         f"budget's is {budget.context_length}; add --context_length {config.get('context_length')}.")
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    return {"path": str(folder), "steps": metrics.get("steps"), "best_val_loss": metrics.get("best_val_loss"),
            "wall_time_s": None}


def _pretraining(run: TransferRun, budget: Budget, args: TransferArguments, work_dir: Path, commit: str,
                 log) -> dict[str, Any]:
    """The pre-training a run fine-tunes from: the finished one in its folder when made with the same model, source,
    seed, budget and commit (unless ``args.repretrain``), else a new one.

    Args:
        run: The cell (its model and source).
        budget: The matrix's budget.
        args: The matrix's arguments (seed, data folder, device, ``repretrain``).
        work_dir: The budget's work folder, which holds the pre-training folders.
        commit: The code's commit, part of what must match for a pre-training to be reused.
        log: Where progress lines go.

    Returns:
        The facts of the pre-training (``pretrain_run``'s: ``path``, ``steps``, ``best_val_loss``, ``wall_time_s``).
    """
    checkpoint = checkpoint_source(run.source)
    if checkpoint is not None:
        log(f"    starting from the given checkpoint {checkpoint} (no pre-training)")
        return _checkpoint_pretraining(checkpoint, budget)
    folder = work_dir / f"{run.model}-pretrain-{_slug(run.source)}-L{budget.context_length}-seed{args.seed}"
    identity = {"model": run.model, "source": run.source, "seed": args.seed, "budget": budget.to_dict(),
                "git_commit": commit}
    reused = None if args.repretrain else _finished_pretraining(folder, identity)
    if reused is not None:
        log(f"    reusing the pre-training in {folder} (same model, source, seed, budget and commit)")
        return reused
    info = pretrain_run(run.model, budget, run.source, args.data_dir, folder, args.seed, args.use_cpu)
    (folder / PRETRAIN_MARKER).write_text(json.dumps({**identity, "info": info}, indent=2, default=str) + "\n")
    return info


def _transfer_record(run: TransferRun, budget: Budget, args: TransferArguments, source: tuple[str, int, int],
                     target: tuple[str, int, int], windows: int, metrics: dict[str, Any],
                     pretrain_info: dict[str, Any], provenance: dict[str, str]) -> dict[str, Any]:
    """One run's JSON record.

    Args:
        run: The cell.
        budget: The matrix's budget.
        args: The matrix's arguments (seed, work folder).
        source: The source's (name, channels, train windows).
        target: The target's (name, channels, train windows).
        windows: The target train windows the run fine-tuned on.
        metrics: What ``finetune_run`` returned.
        pretrain_info: The facts of the pre-training (empty for ``scratch``).
        provenance: ``device``, ``git_commit`` and ``command``.

    Returns:
        The record. ``pretrained_checkpoint`` is relative to ``--work_dir`` (``portable_path``): a record names no
        folder of the machine it ran on.
    """
    test, val = metrics["test"], metrics.get("val") or {}
    return {
        "source_dataset": source[0],
        "target_dataset": target[0],
        "pair": f"{source[0]}->{target[0]}",
        "source_channels": source[1],
        "target_channels": target[1],
        "context_length": budget.context_length,
        "prediction_length": budget.prediction_length,
        "model": run.model,
        **({"himtm_defaults": HIMTM_DEFAULTS_VERSION} if run.model == "himtm" else {}),
        "protocol": run.protocol,
        "fraction": run.fraction,
        "fraction_selection": "last",
        "train_windows": windows,
        "mse": test["mse"],
        "mae": test["mae"],
        "mse_original_units": test.get("mse_original_units"),
        "mae_original_units": test.get("mae_original_units"),
        "test_windows": test.get("num_windows"),
        "full_test_split": test.get("full_test_split"),
        "val_mse": val.get("mse"),
        "val_mae": val.get("mae"),
        "best_step": metrics.get("best_step"),
        "stopped_early": metrics.get("stopped_early"),
        "head_only_steps": head_only_steps(run, budget),
        **({"forecast_look_back": metrics["forecast_look_back"]} if "forecast_look_back" in metrics else {}),
        "budget": budget.name,
        "budget_config": budget.to_dict(),
        "seed": args.seed,
        "epochs": metrics.get("epochs"),
        "finetune_steps": metrics.get("steps"),
        "pretrain_steps": pretrain_info.get("steps", 0),
        "pretrain_best_val_loss": pretrain_info.get("best_val_loss"),
        "pretrain_wall_time_s": pretrain_info.get("wall_time_s"),
        "wall_time_s": metrics.get("wall_time_s"),
        "trainable_parameters": metrics.get("trainable_parameters"),
        "encoder_tensors_loaded": metrics.get("encoder_tensors_loaded"),
        "pretrained_checkpoint": portable_path(pretrain_info.get("path"), args.work_dir),
        "device": provenance["device"],
        "git_commit": provenance["git_commit"],
        "command": provenance["command"],
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_COLUMNS = [(model, protocol) for model in MODELS for protocol in PROTOCOLS] + [(m, "closed_form") for m in CLOSED_FORM]
# Ratio columns: (label, numerator cell, denominator cell); supervised PatchTST is PatchTST trained from scratch.
_RATIOS = (
    ("HiMTM ft / HiMTM scratch", ("himtm", "finetune"), ("himtm", "scratch")),
    ("HiMTM ft / PatchTST sup.", ("himtm", "finetune"), ("patchtst", "scratch")),
    ("HiMTM lp_ft / HiMTM scratch", ("himtm", "lp_ft"), ("himtm", "scratch")),
    ("HiMTM zero-shot / HiMTM scratch", ("himtm", "zero_shot"), ("himtm", "scratch")),
    ("PatchTST ft / PatchTST sup.", ("patchtst", "finetune"), ("patchtst", "scratch")),
)


def _column_label(model: str, protocol: str) -> str:
    if protocol == "closed_form":
        return CLOSED_FORM.get(model, model)
    names = {"himtm": "HiMTM", "patchtst": "PatchTST"}
    return f"{names.get(model, model)} {'supervised' if model == 'patchtst' and protocol == 'scratch' else protocol}"


def transfer_table(records: list[dict[str, Any]]) -> list[str]:
    """The markdown table of transfer ``records``: one row per pair, horizon, fraction and seed; one test MSE column
    per (model, protocol) present, the closed-form rows beside them, and the ratios that say what pre-training buys
    (each where both of its cells exist)."""
    rows: dict[tuple, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in records:
        pair = r.get("pair") or f"{r['source_dataset']}->{r['target_dataset']}"
        key = (pair, r["prediction_length"], r["fraction"], r["seed"])
        rows.setdefault(key, {})[(r["model"], r["protocol"])] = r
    present = {cell for by_cell in rows.values() for cell in by_cell}
    columns = [c for c in _COLUMNS if c in present] + sorted(present - set(_COLUMNS))
    ratios = [(label, a, b) for label, a, b in _RATIOS if a in present and b in present]
    lines = [
        "| pair | H | fraction | seed | " + " | ".join(_column_label(*c) for c in columns)
        + "".join(f" | {label}" for label, _, _ in ratios) + " |",
        "|---|---|---|---|" + "---|" * (len(columns) + len(ratios)),
    ]
    for (pair, horizon, fraction, seed), by_cell in sorted(rows.items()):
        cells = [f"{by_cell[c]['mse']:.4f}" if c in by_cell else "" for c in columns]
        cells += [f"{by_cell[a]['mse'] / by_cell[b]['mse']:.3f}" if a in by_cell and b in by_cell else ""
                  for _, a, b in ratios]
        lines.append(f"| {pair} | {horizon} | {fraction:g} | {seed} | " + " | ".join(cells) + " |")
    return lines


TABLE_LEGEND = (
    "Test MSE on the target's standardised test split: pre-trained on the source, then fine-tuned (`finetune`; "
    f"`lp_ft`: the head alone for the first {HEAD_ONLY_FRACTION:.0%} of the steps, then everything) or linear-probed "
    "on the given fraction of the target's training windows (the most recent ones), or not trained on the target at "
    "all (`zero_shot`: the pre-training model reconstructs the masked horizon from the last look-back steps its "
    "window leaves, the same value in every fraction's row); `scratch` is the "
    "same network from a random start (for PatchTST: supervised PatchTST); the naive (last value) and linear "
    "(NLinear-style ridge) rows are fitted on the same windows and scored on the same test windows. A ratio below 1 "
    "means the pre-trained model has the lower error. A source of several datasets (joined by +) is a "
    "channel-independent corpus that leaves the target out. A source named after a pre-training folder is used as it "
    "was saved, and its corpus.json says what it saw: himtm-base's holds the train splits of all five benchmarks, "
    "the targets' included; himtm-base-without-X leaves X out."
)


def summarise_results(results_dir: str | Path) -> str:
    """``summary.md``: :func:`transfer_table` of every record under ``results_dir``."""
    records = [json.loads(p.read_text()) for p in sorted(Path(results_dir).rglob("*.json"))]
    records = [r for r in records if "mse" in r and "model" in r]
    if not records:
        return "No results yet.\n"
    budgets = sorted({r["budget"] for r in records})
    devices = sorted({r["device"] for r in records})
    commits = sorted({str(r.get("git_commit"))[:7] for r in records})
    lines = [
        f"# Transfer results (budget: {', '.join(budgets)})",
        "",
        f"{TABLE_LEGEND} Written by `scripts/transfer.py`; one JSON record per cell (with MAE, the command and the "
        f"budget) next to this file. Device(s): {', '.join(devices)}; commit(s): {', '.join(commits)}.",
        "",
        *transfer_table(records),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TransferArguments).parse_args_into_dataclasses(args=argv)
    if args.list_only:
        for run in plan_runs(args):
            print(run)
        return []
    command = " ".join(["python", "scripts/transfer.py", *(sys.argv[1:] if argv is None else argv)])
    return run_transfer(args, command=command)
