"""The experiment harness behind `scripts/benchmark_accuracy.py`, `benchmark_baselines.py`, `benchmark_speed.py`,
`ablate.py` and `transfer.py`: HiMTM against `transformers` PatchTST and closed-form baselines under one protocol,
one JSON record per run under `docs/results/`, and `docs/results.md` generated from them. Not needed to use the
model (`himtm_hf`, `himtm_hf.training`, `himtm_hf.pipeline`).

Modules:

- `budgets`: the accuracy benchmark's and ablation's budgets (`BUDGETS`) and model configurations.
- `records`: record files, their provenance (commit, command, device) and HiMTM defaults sets.
- `runs`: pre-training, fine-tuning and test evaluation of one model under a budget.
- `variants`: the HiMTM variants of the ablation (`ABLATION_VARIANTS`) and their rules.
- `accuracy`: `run_accuracy`. `ablation`: `run_ablation`.
- `baselines`: the naive and closed-form ridge forecasters and their records.
- `transfer`: the cross-dataset transfer matrix (budgets of its own: `transfer.BUDGETS`).
- `report`: `regenerate_results_md`.
"""

from .ablation import run_ablation
from .accuracy import run_accuracy
from .baselines import BASELINE_LABELS, ensure_baselines, load_baselines, run_baselines
from .budgets import (
    ALL_MODELS,
    BUDGETS,
    HEAD_FIRST_MODELS,
    MODELS,
    Budget,
    budget_by_name,
    himtm_config,
    patchtst_config,
    speed_himtm_config,
)
from .records import (
    HIMTM_DEFAULTS_VERSION,
    RESULTS_DIR,
    ROOT,
    base_record,
    command_line,
    device_name,
    git_commit,
    portable_path,
    write_record,
)
from .report import regenerate_results_md
from .runs import build_forecaster, finetune_model, pretrain_model
from .variants import ABLATION_VARIANTS, HEAD_FIRST_VARIANTS, PAPER_ABLATION_VARIANTS

__all__ = [
    "ABLATION_VARIANTS",
    "ALL_MODELS",
    "BASELINE_LABELS",
    "BUDGETS",
    "HEAD_FIRST_MODELS",
    "HEAD_FIRST_VARIANTS",
    "HIMTM_DEFAULTS_VERSION",
    "MODELS",
    "PAPER_ABLATION_VARIANTS",
    "RESULTS_DIR",
    "ROOT",
    "Budget",
    "base_record",
    "budget_by_name",
    "build_forecaster",
    "command_line",
    "device_name",
    "ensure_baselines",
    "finetune_model",
    "git_commit",
    "himtm_config",
    "load_baselines",
    "patchtst_config",
    "portable_path",
    "pretrain_model",
    "regenerate_results_md",
    "run_ablation",
    "run_accuracy",
    "run_baselines",
    "speed_himtm_config",
    "write_record",
]
