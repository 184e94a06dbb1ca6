"""Training, evaluation and the main job for HiMTM (and other `past_values`/`future_values` forecasters).

Public API::

    from himtm_hf.training import (
        ModelArguments, DataArguments, TrainArguments, PretrainArguments, FinetuneArguments,
        EvaluateArguments, MainJobArguments, parse_args,
        pretrain, finetune, evaluate_model, run_main_job,          # whole runs (write a run folder)
        claim_run_dir, prepare_output_dir,                         # the run-folder rule (himtm_hf.output_folders)
        train_model, train_head_then_model, set_encoder_frozen,    # building blocks (e.g. for PatchTST)
        predict, forecast_metrics, make_accelerator,
    )

See `docs/training.md` for the run-folder layout, the launch commands and the determinism scheme.
"""

from .arguments import (
    DataArguments,
    EvaluateArguments,
    FinetuneArguments,
    MainJobArguments,
    ModelArguments,
    PretrainArguments,
    TrainArguments,
    parse_args,
    parse_list_value,
)
from .loop import (
    CHECKPOINTS_DIR,
    LAYOUT_FILES,
    RUN_LAYOUT,
    EpochShuffleSampler,
    JsonlLogger,
    TrainerState,
    TrainResult,
    cap_windows,
    claim_run_dir,
    find_checkpoint,
    iterate_forecasts,
    make_accelerator,
    mask_draws_per_sample,
    predict,
    prepare_output_dir,
    resolve_mixed_precision,
    seed_for_micro_batch,
    set_encoder_frozen,
    setup_logging,
    step_seed,
    train_head_then_model,
    train_model,
    write_run_args,
)
from .runs import (
    build_config,
    default_evaluation_dir,
    evaluate_model,
    finetune,
    forecast_metrics,
    format_metrics_table,
    load_prediction_model,
    plot_forecasts,
    pretrain,
    run_main_job,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "LAYOUT_FILES",
    "RUN_LAYOUT",
    "DataArguments",
    "EpochShuffleSampler",
    "EvaluateArguments",
    "FinetuneArguments",
    "JsonlLogger",
    "MainJobArguments",
    "ModelArguments",
    "PretrainArguments",
    "TrainArguments",
    "TrainResult",
    "TrainerState",
    "build_config",
    "cap_windows",
    "claim_run_dir",
    "default_evaluation_dir",
    "evaluate_model",
    "find_checkpoint",
    "finetune",
    "forecast_metrics",
    "format_metrics_table",
    "iterate_forecasts",
    "load_prediction_model",
    "make_accelerator",
    "mask_draws_per_sample",
    "parse_args",
    "parse_list_value",
    "plot_forecasts",
    "predict",
    "prepare_output_dir",
    "pretrain",
    "resolve_mixed_precision",
    "run_main_job",
    "seed_for_micro_batch",
    "setup_logging",
    "step_seed",
    "set_encoder_frozen",
    "train_head_then_model",
    "train_model",
    "write_run_args",
]
