"""The HiMTM variants of the ablation (and of the accuracy benchmark's `--himtm_variant`): each variant's config
overrides, which ones skip pre-training, fine-tune head first or keep another pre-training checkpoint, and the
helpers that apply those rules to a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import SplitData
from .budgets import HEAD_FIRST_MODELS, HEAD_ONLY_FRACTION, Budget
from .runs import pretrain_model

# Half the ETTh width with supervised PatchTST's small-data dropout (the `width_32_dropout_0.3` variants below).
_WIDTH_32_DROPOUT_03: dict[str, Any] = {"d_model": 32, "num_attention_heads": 4, "decoder_num_attention_heads": 4,
                                        "csa_num_attention_heads": 4, "dropout": 0.3}
# Supervised PatchTST/64's own small-data size (d_model 16, 4 heads, dropout 0.3): the `full` budget's width trend
# (64 -> 32 better on both ETTh datasets, docs/findings.md, finding 11) taken down to the baseline's width.
_WIDTH_16_DROPOUT_03: dict[str, Any] = {**_WIDTH_32_DROPOUT_03, "d_model": 16}
# Instance-normalised HSD targets with the zero-initialised forecast head (the `hsd_instance_norm_head_init_zeros`
# variants below).
_INSTANCE_TARGETS_ZERO_HEAD: dict[str, Any] = {"distillation_target_norm": "instance", "forecast_head_init": "zeros"}
# Both: the best recipe measured at the `full` budget (docs/findings.md, finding 11), the base of its diagnostics below.
_FULL_BUDGET_RECIPE: dict[str, Any] = {**_WIDTH_32_DROPOUT_03, **_INSTANCE_TARGETS_ZERO_HEAD}

ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_hmt": {"use_hmt": False},
    "no_ded": {"use_ded": False},
    "no_hsd": {"use_hsd": False},
    "no_csa": {"use_csa": False},
    "hierarchies_1": {"num_hierarchies": 1},
    "hierarchies_2": {"num_hierarchies": 2},
    # 3 hierarchies and mask ratio 0.5 are the defaults: that point of both sweeps is the "full" row.
    "hierarchies_4": {"num_hierarchies": 4},
    "mask_0.3": {"mask_ratio": 0.3},
    "mask_0.4": {"mask_ratio": 0.4},
    "mask_0.6": {"mask_ratio": 0.6},
    "mask_0.7": {"mask_ratio": 0.7},
    "teacher_ema": {"teacher_type": "ema"},
    "teacher_masked_input": {"teacher_input": "masked"},
    "csa_global": {"csa_attention": "global"},
    # Learned positions (defaults v1) instead of the fixed sine-cosine table (v2).
    "pos_learned": {"positional_encoding_type": "learned"},
    # The forecast projection starts at zero (a fresh head forecasts the look-back mean) instead of random weights.
    "head_init_zeros": {"forecast_head_init": "zeros"},
    # Both: on ETTm1 the HSD losses kept the 124-step pre-training's reconstruction at the mean (docs/findings.md, finding 2).
    "no_hsd_head_init_zeros": {"use_hsd": False, "forecast_head_init": "zeros"},
    # HSD targets standardised per feature over the window's tokens instead of per token (data2vec's instance norm
    # for 1-D signals): the shared teacher can then not lower the distillation loss with features that are the same
    # at every position (docs/findings.md, finding 2).
    "hsd_instance_norm": {"distillation_target_norm": "instance"},
    # Both: instance-normalised HSD targets and the zero-initialised forecast head (the HSD-keeping counterpart of
    # no_hsd_head_init_zeros).
    "hsd_instance_norm_head_init_zeros": dict(_INSTANCE_TARGETS_ZERO_HEAD),
    # Dropout before the forecast projection (the flatten head holds most of the forecaster's parameters).
    "head_dropout_0.3": {"head_dropout": 0.3},
    # Diagnostics of the accuracy gap (docs/findings.md): a masking unit of 32 steps instead of 64, no
    # pre-training at all (the same architecture trained on the forecasting loss only), and the width of the
    # large-dataset configuration (PatchTST's self-supervised model is 128 wide on every dataset).
    "patch_8": {"patch_length": 8, "patch_stride": 8},
    "no_pretrain": {},
    "width_128": {"d_model": 128, "num_attention_heads": 16, "decoder_num_attention_heads": 16,
                  "csa_num_attention_heads": 16, "ffn_dim": 256},
    # Closer to supervised PatchTST's small-dataset size (d_model 16, dropout 0.3): at the `full` budget HiMTM's
    # fine-tuning on ETTh1 peaks at epoch 1-3 and then over-fits (docs/findings.md, finding 11); half the width (the flatten head
    # then reads 56 tokens x 32 features, 1.8x the 63 x 16 of PatchTST's, instead of 3.6x) and PatchTST's dropout.
    "width_32_dropout_0.3": dict(_WIDTH_32_DROPOUT_03),
    # The two best `full`-budget changes on ETTh1 together (docs/findings.md, finding 11): the smaller, more regularised model
    # and the instance-target + zero-head pair; each alone was 1.017x and 1.008x supervised PatchTST there.
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros": dict(_FULL_BUDGET_RECIPE),
    # The recipe at supervised PatchTST's width (the flatten head then reads 56 tokens x 16 features, 0.9x PatchTST's
    # 63 x 16): does the width trend of docs/findings.md, finding 11 go on below 32 at the `full` budget?
    "width_16_dropout_0.3_hsd_instance_norm_head_init_zeros": {**_WIDTH_16_DROPOUT_03, **_INSTANCE_TARGETS_ZERO_HEAD},
    # That recipe's H = 720 fine-tuning on ETTh1 peaks at epoch 1-2 and then over-fits (docs/findings.md, finding 11). Is it the
    # flatten head (dropout before it, as supervised PatchTST's `head_dropout` would do) or the encoder drifting
    # away from its pre-training (the encoder frozen: CSA-FT and the projection trained only, a diagnostic)?
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_head_dropout_0.3": {**_FULL_BUDGET_RECIPE, "head_dropout": 0.3},
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_frozen_encoder": {**_FULL_BUDGET_RECIPE,
                                                                              "freeze_encoder": True},
    # The recipe fine-tuned as PatchTST's own code fine-tunes its pre-trained encoder (`Learner.fine_tune`): the head
    # alone first (the encoder frozen, as in the diagnostic above), then everything at half the learning rate
    # (`HEAD_FIRST_VARIANTS`, same total epochs). Frozen, ETTh1's validation loss was lower at every horizon, but the
    # test MSE 0.5 % higher (docs/findings.md, finding 11): does the head fitted first help the end-to-end fine-tuning?
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_lp_ft": dict(_FULL_BUDGET_RECIPE),
    # The best `cpu`-budget model on ETTm1 / ETTm2 (docs/findings.md, finding 2) fine-tuned head first the same way: does the
    # protocol that helped the recipe on ETTh2 help on the 15-minute datasets too?
    "hsd_instance_norm_head_init_zeros_lp_ft": dict(_INSTANCE_TARGETS_ZERO_HEAD),
    # The defaults' model, with the pre-training checkpoint (and its early stopping) chosen by the validation
    # reconstruction loss instead of the total: the HSD part's target moves with the weights (docs/findings.md, finding 11).
    # The default since defaults v4; the variant stays for the records of earlier sets.
    "select_by_reconstruction": {},
    # The pre-training checkpoint chosen by the total validation loss (reconstruction + distillation), the default
    # before v4.
    "select_by_total_loss": {},
    # The switches of defaults v4, each set back (docs/architecture.md, "Pre-training that learns"): per-token
    # LayerNorm distillation targets (v3's; with the shared teacher the encoder collapses), scaler statistics over
    # the whole window (masked values included), and DED positions from a fixed sine-cosine table.
    "hsd_token_norm": {"distillation_target_norm": "token"},
    "scaling_all": {"pretraining_scaling_statistics": "all"},
    "decoder_pos_sincos": {"decoder_positional_encoding_type": "sincos"},
    # `width_128` fine-tuned from a random start: its own reference for "does pre-training pay?". Pre-training paid on
    # ETTm1 (d_model 128) and not on ETTh1 / ETTh2 (d_model 64) at defaults v4 (docs/findings.md, finding 4).
    "width_128_no_pretrain": {"d_model": 128, "num_attention_heads": 16, "decoder_num_attention_heads": 16,
                              "csa_num_attention_heads": 16, "ffn_dim": 256},
}
# Variants fine-tuned from a random initialisation instead of their own pre-training, and the pre-trained variant each
# is the reference of (the ablation tables' "× from scratch" column).
NO_PRETRAIN_VARIANTS = {"no_pretrain", "width_128_no_pretrain"}
SCRATCH_REFERENCE = {"width_128": "width_128_no_pretrain"}  # every other variant: "no_pretrain"
# What `scripts/ablate.py` runs unless told otherwise: the paper's ablation table (each of its four parts removed)
# and the two sweeps. The other variants are diagnostics and recipe candidates, run by name.
PAPER_ABLATION_VARIANTS: list[str] = ["full", "no_hmt", "no_ded", "no_hsd", "no_csa", "hierarchies_1", "hierarchies_2",
                                      "hierarchies_4", "mask_0.3", "mask_0.4", "mask_0.6", "mask_0.7"]
# HiMTM variants fine-tuned head first (`HEAD_ONLY_FRACTION`). Their names never collide with `ALL_MODELS`.
HEAD_FIRST_VARIANTS: tuple[str, ...] = ("width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_lp_ft",
                                        "hsd_instance_norm_head_init_zeros_lp_ft")
# Variants whose pre-training keeps the checkpoint with the lowest value of this validation loss (others: "loss").
PRETRAIN_METRIC_VARIANTS = {"select_by_reconstruction": "reconstruction_loss", "select_by_total_loss": "loss"}


def pretrain_variant(variant: str, splits: SplitData, budget: Budget, seed: int, work_dir: Path,
                     probe_splits: SplitData | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Pre-trains HiMTM as `variant` (no checkpoint for the variants without pre-training)."""
    if variant in NO_PRETRAIN_VARIANTS:
        return None, {"pretrain_steps": 0}
    return pretrain_model("himtm", splits, budget, seed, work_dir, ABLATION_VARIANTS[variant],
                          metric_for_best_model=PRETRAIN_METRIC_VARIANTS.get(variant), probe_splits=probe_splits)


def head_only_epochs(name: str, budget: Budget) -> float:
    """Head-only fine-tuning epochs of `name` (a HiMTM variant or a benchmark model) under `budget` (0: end to end
    from the start)."""
    fraction = HEAD_ONLY_FRACTION if name in HEAD_FIRST_VARIANTS or name in HEAD_FIRST_MODELS else 0.0
    if fraction and budget.max_steps_finetune > 0:
        raise ValueError(f"{name!r} splits the fine-tuning epochs, but budget {budget.name!r} counts "
                         f"steps (max_steps_finetune={budget.max_steps_finetune}); run it with an epoch budget.")
    return fraction * budget.finetune_epochs


def finetune_overrides(overrides: dict[str, Any], checkpoint: Path | None) -> dict[str, Any]:
    """A variant's overrides for building its forecaster: all of them from scratch; from a checkpoint only
    `use_csa`, since the rest travel in the saved config."""
    return {k: v for k, v in overrides.items() if k == "use_csa"} if checkpoint is not None else dict(overrides)
