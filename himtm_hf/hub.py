"""Publishing trained HiMTM runs to the Hugging Face Hub, and their model cards.

A *trained output folder* (written by :mod:`himtm_hf.training`) holds ``config.json`` (with ``auto_map``),
``model.safetensors``, the model code (``configuration_himtm.py``, ``modeling_himtm.py``), ``scaler.json``,
``run_args.json``, ``metrics.json``, ``log.jsonl``, ``forecast_plot.png`` and ``checkpoints/``.

:func:`stage_upload_folder` turns it into the exact folder that goes to the Hub:

* allow-listed files only: config, safetensors weights, model code, scaler, metrics, run arguments, plots and a
  generated model card (``README.md``). ``checkpoints/`` and logs are left out unless asked for; pickled files
  (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``) are never published;
* ``config.json`` gets an ``auto_map`` (and the code files are copied from this package) if the folder lacks
  them, so that ``trust_remote_code=True`` loading works without ``himtm-hf`` installed;
* the staged JSON files (``run_args.json``, ``metrics.json``, ...) carry no path of this machine: absolute paths
  are made relative to the run folder or cut to their last name (:func:`strip_machine_paths`);
* the card is rendered from ``model_cards/template.md`` with the run's ``metrics.json`` and ``run_args.json``
  (see :func:`render_model_card`); its metadata carries a ``model-index`` with MSE/MAE per dataset and horizon.

:func:`publish` validates the repo id with ``huggingface_hub``'s own validator, then either uploads it
(``create_repo`` + ``upload_folder``) or, for a dry run, writes it to a local folder without touching the network
(under the rules of :mod:`himtm_hf.output_folders`: an existing folder is replaced only if an earlier dry run
made it). :func:`populate_hf_cache` lays a folder out as a Hub cache entry
(``models--org--name/{blobs,refs,snapshots}``), so that ``from_pretrained("org/name")`` works offline (e.g. on an
air-gapped machine, or in tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from .modeling_himtm import AUTO_MAP
from .output_folders import claim_output_dir

__all__ = [
    "AUTO_CLASS_BY_ARCHITECTURE",
    "CITATION_BIBTEX",
    "DEFAULT_TEMPLATE_PATH",
    "PublishArguments",
    "PublishResult",
    "RunResult",
    "build_model_card_data",
    "check_repo_id",
    "load_run_results",
    "populate_hf_cache",
    "publish",
    "render_model_card",
    "select_files",
    "stage_upload_folder",
    "strip_machine_paths",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE_PATH = PROJECT_ROOT / "model_cards" / "template.md"
"""The model card template (a Jinja template for ``huggingface_hub.ModelCard.from_template``)."""

PACKAGE_DIR = Path(__file__).resolve().parent
CODE_FILES = ("configuration_himtm.py", "modeling_himtm.py")

AUTO_CLASS_BY_ARCHITECTURE = {
    "HiMTMForPrediction": "AutoModelForTimeSeriesPrediction",
    "HiMTMForPretraining": "AutoModelForPreTraining",
    "HiMTMModel": "AutoModel",
}

# Files published by default (top level of the output folder).
_CORE_FILES = ("config.json",)
_OPTIONAL_FILES = ("scaler.json", "corpus.json", "metrics.json", "run_args.json", "generation_config.json")
_LOG_PATTERNS = ("log.jsonl", "*.log", "trainer_state.json", "all_results.json", "train_results.json",
                 "eval_results.json")
_LOG_DIRS = ("runs", "logs")
_CHECKPOINT_DIRS = ("checkpoints",)
_NEVER = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # pickles can execute code on load
_LFS_SUFFIXES = (".safetensors", ".png", ".jpg", ".jpeg", ".parquet", ".gz", ".zip", ".npy", ".npz")

CITATION_BIBTEX = """@inproceedings{zhao2024himtm,
  title     = {HiMTM: Hierarchical Multi-Scale Masked Time Series Modeling with Self-Distillation for
               Long-Term Forecasting},
  author    = {Zhao, Shubao and Jin, Ming and Hou, Zhaoxiang and Yang, Chengyi and Li, Zengxiang and
               Wen, Qingsong and Wang, Yi},
  booktitle = {Proceedings of the 33rd ACM International Conference on Information and Knowledge
               Management (CIKM '24)},
  pages     = {3352--3362},
  year      = {2024},
  eprint    = {2401.05012},
  archivePrefix = {arXiv}
}"""


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PublishArguments:
    """Arguments of ``scripts/push_to_hub.py`` (parsed with ``transformers.HfArgumentParser``)."""

    output_dir: str = field(metadata={"help": "Trained output folder (config.json, model.safetensors, ...)."})
    repo_id: str | None = field(
        default=None,
        metadata={"help": "Hub repo id 'org/name'. Required for an upload; for a dry run it names the card."},
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Write the folder that would be uploaded to --dry_run_dir; no network."}
    )
    dry_run_dir: str | None = field(
        default=None, metadata={"help": "Where a dry run writes the folder (default: '<output_dir>-hub')."}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace an earlier dry run in --dry_run_dir (the files its .himtm-run.json marker lists; "
                          "a folder without that marker is never written into)."},
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to upload to (default: main)."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})
    commit_message: str = field(default="Upload HiMTM model", metadata={"help": "Commit message."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token; default: the one saved by `hf auth login` / HF_TOKEN."}
    )
    include_checkpoints: bool = field(default=False, metadata={"help": "Also upload checkpoints/."})
    include_logs: bool = field(default=False, metadata={"help": "Also upload log.jsonl and other logs."})
    include_plots: bool = field(default=True, metadata={"help": "Upload top-level *.png plots."})
    license: str = field(default="apache-2.0", metadata={"help": "License of the published weights (card)."})
    card_template: str | None = field(
        default=None, metadata={"help": "Jinja model card template (default: model_cards/template.md)."}
    )
    dataset_ids: list[str] | None = field(
        default=None,
        metadata={"help": "Hub dataset ids for the card's `datasets` metadata (default: the run's dataset names)."},
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Repo id of the pre-trained checkpoint this model was fine-tuned from (card metadata)."},
    )
    verify: bool = field(
        default=True, metadata={"help": "Load the staged folder once to check that config and weights match."}
    )


@dataclass
class PublishResult:
    """What :func:`publish` did."""

    folder: Path
    files: list[str]
    skipped: list[str]
    notes: list[str]
    dry_run: bool
    repo_id: str | None = None
    url: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            ("Dry run: wrote " if self.dry_run else f"Uploaded to {self.url or self.repo_id} from ") + str(self.folder)
        ]
        lines.append(f"Files ({len(self.files)}):")
        for name in self.files:
            lines.append(f"  {name}  ({self.sizes.get(name, 0):,} bytes)")
        if self.skipped:
            lines.append(f"Left out ({len(self.skipped)}): " + ", ".join(self.skipped))
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Run results (metrics.json) and run arguments (run_args.json)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """Test (and validation) metrics of one dataset and horizon."""

    dataset: str
    prediction_length: int
    context_length: int | None
    mse: float
    mae: float
    mse_original_units: float | None = None
    mae_original_units: float | None = None
    num_windows: int | None = None
    val_mse: float | None = None
    val_mae: float | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _as_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _result_from_record(record: Mapping[str, Any], source: str) -> RunResult:
    test = record.get("test")
    if not isinstance(test, Mapping) or "mse" not in test or "mae" not in test:
        raise ValueError(
            f"{source}: expected a 'test' entry with 'mse' and 'mae' (the layout written by himtm_hf.training), "
            f"got keys {sorted(record)}."
        )
    if "dataset" not in record or "prediction_length" not in record:
        raise ValueError(f"{source}: 'dataset' and 'prediction_length' are required, got keys {sorted(record)}.")
    val = record.get("val") if isinstance(record.get("val"), Mapping) else {}
    context = record.get("context_length")
    return RunResult(
        dataset=str(record["dataset"]),
        prediction_length=int(record["prediction_length"]),
        context_length=int(context) if context is not None else None,
        mse=float(test["mse"]),
        mae=float(test["mae"]),
        mse_original_units=_as_float(test.get("mse_original_units")),
        mae_original_units=_as_float(test.get("mae_original_units")),
        num_windows=int(test["num_windows"]) if test.get("num_windows") is not None else None,
        val_mse=_as_float(val.get("mse")),
        val_mae=_as_float(val.get("mae")),
    )


def load_run_results(metrics: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any]) -> list[RunResult]:
    """Parses ``metrics.json`` (a path, a folder holding it, or its loaded content).

    Accepted layouts: one run ``{"dataset", "prediction_length", "context_length", "test": {...}, "val": {...}}``,
    a list of such records, or ``{"results": [...]}``.
    """
    source = "metrics"
    if isinstance(metrics, (str, os.PathLike)):
        path = Path(metrics)
        if path.is_dir():
            path = path / "metrics.json"
        source = str(path)
        metrics = _read_json(path)
    if isinstance(metrics, Mapping) and "results" in metrics and "test" not in metrics:
        metrics = metrics["results"]
    records = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    return [_result_from_record(r, source) for r in records]


def _has_test_results(metrics: Any) -> bool:
    """Whether a loaded metrics.json holds forecasting results (the layouts `load_run_results` reads)."""
    if isinstance(metrics, Mapping):
        return "test" in metrics or "results" in metrics
    return isinstance(metrics, list) and bool(metrics)


def _flatten(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Nested sections (``model_args``, ``data_args``, ...) merged into one mapping; later keys win."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


_HIDDEN_ARGS = {"output_dir", "overwrite_output_dir", "disable_tqdm", "resume_from_checkpoint", "data_dir",
                "logging_steps", "num_workers", "ddp_find_unused_parameters", "token", "hub_token"}
_ARG_SECTIONS = ("model_args", "data_args", "train_args")


def _hyperparameters(run_args: Mapping[str, Any]) -> dict[str, Any]:
    """The run arguments worth showing on a card: the given (non-null) values of the argument sections (or of a
    flat mapping), without local paths and logging switches."""
    sections = [run_args[k] for k in _ARG_SECTIONS if isinstance(run_args.get(k), Mapping)]
    if not sections:
        sections = [{k: v for k, v in run_args.items() if not isinstance(v, Mapping)}]
    shown: dict[str, Any] = {}
    for section in sections:
        for key, value in section.items():
            if value is None or key in _HIDDEN_ARGS or isinstance(value, Mapping):
                continue
            if isinstance(value, str) and (value.startswith("/") or value.startswith("~")):
                value = Path(value).name  # local paths mean nothing on the Hub
            shown[key] = value
    return shown


def _lookup(flat: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if flat.get(name) not in (None, ""):
            return flat[name]
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------------


def _dataset_id(name: str) -> str:
    return name


def build_model_card_data(
    results: Sequence[RunResult],
    model_name: str,
    license: str = "apache-2.0",
    dataset_ids: Sequence[str] | None = None,
    base_model: str | None = None,
    extra_tags: Iterable[str] = (),
):
    """The card's YAML metadata: library, pipeline tag, tags, datasets, license and a ``model-index`` holding the
    test MSE/MAE (standardised units, the benchmark convention) per dataset and horizon.

    ``library_name`` is ``transformers``: the checkpoint loads with plain ``transformers`` (``trust_remote_code``,
    code shipped in the repo), so the Hub shows the right "Use this model" snippet; the ``custom_code`` and
    ``himtm-hf`` tags say that the code comes with the repo / the package.
    """
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = []
    for r in results:
        dataset_config = f"context_{r.context_length}_horizon_{r.prediction_length}"
        args = {"prediction_length": r.prediction_length}
        if r.context_length is not None:
            args["context_length"] = r.context_length
        common = dict(
            task_type="time-series-forecasting",
            task_name=f"Long-term forecasting, horizon {r.prediction_length}",
            dataset_type=_dataset_id(r.dataset),
            dataset_name=r.dataset,
            dataset_config=dataset_config,
            dataset_split="test",
            dataset_args=args,
        )
        eval_results.append(EvalResult(**common, metric_type="mse", metric_name="MSE (standardised)",
                                       metric_value=round(r.mse, 6)))
        eval_results.append(EvalResult(**common, metric_type="mae", metric_name="MAE (standardised)",
                                       metric_value=round(r.mae, 6)))
    datasets = list(dataset_ids) if dataset_ids else sorted({_dataset_id(r.dataset) for r in results})
    tags = ["time-series", "time-series-forecasting", "himtm", "himtm-hf", "self-supervised",
            "masked-time-series-modeling", "custom_code", *extra_tags]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="time-series-forecasting",
        license=license,
        tags=list(dict.fromkeys(tags)),
        datasets=datasets or None,
        metrics=["mse", "mae"],
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def _config_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("context_length", "prediction_length", "num_input_channels", "patch_length", "num_hierarchies",
            "d_model", "num_layers", "num_attention_heads", "ffn_dim", "mask_ratio", "teacher_type",
            "teacher_input", "scaling", "head_type", "csa_num_layers", "csa_attention", "freeze_encoder", "use_hmt",
            "use_ded", "use_hsd", "use_csa")
    return {k: config[k] for k in keys if k in config}


def render_model_card(
    folder: str | os.PathLike[str],
    repo_id: str | None = None,
    template_path: str | os.PathLike[str] | None = None,
    license: str = "apache-2.0",
    dataset_ids: Sequence[str] | None = None,
    base_model: str | None = None,
):
    """Renders the model card (``huggingface_hub.ModelCard``) of a trained output folder.

    Reads ``config.json`` (required), ``metrics.json``, ``run_args.json`` and ``scaler.json`` (optional) from
    ``folder`` and fills ``template_path`` (default :data:`DEFAULT_TEMPLATE_PATH`).
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    template = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE_PATH
    if not template.is_file():
        raise FileNotFoundError(
            f"Model card template {template} not found. It ships in the project's model_cards/ folder; pass "
            "card_template=<path to a Jinja template> (e.g. a copy of model_cards/template.md)."
        )
    config = _read_json(folder / "config.json")
    metrics_raw = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    # A pre-training's metrics.json holds diagnostics, not forecasting results: no results table for it.
    pretraining = "HiMTMForPretraining" in (config.get("architectures") or [])
    results = []
    if (folder / "metrics.json").is_file() and not (pretraining and not _has_test_results(metrics_raw)):
        results = load_run_results(folder / "metrics.json")
    if not isinstance(metrics_raw, Mapping):
        metrics_raw = {}
    run_args = _read_json(folder / "run_args.json") if (folder / "run_args.json").is_file() else {}
    run_args = run_args if isinstance(run_args, Mapping) else {}
    hyperparameters = _hyperparameters(run_args)
    flat_args = _flatten(run_args)
    scaler = _read_json(folder / "scaler.json") if (folder / "scaler.json").is_file() else None

    architecture = (config.get("architectures") or ["HiMTMForPrediction"])[0]
    auto_class = AUTO_CLASS_BY_ARCHITECTURE.get(architecture, "AutoModelForTimeSeriesPrediction")
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    source = _lookup(flat_args, "pretrained_model_path", "pretrained_model_name_or_path", "pretrained_model",
                     "init_from")
    source = str(source) if source else None
    local_source = Path(source) if source and Path(source).is_dir() else None
    if base_model is None and source and local_source is None and source.count("/") == 1:
        base_model = source  # only a Hub repo id is valid card metadata; a local run is described in the text
    pretrain_dataset = _lookup(flat_args, "pretrain_dataset", "source_dataset")
    if pretrain_dataset is None and local_source is not None and (local_source / "run_args.json").is_file():
        source_args = _read_json(local_source / "run_args.json")
        if isinstance(source_args, Mapping):
            pretrain_dataset = _lookup(_flatten(source_args), "dataset")
    card_data = build_model_card_data(results, model_name=name, license=license, dataset_ids=dataset_ids,
                                      base_model=base_model)
    datasets = sorted({r.dataset for r in results}) or (
        [str(flat_args["dataset"])] if flat_args.get("dataset") else []
    )
    linear_probe = bool(_lookup(flat_args, "linear_probe") or config.get("freeze_encoder"))
    training = {k: metrics_raw[k] for k in ("steps", "epochs", "best_step", "stopped_early") if
                metrics_raw.get(k) is not None}
    context = dict(
        repo_id=repo_id or f"<your-org>/{name}",
        model_name=name,
        architecture=architecture,
        auto_class=auto_class,
        is_forecaster=architecture == "HiMTMForPrediction",
        config=_config_summary(config),
        results=results,
        datasets=datasets,
        pretrain_dataset=pretrain_dataset,
        # a local folder by its name only: the card must not publish this machine's paths
        pretrained_from=(local_source.name if local_source is not None
                         else strip_machine_paths(source, folder) if source else None),
        protocol=_lookup(flat_args, "protocol") or (
            ("linear probing (frozen encoder, CSA-FT head trained)" if linear_probe else "full fine-tuning")
            if source else ("training from scratch (no pre-training)" if architecture == "HiMTMForPrediction"
                            else "self-supervised pre-training")),
        max_train_windows=_lookup(flat_args, "max_train_windows"),
        training=training,
        hyperparameters=hyperparameters,
        columns=(scaler or {}).get("columns"),
        num_channels=len((scaler or {}).get("columns") or []) or config.get("num_input_channels"),
        has_scaler=scaler is not None,
        has_plot=(folder / "forecast_plot.png").is_file(),
        citation=CITATION_BIBTEX,
        license=license,
    )
    return ModelCard.from_template(card_data, template_path=str(template), **context)


# ----------------------------------------------------------------------------------------------------------------------
# Staging the upload folder
# ----------------------------------------------------------------------------------------------------------------------


def _matches(name: str, patterns: Iterable[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, p) for p in patterns)


def select_files(
    folder: str | os.PathLike[str],
    include_checkpoints: bool = False,
    include_logs: bool = False,
    include_plots: bool = True,
) -> tuple[list[str], list[str]]:
    """Splits the files of a trained output folder into (published, left out), as POSIX relative paths.

    Published: ``config.json``, ``*.safetensors`` (+ index), the model code, ``scaler.json``, ``metrics.json``,
    ``run_args.json``, top-level ``*.png`` (``include_plots``); logs and ``checkpoints/`` only when asked for.
    Pickle files are never published. ``README.md`` is not copied: the card is generated.
    """
    root = Path(folder)
    keep: list[str] = []
    skipped: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        name = parts[-1]
        top = parts[0]
        if name.lower().endswith(_NEVER) or "/." in f"/{rel}":
            skipped.append(rel)
        elif len(parts) > 1:
            if top in _CHECKPOINT_DIRS or top.startswith("checkpoint-"):
                (keep if include_checkpoints else skipped).append(rel)
            elif top in _LOG_DIRS:
                (keep if include_logs else skipped).append(rel)
            else:
                skipped.append(rel)
        elif name in _CORE_FILES or name in CODE_FILES or name in _OPTIONAL_FILES:
            keep.append(rel)
        elif name.endswith(".safetensors") or name == "model.safetensors.index.json":
            keep.append(rel)
        elif _matches(name, _LOG_PATTERNS):
            (keep if include_logs else skipped).append(rel)
        elif name.lower().endswith(".png"):
            (keep if include_plots else skipped).append(rel)
        else:
            skipped.append(rel)
    return keep, skipped


def _check_folder(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(f"Output folder {folder} does not exist.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; pass the output folder of a training run (or a folder written by "
            "model.save_pretrained)."
        )
    config = _read_json(config_path)
    if config.get("model_type") != "himtm":
        raise ValueError(f"{config_path} has model_type={config.get('model_type')!r}; expected 'himtm'.")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(_NEVER))
        hint = f" Found {pickles}: pickled weights are not published (loading them can run code)." if pickles else ""
        raise FileNotFoundError(
            f"{folder} has no safetensors weights (model.safetensors).{hint} Re-save the model with "
            "model.save_pretrained(folder) (safetensors is the default)."
        )
    return config


def _prepare_remote_code(config: dict[str, Any], staged: Path, notes: list[str]) -> None:
    """Makes sure the staged folder carries the model code and an ``auto_map`` naming every HiMTM class."""
    for name in CODE_FILES:
        if not (staged / name).is_file():
            shutil.copy2(PACKAGE_DIR / name, staged / name)
            notes.append(f"{name} was missing from the output folder; copied from the installed himtm_hf.")
    auto_map = dict(config.get("auto_map") or {})
    # All four classes, as `save_pretrained` writes them: a published pre-training loads as a forecaster and back.
    missing = {k: v for k, v in AUTO_MAP.items() if k not in auto_map}
    if missing:
        auto_map.update(missing)
        config["auto_map"] = auto_map
        (staged / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        notes.append(f"config.json had no auto_map entry for {sorted(missing)}; added for trust_remote_code loading.")


def _verify_loads(staged: Path) -> None:
    """Loads the staged weights once (with this package's classes) and fails on missing/unexpected keys."""
    # Importing this module ran himtm_hf/__init__.py, which registered the Auto classes.
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForTimeSeriesPrediction

    config = AutoConfig.from_pretrained(staged)
    architecture = (config.architectures or ["HiMTMForPrediction"])[0]
    auto = {"AutoModelForTimeSeriesPrediction": AutoModelForTimeSeriesPrediction,
            "AutoModelForPreTraining": AutoModelForPreTraining,
            "AutoModel": AutoModel}[AUTO_CLASS_BY_ARCHITECTURE.get(architecture, "AutoModelForTimeSeriesPrediction")]
    _, info = auto.from_pretrained(staged, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"The weights in {staged} do not match config.json: {problems}")


_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


def _local_path_text(text: str, root: Path) -> str:
    """`text` with a machine path made harmless: relative to `root` (the run folder) if it lies inside it, else
    only its last name. `--flag=/a/b` keeps its flag. Other strings are returned unchanged."""
    prefix, _, value = text.partition("=") if text.startswith("--") and "=" in text else ("", "", text)
    if not (value.startswith(("/", "~")) or _WINDOWS_ABSOLUTE.match(value)):
        return text
    path = Path(value).expanduser()
    try:
        resolved = path.resolve()
        short = "." if resolved == root else resolved.relative_to(root).as_posix()
    except (OSError, ValueError, RuntimeError):
        short = PureWindowsPath(value).name if _WINDOWS_ABSOLUTE.match(value) else path.name
    return f"{prefix}={short}" if prefix else short


def strip_machine_paths(value: Any, root: str | os.PathLike[str]) -> Any:
    """A copy of a JSON value with every absolute or home-relative path (the Python executable, the data file, the
    run folders) shortened by `_local_path_text`: an upload must not publish the layout of the machine it came
    from."""
    root = Path(root).resolve()
    if isinstance(value, Mapping):
        return {k: strip_machine_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_machine_paths(v, root) for v in value]
    if isinstance(value, str):
        return _local_path_text(value, root)
    return value


def _strip_staged_paths(staged: Path, source: Path) -> None:
    """Rewrites the staged JSON files (run_args.json, metrics.json, config.json, ...) without machine paths; files
    that hold none stay byte for byte as they were."""
    for path in sorted(staged.rglob("*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        cleaned = strip_machine_paths(payload, source)
        if cleaned != payload:
            path.write_text(json.dumps(cleaned, indent=2) + "\n", encoding="utf-8")


def check_repo_id(repo_id: str | None) -> None:
    """Refuses a repo id that the Hub would refuse (`huggingface_hub`'s own validator), before anything is written."""
    if repo_id is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--repo_id {repo_id!r} is not a valid Hub repo id ('org/name' or 'name'): {error}") from None


def _staged_names(source: Path, args: PublishArguments) -> list[str]:
    """The top-level names a staging of `source` writes (what a dry-run folder's marker lists)."""
    keep, _ = select_files(source, args.include_checkpoints, args.include_logs, args.include_plots)
    return sorted({rel.split("/")[0] for rel in keep} | set(CODE_FILES) | {"config.json", "README.md"})


def stage_upload_folder(args: PublishArguments, destination: str | os.PathLike[str]) -> PublishResult:
    """Writes the exact folder that :func:`publish` uploads into ``destination`` (which must be empty): the selected
    files, the model code, a generated card, and JSON files without the paths of this machine."""
    check_repo_id(args.repo_id)
    source = Path(args.output_dir)
    config = _check_folder(source)
    dest = Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    keep, skipped = select_files(source, args.include_checkpoints, args.include_logs, args.include_plots)
    notes: list[str] = []
    for rel in keep:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)
    _prepare_remote_code(config, dest, notes)
    if not (dest / "scaler.json").is_file():
        notes.append("no scaler.json: forecasts in original units (HiMTMForecastPipeline) need the training scaler.")
    if not (dest / "metrics.json").is_file():
        notes.append("no metrics.json: the model card has no results / model-index.")
    card = render_model_card(dest, repo_id=args.repo_id, template_path=args.card_template, license=args.license,
                             dataset_ids=args.dataset_ids, base_model=args.base_model)
    card.save(dest / "README.md")
    _strip_staged_paths(dest, source)
    if args.verify:
        _verify_loads(dest)
    staged = {*keep, *CODE_FILES, "config.json", "README.md"}  # not whatever else a reused dry-run folder holds
    sizes = {rel: (dest / rel).stat().st_size for rel in sorted(staged) if (dest / rel).is_file()}
    return PublishResult(folder=dest, files=sorted(sizes), skipped=skipped, notes=notes, dry_run=args.dry_run,
                         repo_id=args.repo_id, sizes=sizes)


def _default_dry_run_dir(output_dir: str) -> Path:
    source = Path(output_dir).resolve()
    return source.with_name(source.name + "-hub")


def publish(args: PublishArguments) -> PublishResult:
    """Publishes a trained output folder (see the module docstring); a dry run writes it locally instead.

    The repo id is validated first. A dry-run folder follows `himtm_hf.output_folders`: new or empty, or an earlier
    dry run's (then `--overwrite` removes the files its marker lists, nothing else); never the run folder, inside it
    or around it, nor a home, root or project folder.
    """
    check_repo_id(args.repo_id)
    if args.dry_run:
        dest = Path(args.dry_run_dir) if args.dry_run_dir else _default_dry_run_dir(args.output_dir)
        source = Path(args.output_dir)
        _check_folder(source)  # a bad run folder fails before the dry-run folder is touched
        with claim_output_dir(dest, kind="hub_upload", written=_staged_names(source, args), overwrite=args.overwrite,
                              inputs=[("run folder", source)], flag="--dry_run_dir", overwrite_flag="--overwrite"):
            return stage_upload_folder(args, dest)

    if not args.repo_id:
        raise ValueError("--repo_id (e.g. 'my-org/himtm-etth1-96') is required to upload; use --dry_run to stage only.")
    from huggingface_hub import create_repo, upload_folder

    with tempfile.TemporaryDirectory(prefix="himtm-upload-") as tmp:
        result = stage_upload_folder(args, Path(tmp) / "upload")
        repo_url = create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model", token=args.token)
        commit = upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=result.folder,
            repo_type="model",
            revision=args.revision,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            token=args.token,
            delete_patterns=None,
        )
        result.repo_id = repo_url.repo_id
        result.url = getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or str(repo_url)
        result.folder = Path(args.output_dir)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Offline Hub cache
# ----------------------------------------------------------------------------------------------------------------------


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hf_cache(
    folder: str | os.PathLike[str],
    repo_id: str,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str = "main",
    commit_hash: str | None = None,
) -> Path:
    """Lays ``folder`` out as the Hub cache entry of model repo ``repo_id`` and returns the snapshot folder.

    The layout is huggingface_hub's: ``<cache>/models--org--name/blobs/<hash>`` (git blob sha1 for small text
    files, sha256 for LFS-style files such as safetensors), ``refs/<revision>`` holding the commit hash and
    ``snapshots/<commit>/<path>`` as relative symlinks into ``blobs`` (copies where symlinks are unavailable).
    With ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE=<cache>``, ``from_pretrained(repo_id)`` then loads from it.

    Args:
        folder: the files of the repo (e.g. a dry-run publish folder).
        repo_id: ``"org/name"``.
        cache_dir: the hub cache (default: ``huggingface_hub.constants.HF_HUB_CACHE``).
        revision: the ref to write (``main``).
        commit_hash: 40 hex digits; default: a hash of the folder's content.
    """
    from huggingface_hub import constants

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{root} has no files to put in the cache.")
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    repo_folder = cache / ("models--" + repo_id.replace("/", "--"))
    digests: list[tuple[str, str]] = []
    for path in files:
        data = path.read_bytes()
        rel = path.relative_to(root).as_posix()
        blob = hashlib.sha256(data).hexdigest() if rel.lower().endswith(_LFS_SUFFIXES) else _git_blob_sha1(data)
        digests.append((rel, blob))
        blob_path = repo_folder / "blobs" / blob
        if not blob_path.exists():
            blob_path.parent.mkdir(parents=True, exist_ok=True)
            blob_path.write_bytes(data)
    if commit_hash is None:
        commit_hash = hashlib.sha1("\n".join(f"{r} {b}" for r, b in digests).encode()).hexdigest()
    if len(commit_hash) != 40 or any(c not in "0123456789abcdef" for c in commit_hash):
        raise ValueError(f"commit_hash must be 40 lowercase hex digits, got {commit_hash!r}.")
    snapshot = repo_folder / "snapshots" / commit_hash
    for rel, blob in digests:
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        target = os.path.relpath(repo_folder / "blobs" / blob, link.parent)
        try:
            link.symlink_to(target)
        except OSError:
            shutil.copy2(repo_folder / "blobs" / blob, link)
    ref = repo_folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit_hash)
    return snapshot
