"""The ``himtm-base`` checkpoint: HiMTM pre-trained on the train splits of every local benchmark, with its model card
and the folder that ``scripts/push_to_hub.py`` would upload (``scripts/pretrain_base.py`` is the command).

What it does (:func:`run_base_pretraining`):

1. pre-trains :class:`~himtm_hf.HiMTMForPretraining` with :func:`himtm_hf.training.pretrain` on a multi-domain corpus
   (:func:`himtm_hf.data.load_pretraining_corpus`): look-back-only windows of the *train* splits of
   ``BaseCheckpointConfig.datasets``, every channel a univariate series, each dataset standardised by its own train
   statistics, at most ``max_windows_per_dataset`` univariate windows per dataset (evenly strided), validation on the
   val splits the same way. The model has ``num_input_channels=1``; it forecasts C channels as it is with
   ``HiMTMForPretraining.from_pretrained(folder, num_input_channels=C).forecast(history, H)``; fine-tune it with
   ``HiMTMForPrediction.from_pretrained(folder, num_input_channels=C, prediction_length=H)`` or
   ``scripts/finetune.py --pretrained_model_path <folder>``;
2. writes the model card ``README.md`` into the run folder (:func:`write_base_model_card`: corpus, budget, commit,
   machine, and the summary of the run's pre-training diagnostics in ``metrics.json`` when there is one);
3. stages the upload folder with :func:`himtm_hf.hub.publish` as a dry run (default ``<output_dir>-hub``), with this
   card as the card (``card_template``), so the card that would be uploaded is the one in the run folder.

``--leave_out ETTh1`` gives the leave-one-out checkpoint (default folder ``outputs/himtm-base-without-ETTh1``) used to
measure transfer to a dataset the encoder never saw.

Default corpus: ETTh1, ETTh2, ETTm1, ETTm2 and weather, the sets this project benchmarks at L=512. exchange_rate and
national_illness are left out by default (add them with ``--datasets``): ILI is weekly with 966 rows, so at L=512 it
has 165 train windows and is benchmarked with a 104-step look-back, which this checkpoint cannot read; exchange
rates are daily near-random walks, a domain far from the others, and are not among the benchmarks the checkpoint is
evaluated on.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import CORPUS_FILE, split_dataset_list

__all__ = [
    "BASE_DATASETS",
    "BaseCheckpointConfig",
    "BaseRunResult",
    "base_model_card_text",
    "default_base_output_dir",
    "run_base_pretraining",
    "write_base_model_card",
]

logger = logging.getLogger(__name__)

BASE_DATASETS = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather")
"""The default corpus of ``himtm-base`` (every local benchmark used at L=512; see the module docstring)."""

CARD_FILE = "README.md"
DIAGNOSTIC_KEYS = ("skill", "hierarchy", "linear_probe_mse")
"""Keys of a pre-training ``metrics.json`` shown first on the card (any other key follows)."""


@dataclass
class BaseCheckpointConfig:
    """Everything that sets the ``himtm-base`` run: data, budget, folders (``scripts/pretrain_base.py`` flags).

    The model is ``HiMTMConfig``'s defaults unless ``ModelArguments`` flags (``--d_model 64``, ...) say otherwise.
    """

    datasets: str = field(
        default=",".join(BASE_DATASETS),
        metadata={"help": "Comma-separated datasets of the corpus (benchmark names, files or Hub ids)."},
    )
    leave_out: str | None = field(
        default=None, metadata={"help": "Leave these datasets out (leave-one-out checkpoint), e.g. ETTh1."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder with the benchmark files."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Run folder (default outputs/himtm-base, or outputs/himtm-base-without-<names> with "
                          "--leave_out)."},
    )
    dry_run_dir: str | None = field(
        default=None, metadata={"help": "Where the upload folder is staged (default <output_dir>-hub)."}
    )
    repo_id: str | None = field(
        default=None, metadata={"help": "Hub repo id the card names (default '<your-org>/<folder name>')."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an earlier run in output_dir and an earlier dry run in dry_run_dir."}
    )
    context_length: int = field(default=512, metadata={"help": "Look-back L (fine-tuning must use the same)."})
    prediction_length: int = field(
        default=96, metadata={"help": "Stored in the config only; fine-tuning sets its own horizon."}
    )
    max_windows_per_dataset: int | None = field(
        default=60_000,
        metadata={"help": "Univariate windows per dataset and split (evenly strided); 60000 keeps all of ETTh "
                          "(56903 at L=512) and subsamples ETTm (238343) and weather (763896)."},
    )
    max_steps: int = field(default=10_000, metadata={"help": "Optimiser steps."})
    per_device_train_batch_size: int = field(default=512, metadata={"help": "Univariate windows per step and process."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine, warm-up)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the steps spent warming up."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_every_steps: int = field(default=500, metadata={"help": "Validate every N steps."})
    max_eval_windows: int | None = field(default=8192, metadata={"help": "Validation windows (evenly strided)."})
    per_device_eval_batch_size: int = field(default=1024, metadata={"help": "Validation windows per batch."})
    metric_for_best_model: str = field(
        default="reconstruction_loss",
        metadata={"help": "Validation loss that picks the saved weights (see docs/training.md)."},
    )
    early_stopping_patience: int = field(default=0, metadata={"help": "0: spend the whole step budget."})
    save_steps: int = field(default=1000, metadata={"help": "Checkpoint every N steps (resume with "
                                                            "--resume_from_checkpoint latest)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    seed: int = field(default=42, metadata={"help": "Seed of weights, data order and masks."})
    mixed_precision: str = field(default="auto", metadata={"help": "auto, no, bf16 or fp16."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is available."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    logging_steps: int = field(default=50, metadata={"help": "Log the training loss every N steps."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})
    license: str = field(default="apache-2.0", metadata={"help": "License of the weights (card metadata)."})

    def data_arguments(self) -> Any:
        """The run's `DataArguments` (the corpus; the config's context and prediction length)."""
        from .training import DataArguments

        return DataArguments(dataset=self.datasets, data_dir=self.data_dir, context_length=self.context_length,
                             prediction_length=self.prediction_length, leave_out=self.leave_out,
                             max_windows_per_dataset=self.max_windows_per_dataset)

    def pretrain_arguments(self, output_dir: Path) -> Any:
        """The run's `PretrainArguments` (the budget)."""
        from .training import PretrainArguments

        return PretrainArguments(
            output_dir=str(output_dir), overwrite_output_dir=self.overwrite_output_dir, max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size, learning_rate=self.learning_rate,
            warmup_ratio=self.warmup_ratio, weight_decay=self.weight_decay, eval_every_steps=self.eval_every_steps,
            max_eval_windows=self.max_eval_windows, per_device_eval_batch_size=self.per_device_eval_batch_size,
            metric_for_best_model=self.metric_for_best_model, early_stopping_patience=self.early_stopping_patience,
            save_steps=self.save_steps, save_total_limit=self.save_total_limit,
            resume_from_checkpoint=self.resume_from_checkpoint, seed=self.seed, mixed_precision=self.mixed_precision,
            use_cpu=self.use_cpu, num_workers=self.num_workers, logging_steps=self.logging_steps,
            disable_tqdm=self.disable_tqdm,
        )


@dataclass
class BaseRunResult:
    """What :func:`run_base_pretraining` wrote (on the main process; `card` and `dry_run` are None elsewhere)."""

    output_dir: Path
    card: Path | None
    dry_run: Any | None  # himtm_hf.hub.PublishResult


def default_base_output_dir(leave_out: str | None) -> Path:
    """``outputs/himtm-base``, or ``outputs/himtm-base-without-<names>`` for a leave-out checkpoint."""
    if not leave_out or not leave_out.strip():
        return Path("outputs/himtm-base")
    return Path("outputs/himtm-base-without-" + "-".join(split_dataset_list(leave_out)))


def _check_dry_run_dir(dry_run_dir: Path, overwrite: bool) -> None:
    """Refuses, before hours of training, a dry-run folder that `himtm_hf.hub.publish` would refuse afterwards."""
    from .output_folders import read_marker

    if not dry_run_dir.exists() or (dry_run_dir.is_dir() and not any(dry_run_dir.iterdir())):
        return
    marker = read_marker(dry_run_dir) if dry_run_dir.is_dir() else None
    if marker is None or marker.get("kind") != "hub_upload":
        raise FileExistsError(
            f"--dry_run_dir {dry_run_dir} exists and is not an earlier dry run of push_to_hub; it would be refused "
            "after the pre-training. Choose another --dry_run_dir, or move the folder."
        )
    if not overwrite:
        raise FileExistsError(
            f"--dry_run_dir {dry_run_dir} holds an earlier dry run; pass --overwrite_output_dir to replace it (and the "
            "run folder), or choose another --dry_run_dir."
        )


def run_base_pretraining(config: BaseCheckpointConfig, model_args: Any | None = None) -> BaseRunResult:
    """Pre-trains the base checkpoint, writes its card and stages its upload folder (see the module docstring)."""
    from accelerate import PartialState

    from .hub import PublishArguments, publish
    from .training import ModelArguments, pretrain

    if len(split_dataset_list(config.datasets)) < 2:
        raise ValueError(
            f"--datasets {config.datasets!r} names one dataset; the base checkpoint is a multi-domain corpus (give "
            "several, comma-separated). For one dataset use scripts/pretrain.py."
        )
    model_args = model_args if model_args is not None else ModelArguments()
    model_args.context_length = config.context_length  # the one flag for windows and model (init=False fields)
    model_args.prediction_length = config.prediction_length
    output_dir = Path(config.output_dir) if config.output_dir else default_base_output_dir(config.leave_out)
    dry_run_dir = Path(config.dry_run_dir) if config.dry_run_dir else output_dir.with_name(output_dir.name + "-hub")
    _check_dry_run_dir(dry_run_dir, config.overwrite_output_dir)
    folder = pretrain(model_args, config.data_arguments(), config.pretrain_arguments(output_dir))
    if not PartialState().is_main_process:
        return BaseRunResult(folder, None, None)
    card = write_base_model_card(folder, config)
    dry_run = publish(PublishArguments(
        output_dir=str(folder), repo_id=config.repo_id, dry_run=True, dry_run_dir=str(dry_run_dir),
        overwrite=config.overwrite_output_dir, card_template=str(card), license=config.license,
        dataset_ids=[d["name"] for d in _read_json(folder / CORPUS_FILE, {}).get("datasets", [])] or None,
    ))
    return BaseRunResult(folder, card, dry_run)


# ----------------------------------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path, default: Any) -> Any:
    """The content of a JSON file, or `default` if it is missing or unreadable (the card must not fail on it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _read_log(folder: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
    if isinstance(value, list):
        shown = ", ".join(_format_value(v) for v in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flat_scalars(value: Any, prefix: str, depth: int = 0) -> list[tuple[str, str]]:
    """`(name, formatted value)` rows of a JSON value: nested mappings flattened (two levels), lists shortened."""
    if isinstance(value, dict):
        if depth >= 2:
            return [(prefix, f"{{{len(value)} entries}}")]
        rows = []
        for key, item in value.items():
            rows.extend(_flat_scalars(item, f"{prefix}.{key}" if prefix else str(key), depth + 1))
        return rows
    return [(prefix, _format_value(value))]


def _list_of_records_rows(key: str, value: list[Any]) -> list[tuple[str, str]]:
    """One row per record of a list of mappings (e.g. one per hierarchy), its scalar entries inline."""
    rows = []
    for index, record in enumerate(value[:8]):
        cells = ", ".join(f"{k} {_format_value(v)}" for k, v in record.items() if not isinstance(v, (dict, list)))
        rows.append((f"{key}[{index}]", cells))
    return rows


def diagnostics_rows(metrics: Any, max_rows: int = 40) -> list[tuple[str, str]]:
    """The rows of the card's diagnostics table from a pre-training ``metrics.json``, read defensively.

    The diagnostics are the ``"diagnostics"`` mapping when there is one (the layout of
    ``himtm_hf.training.pretrain``), else the file's top level; the keys of :data:`DIAGNOSTIC_KEYS` come first, the
    per-validation ``history`` is left out (it stays in ``metrics.json``), lists of mappings (per hierarchy) give one
    row per entry. Nothing for a missing, non-mapping or diagnostics-free file.
    """
    if not isinstance(metrics, dict):
        return []
    nested = metrics.get("diagnostics", metrics)
    source = nested if isinstance(nested, dict) else {}
    # A key of DIAGNOSTIC_KEYS may sit at the top level beside the nested mapping.
    source = {**{k: metrics[k] for k in DIAGNOSTIC_KEYS if k in metrics and source is not metrics}, **source}
    ordered = [k for k in DIAGNOSTIC_KEYS if k in source]
    ordered += [k for k in source if k not in DIAGNOSTIC_KEYS and k != "history"]
    rows: list[tuple[str, str]] = []
    for key in ordered:
        value = source[key]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows.extend(_list_of_records_rows(str(key), value))
        else:
            rows.extend(_flat_scalars(value, str(key)))
    return rows[:max_rows]


def _card_metadata(datasets: list[str], name: str, license: str) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="transformers", pipeline_tag="time-series-forecasting", license=license,
        tags=["time-series", "time-series-forecasting", "himtm", "himtm-hf", "self-supervised", "pretraining",
              "masked-time-series-modeling", "custom_code"],
        datasets=datasets or None, model_name=name,
    )
    return data.to_yaml()


def _corpus_section(corpus: dict[str, Any]) -> list[str]:
    sampling = corpus.get("sampling") or {}
    cap = sampling.get("max_windows_per_dataset")
    lines = [
        "## Pre-training data", "",
        "Train splits only (validation on the val splits), by each dataset's standard protocol (ETTh: 12/4/4 months, "
        "ETTm: the same at 15 minutes, others 70/10/20 %). Look-back-only windows of "
        f"{corpus.get('context_length')} rows, stride 1; every channel of every window is a univariate series "
        "(channel-independent), and each dataset is standardised with the mean/std of its own train split "
        "(`corpus.json` holds them). " + (
            f"Each dataset contributes at most {cap} univariate windows per split (an evenly strided subset over its "
            "windows and channels), so that no dataset dominates." if cap is not None else
            "All windows of all datasets are concatenated (a dataset weighs by its windows x channels)."), "",
        "| dataset | channels | train windows used / available | val windows used / available |",
        "|---|---:|---:|---:|",
    ]
    for member in corpus.get("datasets") or []:
        windows = member.get("windows") or {}
        cells = [f"{(windows.get(s) or {}).get('used', '?')} / {(windows.get(s) or {}).get('available', '?')}"
                 for s in ("train", "val")]
        lines.append(f"| {member.get('name')} | {member.get('num_channels')} | {cells[0]} | {cells[1]} |")
    total = corpus.get("total_windows") or {}
    lines += ["", f"In all {total.get('train', '?')} train and {total.get('val', '?')} val univariate windows."]
    if corpus.get("left_out"):
        lines += ["", f"Left out (leave-one-out checkpoint): **{', '.join(corpus['left_out'])}**; the encoder never "
                      "saw any of its rows."]
    return lines + [""]


def _budget_section(folder: Path, run_args: dict[str, Any]) -> list[str]:
    train = run_args.get("train_args") or {}
    env = run_args.get("environment") or {}
    log = _read_log(folder)
    steps = max((int(r["step"]) for r in log if r.get("split") == "train" and isinstance(r.get("step"), int)),
                default=None)
    best = next((r for r in reversed(log) if r.get("split") == "best"), {})
    processes = int(env.get("num_processes") or 1)
    global_batch = (int(train.get("per_device_train_batch_size") or 0) * processes
                    * int(train.get("gradient_accumulation_steps") or 1))
    lines = [
        "## Budget", "",
        f"- Optimiser steps: {steps if steps is not None else 'unknown'} of max_steps {train.get('max_steps')}; "
        f"global batch {global_batch} univariate windows ({processes} process(es)); "
        f"{(steps or 0) * global_batch:,} windows seen.",
        f"- AdamW, peak learning rate {train.get('learning_rate')}, {train.get('lr_scheduler_type')} schedule, "
        f"warm-up ratio {train.get('warmup_ratio')}, weight decay {train.get('weight_decay')}, seed {train.get('seed')}, "
        f"mixed precision {env.get('mixed_precision')}.",
        f"- Kept weights: best validation `{train.get('metric_for_best_model')}`"
        + (f" = {_format_value(best.get('best_val_loss'))} at step {best.get('best_step')}." if best else "."),
    ]
    return lines + [""]


def _model_section(config: dict[str, Any], num_parameters: int | None) -> list[str]:
    keys = ("context_length", "patch_length", "num_hierarchies", "d_model", "num_layers", "num_attention_heads",
            "ffn_dim", "decoder_num_layers", "mask_ratio", "teacher_type", "scaling")
    shown = ", ".join(f"{k} {_format_value(config[k])}" for k in keys if k in config)
    count = f" {num_parameters:,} parameters;" if num_parameters else ""
    return ["## Model", "", f"`HiMTMForPretraining`,{count} num_input_channels 1; {shown}.", ""]


def _num_parameters(folder: Path) -> int | None:
    try:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            return sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    except Exception:  # the count is decoration: a card is still written without it
        return None


def _diagnostics_section(folder: Path) -> list[str]:
    path = folder / "metrics.json"
    lines = ["## Pre-training diagnostics", ""]
    if not path.is_file():
        return lines + ["This run wrote no pre-training diagnostics (`metrics.json`).", ""]
    metrics = _read_json(path, None)
    rows = diagnostics_rows(metrics)
    if not rows:
        return lines + ["`metrics.json` holds no readable diagnostics.", ""]
    lines += ["Of the kept weights, from the run's `metrics.json` (per-hierarchy entries finest first; the per-validation "
              "history is in that file and in `pretraining_diagnostics.png`):", "", "| diagnostic | value |", "|---|---|"]
    lines += [f"| `{name}` | {value} |" for name, value in rows]
    return lines + [""]


def _provenance_section(run_args: dict[str, Any]) -> list[str]:
    from .benchmarks.records import device_name, git_commit

    env = run_args.get("environment") or {}
    return [
        "## Provenance", "",
        f"- Code: himtm-hf commit `{git_commit()}`; torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"accelerate {env.get('accelerate')}.",
        f"- Machine: {device_name()} ({platform.system()} {platform.machine()}), {env.get('num_processes', 1)} "
        f"process(es), {env.get('distributed_type')}.",
        f"- Card written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.", "",
    ]


def _usage_section(repo_id: str, context_length: Any) -> list[str]:
    return [
        "## How to use", "",
        "It forecasts as it is, with no training on your series: `forecast` masks the coarsest units that cover the "
        "horizon and reads what the pre-trained decoder reconstructs there (no new parameters; the look-back it "
        f"reads is the {context_length}-step window less those units). HiMTM is channel-independent, so the "
        "1-channel checkpoint serves any channel count:", "",
        "```python",
        "import torch",
        "from himtm_hf import HiMTMForPretraining",
        "",
        f'model = HiMTMForPretraining.from_pretrained("{repo_id}", num_input_channels=7).eval()',
        "with torch.no_grad():",
        "    forecast = model.forecast(history, prediction_length=96).prediction_outputs  # history: (batch, T, 7)",
        "```", "",
        "A DataFrame (or CSV) with any value columns forecasts the same way, each column as its own series and "
        "standardised with its own history:", "",
        "```python",
        "from himtm_hf.pipeline import HiMTMForecastPipeline",
        "",
        f'forecast = HiMTMForecastPipeline.from_pretrained("{repo_id}")(df, timestamp_column="date", horizon=96)',
        "```", "",
        "For another head, or to train on your data, fine-tune a forecaster from it (the CSA-FT head is new):", "",
        "```python",
        "from himtm_hf import HiMTMForPrediction",
        "",
        f'model = HiMTMForPrediction.from_pretrained("{repo_id}", prediction_length=96, num_input_channels=7)',
        "```", "",
        "or with the `himtm-hf` scripts (the look-back must stay "
        f"{context_length}; each target is standardised by its own train split, as in pre-training):", "",
        "```bash",
        f"python scripts/finetune.py --dataset ETTh1 --prediction_length 96 --context_length {context_length} \\",
        f"    --pretrained_model_path {repo_id} --output_dir outputs/ft-etth1-96",
        "```", "",
    ]


def _jinja_safe(text: str) -> str:
    """The card is also the Jinja template of the dry run (`card_template`): break any Jinja delimiter (a dataset or
    column name could hold one) so the text renders as it is."""
    for delimiter in ("{{", "{%", "{#", "}}", "%}", "#}"):
        text = text.replace(delimiter, delimiter[0] + "\u200b" + delimiter[1])
    return text


def base_model_card_text(folder: str | Path, config: BaseCheckpointConfig | None = None,
                         repo_id: str | None = None) -> str:
    """The model card (``README.md``) of a base pre-training run folder: metadata, corpus (``corpus.json``), budget
    and kept weights (``run_args.json``, ``log.jsonl``), model, diagnostics (``metrics.json``, if any), commit,
    machine, usage and limitations. Missing or unreadable optional files leave their part out; no local path is
    written (the card is published)."""
    from .hub import CITATION_BIBTEX

    folder = Path(folder)
    if not (folder / CORPUS_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {CORPUS_FILE}: it is not a multi-domain pre-training run (scripts/pretrain_base.py or "
            "scripts/pretrain.py --dataset A,B,... write one)."
        )
    corpus = _read_json(folder / CORPUS_FILE, {})
    run_args = _read_json(folder / "run_args.json", {})
    run_args = run_args if isinstance(run_args, dict) else {}
    model_config = _read_json(folder / "config.json", {})
    name = (repo_id or (config.repo_id if config else None) or folder.resolve().name).split("/")[-1]
    repo = repo_id or (config.repo_id if config else None) or f"<your-org>/{name}"
    names = [str(m.get("name")) for m in corpus.get("datasets") or []]
    license = config.license if config else "apache-2.0"
    lines = [
        "---", _card_metadata(names, name, license).strip(), "---", "",
        f"# {name}", "",
        "A **HiMTM** encoder pre-trained (masked patches, DED decoder, HSD self-distillation) on the train splits of "
        f"**{', '.join(names)}** at once, channel-independently. HiMTM (Zhao et al., CIKM 2024, "
        "[arXiv 2401.05012](https://arxiv.org/abs/2401.05012)); this checkpoint comes from `himtm-hf`, an independent "
        "re-implementation (no official code is public).", "",
        *_usage_section(repo, corpus.get("context_length")),
        *_corpus_section(corpus),
        *_budget_section(folder, run_args),
        *_model_section(model_config, _num_parameters(folder)),
        *_diagnostics_section(folder),
        *_provenance_section(run_args),
        "## Limitations", "",
        "- Pre-trained on the listed benchmarks only; behaviour on other domains and sampling rates is not "
        "established. Its zero-shot forecast reconstructs the masked future; score it against a forecaster "
        "fine-tuned on your data (and a linear baseline) before relying on it.",
        "- Test splits were never read; val splits were used to pick the kept weights.",
        "- The benchmark data keep their own licenses (e.g. ETT: CC BY-ND 4.0).", "",
        "## Citation", "", "```bibtex", CITATION_BIBTEX, "```", "",
    ]
    return _jinja_safe("\n".join(lines))


def write_base_model_card(folder: str | Path, config: BaseCheckpointConfig | None = None,
                          repo_id: str | None = None) -> Path:
    """Writes ``<folder>/README.md`` (:func:`base_model_card_text`) under the run folder's lock, adding it to the
    folder's marker so that ``--overwrite_output_dir`` removes it with the run; returns its path."""
    from .output_folders import claim_output_dir
    from .training.loop import RUN_KIND

    folder = Path(folder)
    text = base_model_card_text(folder, config, repo_id)
    with claim_output_dir(folder, kind=RUN_KIND, written=(CARD_FILE,), resume=True):
        (folder / CARD_FILE).write_text(text, encoding="utf-8")
    return folder / CARD_FILE
