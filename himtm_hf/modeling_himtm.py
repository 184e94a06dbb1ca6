"""HiMTM models: hierarchical multi-scale masked time-series modelling with self-distillation (arXiv 2401.05012).

Where each paper component lives:

- **HMT** (hierarchical multi-scale transformer): `HiMTMHierarchicalEncoder`, built from `HiMTMTransformerBlock`
  stacks per hierarchy and `HiMTMPatchMerging` (2 adjacent tokens -> 1) between them.
- **DED** (decoupled encoder-decoder): `HiMTMDecoupledDecoder`, per-hierarchy regressors of `HiMTMCrossSelfBlock`
  (mask queries attend to [visible features ; mask queries]); `HiMTMReconstructionHead` turns predicted features
  back into patches.
- **HSD** (hierarchical self-distillation): `HiMTMSelfDistillation`, the stop-gradient teacher (shared weights or
  EMA copy) and the per-hierarchy feature targets.
- **CSA-FT** (cross-scale attention fine-tuning): `HiMTMCrossScaleHead`.

This file is self-contained (relative imports only) so that `save_pretrained` can ship it for
`trust_remote_code`.
"""

from __future__ import annotations

import math
import numbers
import os
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_himtm import HiMTMConfig

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class HiMTMModelOutput(ModelOutput):
    r"""
    Output of [`HiMTMModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_channels, num_tokens_last, d_model_last)`):
            Features of the coarsest hierarchy.
        hierarchy_features (`tuple(torch.FloatTensor)`): one tensor per hierarchy, finest first, of shape
            `(batch_size, num_channels, num_patches // 2**i, d_model_i)`.
        patch_input (`torch.FloatTensor` of shape `(batch_size, num_channels, num_patches, patch_length)`):
            The scaled input cut into patches; `num_patches = config.num_patches` covers the left-padded window
            (`config.padded_context_length` steps, the padding 0).
        loc (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): per-instance location used for scaling.
        scale (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): per-instance scale.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the embedded patches, then every transformer block's
            output in order, each of shape `(batch_size, num_channels, num_tokens, d_model)`; returned with
            `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): every block's attention weights, each of shape
            `(batch_size * num_channels, num_heads, num_tokens, num_tokens)`; returned with `output_attentions=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hierarchy_features: tuple[torch.FloatTensor, ...] | None = None
    patch_input: torch.FloatTensor | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HiMTMForPretrainingOutput(ModelOutput):
    r"""
    Output of [`HiMTMForPretraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): total pre-training loss,
            `sum_i w_i * (reconstruction_loss_weight * L_R^i + distillation_loss_weight * L_D^i)`.
        reconstruction_loss (`torch.FloatTensor` of shape `()`): weighted sum of the per-hierarchy L_R^i.
        distillation_loss (`torch.FloatTensor` of shape `()`): weighted sum of the per-hierarchy L_D^i (0 when
            HSD is off).
        hierarchy_reconstruction_losses (`torch.FloatTensor` of shape `(num_hierarchies,)`): L_R^i, finest first.
        hierarchy_distillation_losses (`torch.FloatTensor` of shape `(num_hierarchies,)`): L_D^i, finest first.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, num_patches, patch_length)`):
            finest-hierarchy reconstruction in scaled space: model predictions at masked patches, the input at
            visible ones. `num_patches = config.num_patches` covers the left-padded window.
        mask (`torch.FloatTensor` of shape `(batch_size, num_channels, num_patches)`): 1 = masked, 0 = visible.
        patch_input (`torch.FloatTensor` of shape `(batch_size, num_channels, num_patches, patch_length)`):
            the scaled input patches (the reconstruction target).
        loc (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): per-instance location (of the visible
            patches with `config.pretraining_scaling_statistics="visible"`).
        scale (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): per-instance scale (likewise).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the student's embedded tokens and block outputs, as
            in [`HiMTMModelOutput`]; with DED the student sees the visible patches only, so `num_tokens` is the
            visible count.
        attentions (`tuple(torch.FloatTensor)`, *optional*): the student's attention weights per block.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    hierarchy_reconstruction_losses: torch.FloatTensor | None = None
    hierarchy_distillation_losses: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    patch_input: torch.FloatTensor | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HiMTMForPredictionOutput(ModelOutput):
    r"""
    Output of [`HiMTMForPrediction`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): MSE over observed future values, in the units of
            `future_values` (`config.prediction_loss_space="input"`, default) or in the per-instance scaled space
            (`"instance"`); returned when `future_values` is given.
        prediction_outputs (`torch.FloatTensor` of shape `(batch_size, prediction_length, num_channels)`):
            forecasts in the input's original units.
        hierarchy_features (`tuple(torch.FloatTensor)`): encoder features per hierarchy (see [`HiMTMModelOutput`]).
        loc (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): per-instance location.
        scale (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): per-instance scale.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the encoder's embedded patches and block outputs.
        attentions (`tuple(torch.FloatTensor)`, *optional*): the encoder's attention weights per block.
    """

    loss: torch.FloatTensor | None = None
    prediction_outputs: torch.FloatTensor | None = None
    hierarchy_features: tuple[torch.FloatTensor, ...] | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Input checks, scaling and patching
# ----------------------------------------------------------------------------------------------------------------------


def _check_values(
    name: str,
    values: torch.Tensor,
    observed_mask: torch.Tensor | None,
    mask_name: str,
    length: int,
    num_channels: int,
    length_name: str,
    dtype: torch.dtype | None = None,
    require_observed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates a `(batch, length, channels)` series and its observed mask; returns float values and mask.

    Non-finite values are allowed only where the observed mask is 0; they are replaced by 0 there. Integer values
    become float32. With `dtype` (the model's parameter dtype) floating values of another precision are cast to it,
    as the weights would otherwise reject them deep inside a matmul: float16/bfloat16 input to a float32 model is
    widened exactly, float64 input is rounded to float32 (what the model computes in anyway); a value that the cast
    turns into inf (e.g. 1e5 into a float16 model) is an error. With `require_observed`, a batch row whose mask is 0
    everywhere (every channel, every step) is an error: the model has nothing to forecast from. A single channel with
    no observed step is allowed (windows over a long gap in one column of real data), its forecast is the instance
    mean, i.e. 0; see `HiMTMModel.prepare_patches`.

    The value checks read tensor contents on the host, so under `torch.compile` / `torch.export` (which cannot trace
    them without a graph break) they are skipped: the shape checks and the cast still run, and non-finite values at
    observed positions then reach the output.
    """
    if not torch.is_tensor(values):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape (batch, {length}, {num_channels}), got {type(values)}.")
    if values.dim() != 3:
        raise ValueError(
            f"`{name}` must have 3 dimensions (batch_size, {length_name}={length}, num_input_channels={num_channels}), "
            f"got shape {tuple(values.shape)}. For a single series use values.unsqueeze(0); for one channel "
            "use values.unsqueeze(-1)."
        )
    if values.shape[1] != length:
        raise ValueError(
            f"`{name}` has length {values.shape[1]} but the model expects {length_name}={length}. Cut or pad the "
            f"input to {length} time steps (pad with the observed mask set to 0), or load the model with "
            f"{length_name}={values.shape[1]}."
        )
    if values.shape[2] != num_channels:
        raise ValueError(
            f"`{name}` has {values.shape[2]} channels but config.num_input_channels={num_channels}. The model is "
            "channel-independent: reload it with `num_input_channels="
            f"{values.shape[2]}` (e.g. from_pretrained(path, num_input_channels={values.shape[2]})) to use this data."
        )
    check_values = not torch.compiler.is_compiling()
    if check_values and values.shape[0] == 0:
        raise ValueError(
            f"`{name}` is an empty batch (shape {tuple(values.shape)}): there is nothing to run the model on. Pass at "
            "least one series (batch_size >= 1)."
        )
    if not values.is_floating_point():
        values = values.float()
    if observed_mask is not None and (not torch.is_tensor(observed_mask) or observed_mask.shape != values.shape):
        shape = tuple(observed_mask.shape) if torch.is_tensor(observed_mask) else type(observed_mask)
        raise ValueError(
            f"`{mask_name}` must be a tensor with the same shape as `{name}` {tuple(values.shape)}, got {shape}."
        )
    observed = None if observed_mask is None else observed_mask.to(values.dtype)
    finite = torch.isfinite(values)
    if check_values and observed is None and not finite.all():
        raise ValueError(
            f"`{name}` contains NaN or inf values. Pass `{mask_name}` with 0 at missing positions (the model "
            "then ignores them), or fill them before calling the model."
        )
    if check_values and observed is not None and not finite[observed.bool()].all():
        raise ValueError(
            f"`{name}` has NaN or inf values at positions that `{mask_name}` marks as observed; set the mask to 0 "
            "there."
        )
    if dtype is not None and values.dtype != dtype:
        values = _cast_values(name, values, finite, dtype, check_values)
        finite = torch.isfinite(values)
    if observed is None:
        return values, torch.ones_like(values)
    observed = observed.to(values.dtype)
    if check_values and require_observed:
        _check_rows_observed(name, mask_name, observed)
    values = torch.where(finite, values, torch.zeros_like(values))
    return values, observed


def _cast_values(
    name: str, values: torch.Tensor, finite: torch.Tensor, dtype: torch.dtype, check_values: bool
) -> torch.Tensor:
    """Casts `values` to the model's dtype; a finite value the cast overflows to inf is an error (the model would
    otherwise treat it as a huge observation and return NaN)."""
    cast = values.to(dtype)
    if check_values and (finite & ~torch.isfinite(cast)).any():
        biggest = values[finite & ~torch.isfinite(cast)].abs().max().item()
        raise ValueError(
            f"`{name}` ({values.dtype}) has values up to {biggest:.3g}, beyond the range of the model's dtype "
            f"{dtype} ({torch.finfo(dtype).max:.3g}). Standardise the data first, or run the model in a wider dtype "
            "(model.float())."
        )
    return cast


def _check_rows_observed(name: str, mask_name: str, observed: torch.Tensor) -> None:
    """Raises when a batch row has no observed value at all. Per row, not per channel: see `_check_values`."""
    empty = ~observed.flatten(1).bool().any(dim=1)
    if empty.any():
        rows = torch.nonzero(empty).flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"`{mask_name}` is 0 everywhere in batch row(s) {shown}: those look-back windows have no observed value "
            f"in any channel, so the model has nothing to forecast from (it would return its bias). Drop those rows "
            f"from the batch, or pass a `{name}` window that contains observations."
        )


def _output_flags(
    config: HiMTMConfig, output_hidden_states: bool | None, output_attentions: bool | None, return_dict: bool | None
) -> tuple[bool, bool, bool]:
    """The call's `output_hidden_states`, `output_attentions` and `return_dict`, falling back on the config's."""
    return (
        output_hidden_states if output_hidden_states is not None else config.output_hidden_states,
        output_attentions if output_attentions is not None else config.output_attentions,
        return_dict if return_dict is not None else config.return_dict,
    )


class HiMTMScaler(nn.Module):
    """Per-instance, per-channel normalisation (RevIN-style without affine), computed over observed values only.

    `"std"`: loc = mean, scale = std; `"mean"`: loc = 0, scale = mean |x|; `None`: identity. The scale is floored at
    `minimum_scale` so a constant series does not divide by zero. A `statistics_mask` narrows the values the
    statistics come from (pre-training with `pretraining_scaling_statistics="visible"`: the visible patches only);
    every observed value is still scaled with them. The scale is then also floored at
    `pretraining_visible_scale_floor` times the scale of all observed values: a visible part that is (nearly)
    constant while the masked part moves, common in real data (ETTh1/ETTh2/ETTm1), would otherwise give reconstruction
    targets of ~1e5 and losses of ~1e8.
    """

    def __init__(self, config: HiMTMConfig):
        super().__init__()
        self.scaling = config.scaling
        self.minimum_scale = config.minimum_scale
        self.relative_floor = config.pretraining_visible_scale_floor

    def forward(
        self, values: torch.Tensor, observed_mask: torch.Tensor, statistics_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            values, observed_mask (`torch.Tensor` of shape `(batch, length, channels)`)
            statistics_mask (`torch.Tensor` of shape `(batch, length, channels)`, *optional*): 1 where a value counts
                towards `loc` and `scale`; defaults to `observed_mask`.
        Returns:
            scaled values `(batch, length, channels)` (0 at unobserved steps), `loc` and `scale` `(batch, 1, channels)`.
        """
        if self.scaling is None:
            loc = torch.zeros_like(values[:, :1])
            scale = torch.ones_like(values[:, :1])
            return values, loc, scale
        loc, scale = self._statistics(values, observed_mask if statistics_mask is None else statistics_mask)
        if statistics_mask is not None and self.relative_floor > 0:
            # Tells the student at most that the masked part spreads much more than the visible one; never its mean.
            scale = torch.maximum(scale, self.relative_floor * self._statistics(values, observed_mask)[1])
        # Unobserved steps become 0 = the instance mean after scaling, so they carry no signal.
        scaled = (values - loc) / scale * observed_mask
        if not torch.compiler.is_compiling():  # a host read: skipped under torch.compile / torch.export
            _check_statistics(values, observed_mask, loc, scale, scaled)
        return scaled, loc, scale

    def _statistics(self, values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`loc` and `scale` `(batch, 1, channels)` over the values where `weights` is 1."""
        count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)  # (batch, 1, channels)
        if self.scaling == "std":
            loc = (values * weights).sum(dim=1, keepdim=True) / count
            variance = (((values - loc) * weights) ** 2).sum(dim=1, keepdim=True) / count
            return loc, variance.sqrt().clamp_min(self.minimum_scale)
        # "mean"
        loc = torch.zeros_like(values[:, :1])
        return loc, ((values.abs() * weights).sum(dim=1, keepdim=True) / count).clamp_min(self.minimum_scale)


def _check_statistics(
    values: torch.Tensor, observed_mask: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, scaled: torch.Tensor
) -> None:
    """Raises when the per-instance statistics or the scaled values overflow the model's dtype.

    In float32 the squared deviations overflow once a series spreads over ~1e19, and the scale becomes inf; the
    forecast would then be NaN or inf with no error. Finite inputs whose statistics are finite pass untouched, so this
    changes nothing for inputs that worked before.
    """
    bad = ~(torch.isfinite(loc) & torch.isfinite(scale)).squeeze(1)  # (batch, channels)
    bad = bad | ~torch.isfinite(scaled).all(dim=1)
    if not bad.any():
        return
    row, channel = (int(i) for i in torch.nonzero(bad)[0])
    observed = values[row, :, channel][observed_mask[row, :, channel].bool()]
    biggest = observed.abs().max().item() if observed.numel() else float("nan")
    raise ValueError(
        f"`past_values` is too large for the model's {values.dtype} arithmetic: the per-instance scaling statistics "
        f"of batch row {row}, channel {channel} (observed values up to {biggest:.3g}) overflow to inf "
        f"({int(bad.sum())} series affected): squared deviations above {torch.finfo(values.dtype).max:.3g} do not fit, "
        f"so values beyond ~{torch.finfo(values.dtype).max ** 0.5 / 10:.0g} in magnitude cannot be scaled. Standardise "
        "the data (as training does, with the train split's mean and std) or divide it by a constant before calling "
        "the model."
    )


def pad_context(values: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Prepends `num_steps` zeros along time (`config.num_padding_steps`, `context_padding="left"`).

    Applied to the scaled values and to the observed mask alike, so the padding is unobserved: scaling statistics
    (computed before padding) and the reconstruction loss never count it. With `num_steps == 0` the input is returned
    as is, so a look-back that is a whole number of coarsest units runs exactly as it would without padding.

    Args:
        values (`torch.Tensor` of shape `(batch, length, channels)`)
    Returns:
        `torch.Tensor` of shape `(batch, num_steps + length, channels)`.
    """
    if num_steps == 0:
        return values
    return F.pad(values, (0, 0, num_steps, 0))


def patchify(values: torch.Tensor, num_patches: int, patch_length: int) -> torch.Tensor:
    """Cuts the last `num_patches * patch_length` steps into non-overlapping patches, channel-independently.

    Args:
        values (`torch.Tensor` of shape `(batch, length, channels)`)
    Returns:
        `torch.Tensor` of shape `(batch * channels, num_patches, patch_length)`.
    """
    batch, _, channels = values.shape
    # Drop the oldest steps that do not fit (`context_padding="drop"`); a left-padded window fits exactly.
    values = values[:, values.shape[1] - num_patches * patch_length :]
    values = values.transpose(1, 2).reshape(batch * channels, num_patches, patch_length)
    return values


# ----------------------------------------------------------------------------------------------------------------------
# Transformer building blocks
# ----------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, so that the weights can be returned (`output_attentions`).

    Args:
        query (`torch.Tensor` of shape `(batch, heads, q_tokens, head_dim)`); key, value: `(batch, heads, k_tokens,
            head_dim)`.
    Returns:
        output `(batch, q_tokens, heads, head_dim)` and weights `(batch, heads, q_tokens, k_tokens)`.
    """
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class HiMTMAttention(nn.Module):
    """Multi-head attention; self-attention when `key_value_states` is None.

    The kernel follows `config._attn_implementation` at call time (`"sdpa"` by default, `"eager"` to get the
    attention weights), so `model.set_attn_implementation(...)` switches every layer at once.
    """

    def __init__(self, config: HiMTMConfig, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # every token sees the whole (visible) window
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, tokens, d_model) -> (batch, heads, tokens, head_dim)
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context = hidden_states if key_value_states is None else key_value_states
        query = self._split(self.q_proj(hidden_states))
        key = self._split(self.k_proj(context))
        value = self._split(self.v_proj(context))
        # Only the eager kernel produces the weights: use it for this call when they are asked for.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out, weights = attention_interface(
            self, query, key, value, None, dropout=self.dropout if self.training else 0.0, scaling=self.scaling,
            output_attentions=output_attentions,
        )
        out = out.reshape(hidden_states.shape[0], hidden_states.shape[1], -1)  # (batch, tokens, d_model)
        return self.out_proj(out), (weights if output_attentions else None)


class HiMTMFeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class HiMTMTransformerBlock(GradientCheckpointingLayer):
    """Pre-norm self-attention block, the unit of every HMT hierarchy and of the CSA-FT head."""

    def __init__(self, config: HiMTMConfig, d_model: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = HiMTMAttention(config, d_model, num_heads, config.attention_dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = HiMTMFeedForward(d_model, ffn_dim, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # hidden_states: (batch * channels, tokens, d_model); weights: (batch * channels, heads, tokens, tokens)
        attended, weights = self.attention(self.norm1(hidden_states), output_attentions=output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.ffn(self.norm2(hidden_states))), weights


class HiMTMCrossSelfBlock(GradientCheckpointingLayer):
    """DED's cross-self attention: mask queries attend to [visible features ; mask queries].

    Only the queries are updated; the visible features pass through unchanged, so the decoder cannot do the
    encoder's job of building the visible representation (the point of decoupling).
    """

    def __init__(self, config: HiMTMConfig, d_model: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(d_model)
        self.norm_context = nn.LayerNorm(d_model)
        self.attention = HiMTMAttention(config, d_model, num_heads, config.attention_dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = HiMTMFeedForward(d_model, ffn_dim, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        # queries: (batch * channels, num_masked, d); visible: (batch * channels, num_visible, d)
        context = self.norm_context(torch.cat([visible, queries], dim=1))
        attended, _ = self.attention(self.norm_query(queries), context)
        queries = queries + self.dropout(attended)
        return queries + self.dropout(self.ffn(self.norm2(queries)))


class HiMTMPatchMerging(nn.Module):
    """HMT patch merging: every 2 adjacent tokens -> 1 token (Swin-style, 1-D), `2 * d_in -> d_out`."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * d_in)
        self.reduction = nn.Linear(2 * d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch * channels, tokens, d_in) -> (batch * channels, tokens // 2, d_out)
        x = x.reshape(x.shape[0], x.shape[1] // 2, 2 * x.shape[2])
        return self.reduction(self.norm(x))


# ----------------------------------------------------------------------------------------------------------------------
# HMT: hierarchical multi-scale transformer encoder
# ----------------------------------------------------------------------------------------------------------------------


def sincos_position_table(num_positions: int, d_model: int) -> torch.Tensor:
    """PatchTST's fixed sine-cosine table, centred and scaled to std 0.1: `(1, num_positions, d_model)`."""
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(num_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    table = table - table.mean()
    return (table / (table.std() * 10)).unsqueeze(0)


class HiMTMPatchEmbedding(nn.Module):
    """Linear patch embedding plus a position embedding per finest-level patch: learned, or a fixed sine-cosine
    table (`config.positional_encoding_type`); coarser hierarchies inherit positions through patch merging."""

    def __init__(self, config: HiMTMConfig):
        super().__init__()
        d_model = config.hierarchy_specs()[0].d_model
        self.projection = nn.Linear(config.patch_length, d_model)
        self.learned_positions = config.positional_encoding_type == "learned"
        if self.learned_positions:
            self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches, d_model))  # `_init_weights`
        else:
            # A saved buffer, not a parameter: checkpoints of both kinds hold the same key, and no optimizer, DDP
            # gradient reduction or `requires_grad_` (loading, freezing) ever treats the fixed table as trainable.
            # Filled here (and again by `_init_weights` for models built on the meta device).
            self.register_buffer("position_embedding", sincos_position_table(config.num_patches, d_model))
        self.dropout = nn.Dropout(config.positional_dropout)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # (batch * channels, num_patches, patch_length) -> (batch * channels, num_patches, d_model)
        return self.dropout(self.projection(patches) + self.position_embedding)


class HiMTMHierarchy(nn.Module):
    """One HMT hierarchy: a stack of transformer blocks and an output norm."""

    def __init__(self, config: HiMTMConfig, index: int):
        super().__init__()
        spec = config.hierarchy_specs()[index]
        self.blocks = nn.ModuleList(
            HiMTMTransformerBlock(config, spec.d_model, spec.num_heads, spec.ffn_dim) for _ in range(spec.num_layers)
        )
        self.norm = nn.LayerNorm(spec.d_model)


class HMTOutput(NamedTuple):
    """What `HiMTMHierarchicalEncoder` returns.

    features: one `(batch * channels, num_tokens // 2**i, d_model_i)` tensor per hierarchy (after its output norm).
    hidden_states: with `output_hidden_states`, the embedded tokens and then every block's output, each
        `(batch, channels, tokens, d_model)`; these are the tensors the next block reads (not copies), so a
        gradient reaches them.
    attentions: with `output_attentions`, every block's attention weights `(batch * channels, heads, tokens,
        tokens)`.
    """

    features: list[torch.Tensor]
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


class HiMTMHierarchicalEncoder(nn.Module):
    """HMT: hierarchies of transformer blocks with 2-to-1 patch merging between them.

    The token sequence may be any subset of patches as long as it is made of whole coarsest-level units in time
    order (as the pre-training masks are), so merging always joins true neighbours.
    """

    def __init__(self, config: HiMTMConfig):
        super().__init__()
        specs = config.hierarchy_specs()
        self.num_channels = config.num_input_channels
        self.hierarchies = nn.ModuleList(HiMTMHierarchy(config, i) for i in range(len(specs)))
        self.merges = nn.ModuleList(
            HiMTMPatchMerging(specs[i].d_model, specs[i + 1].d_model) for i in range(len(specs) - 1)
        )

    def forward(
        self, tokens: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> HMTOutput:
        """
        Args:
            tokens (`torch.Tensor` of shape `(batch * channels, num_tokens, d_model_0)`): embedded patches.
        """
        features: list[torch.Tensor] = []
        hidden_states: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        x = self._record(tokens, hidden_states) if output_hidden_states else tokens
        for i, hierarchy in enumerate(self.hierarchies):
            for block in hierarchy.blocks:
                x, weights = block(x, output_attentions=output_attentions)
                if output_attentions:
                    attentions.append(weights)
                if output_hidden_states:
                    x = self._record(x, hidden_states)
            features.append(hierarchy.norm(x))
            if i < len(self.merges):
                x = self.merges[i](x)  # (batch * channels, tokens // 2, d_model_{i+1})
        return HMTOutput(features, tuple(hidden_states) if output_hidden_states else None,
                         tuple(attentions) if output_attentions else None)

    def _record(self, x: torch.Tensor, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        """Appends `x` as `(batch, channels, tokens, d)` and continues from that very view, so the returned hidden
        state lies on the autograd path (`retain_grad()` works on it)."""
        series, tokens, width = x.shape
        view = x.view(series // self.num_channels, self.num_channels, tokens, width)
        hidden_states.append(view)
        return view.view(series, tokens, width)


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained model base and the encoder model
# ----------------------------------------------------------------------------------------------------------------------

# Every saved folder names all four classes, so that with `trust_remote_code` a pre-training folder loads as a
# forecaster (and a forecaster or encoder as a pre-training model) without this package installed.
AUTO_MAP = {
    "AutoConfig": "configuration_himtm.HiMTMConfig",
    "AutoModel": "modeling_himtm.HiMTMModel",
    "AutoModelForPreTraining": "modeling_himtm.HiMTMForPretraining",
    "AutoModelForTimeSeriesPrediction": "modeling_himtm.HiMTMForPrediction",
}


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _looks_local(text: str) -> bool:
    """True when `text` can only be a filesystem path, never a Hub repo id (`name` or `namespace/name`, whose parts
    cannot start with '.'): it starts with '.', '/', '~' or '\\', has a drive letter, contains the OS's own separator
    where that is not '/', or has more than one '/'."""
    return (
        text.startswith((".", "/", "~", "\\"))
        or (len(text) > 1 and text[1] == ":")
        or (os.sep != "/" and os.sep in text)
        or text.count("/") > 1
    )


def _folder_hint(path: str) -> str:
    """Names the deepest existing folder above `path` and some of what it holds, to point at a typo."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return ""
    entries = sorted(name for name in os.listdir(parent) if not name.startswith("."))
    shown = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "") if entries else "nothing"
    return f" The nearest existing folder, {parent}, holds: {shown}."


def _local_location(name_or_path):
    """The location to load from: `~` expanded when that names an existing path; raises `FileNotFoundError` for a
    path that can only be local and does not exist."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path
    text = os.fspath(name_or_path)
    expanded = os.path.expanduser(text)
    if os.path.exists(expanded):
        return expanded if text.startswith("~") else name_or_path
    if _looks_local(text):
        raise FileNotFoundError(
            f"No such folder: {text} ({os.path.abspath(expanded)} does not exist), so there is no model to load. Pass "
            f"the folder that holds config.json and model.safetensors (the output folder of a run), or a Hub repo id "
            f"('namespace/name').{_folder_hint(expanded)}"
        )
    return name_or_path


def _is_weights_read_error(error: BaseException) -> bool:
    """True for the errors safetensors and torch.load raise on a truncated or corrupt weights file."""
    kind = type(error)
    if "safetensor" in kind.__name__.lower() or "safetensors" in (kind.__module__ or ""):
        return True
    if isinstance(error, EOFError) or kind.__name__ == "UnpicklingError":
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("PytorchStreamReader", "invalid load key", "failed finding central directory")
    )


def _raise_load_error(error: BaseException, location, subfolder: str) -> None:
    """Re-raises a failed `from_pretrained` with the file or folder named; returns (the caller re-raises `error`
    unchanged) when it has nothing to add."""
    if not isinstance(location, (str, os.PathLike)):
        return
    text = os.fspath(location)
    folder = os.path.join(text, subfolder) if subfolder else text
    if _is_weights_read_error(error):
        if os.path.isdir(folder):
            files = [os.path.join(folder, f) for f in _WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))]
            where = " / ".join(files) or f"the weights file in {folder}"
        else:
            where = f"the cached weights file of the Hub repo {text!r}"
        raise OSError(
            f"Could not read {where}: {type(error).__name__}: {error}. The file is truncated or corrupt (e.g. an "
            f"interrupted save, copy or download). Save the model again, or download it again with "
            f"from_pretrained(..., force_download=True)."
        ) from error
    if isinstance(error, OSError) and not os.path.isdir(folder) and "/" in text:
        first = text.split("/", 1)[0]
        if os.path.isdir(first):  # e.g. "outputs/etth1-96" with a typo: "outputs" is a local folder
            raise FileNotFoundError(
                f"No such folder: {text} ({os.path.abspath(text)} does not exist), and no Hub repo of that name could "
                f"be loaded ({type(error).__name__}: {error}).{_folder_hint(text)}"
            ) from error


class HiMTMPreTrainedModel(PreTrainedModel):
    config_class = HiMTMConfig
    config: HiMTMConfig
    base_model_prefix = "model"
    main_input_name = "past_values"
    input_modalities = ("time",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["HiMTMTransformerBlock", "HiMTMCrossSelfBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises each module's own parameters and buffers (transformers calls it once per module)."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, HiMTMPatchEmbedding) and module.learned_positions:
            init.normal_(module.position_embedding, mean=0.0, std=std)
        elif isinstance(module, HiMTMPatchEmbedding):
            init.copy_(module.position_embedding, sincos_position_table(*module.position_embedding.shape[1:]))
        elif isinstance(module, HiMTMDecoderLevel):
            init.normal_(module.mask_query, mean=0.0, std=std)
            if module.learned_positions:
                init.normal_(module.position_embedding, mean=0.0, std=std)
            else:
                init.copy_(module.position_embedding, sincos_position_table(*module.position_embedding.shape[1:]))
        elif isinstance(module, HiMTMCrossScaleHead):
            init.normal_(module.scale_embedding, mean=0.0, std=std)
        elif isinstance(module, HiMTMForecastProjection) and self.config.forecast_head_init == "zeros":
            # After the generic Linear init above: start from the look-back-mean forecast, not random ones.
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, HiMTMForPretraining) and module.mask_token is not None:
            init.normal_(module.mask_token, mean=0.0, std=std)
        elif isinstance(module, HiMTMSelfDistillation) and module.teacher_initialized is not None:
            init.zeros_(module.teacher_initialized)

    def _freeze_fixed_parameters(self) -> None:
        """Re-applies which parameters must not train (the EMA teacher, a frozen encoder); loading replaces
        parameters after `__init__` and so resets their `requires_grad`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` with errors that name what is wrong: a local path that does not exist says
        "no such folder" (transformers would call it an invalid Hub repo id), a `~/...` path is expanded, and an
        unreadable weights file (truncated or corrupt `model.safetensors`) is named in the error."""
        location = _local_location(pretrained_model_name_or_path)
        try:
            model = super().from_pretrained(location, *args, **kwargs)
        except Exception as error:
            _raise_load_error(error, location, kwargs.get("subfolder") or "")
            raise
        (model[0] if isinstance(model, tuple) else model)._freeze_fixed_parameters()
        return model

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, with every HiMTM class in the config's `auto_map` (see `AUTO_MAP`)."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)


class HiMTMModel(HiMTMPreTrainedModel):
    """The HiMTM encoder: scaling -> patching -> patch embedding -> HMT, returning every hierarchy's features."""

    def __init__(self, config: HiMTMConfig):
        super().__init__(config)
        self.scaler = HiMTMScaler(config)
        self.embedding = HiMTMPatchEmbedding(config)
        self.encoder = HiMTMHierarchicalEncoder(config)
        self.post_init()

    def prepare_patches(
        self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validates, scales, pads and patches the look-back window (`check_inputs`, then `scale_and_patch`).

        Returns:
            patches `(batch * channels, num_patches, patch_length)` in scaled space, the observed mask cut the same
            way (0 on left padding), `loc` and `scale` of shape `(batch, 1, channels)`.
        """
        values, observed = self.check_inputs(past_values, past_observed_mask)
        return self.scale_and_patch(values, observed)

    def check_inputs(
        self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validates the look-back window; returns values in the model's dtype (0 at missing steps) and the observed
        mask, both `(batch, context_length, channels)`.

        Floating inputs of another precision are cast to the model's dtype (float16/bfloat16/float64 into a float32
        model); an empty batch and a batch row whose `past_observed_mask` is 0 everywhere raise a `ValueError` (see
        `_check_values`). A single channel without observed steps is accepted: windows over a long gap in one column
        occur in training data, and its forecast is the instance mean (loc = 0, i.e. the data's mean after
        standardisation).
        """
        config = self.config
        return _check_values(
            "past_values", past_values, past_observed_mask, "past_observed_mask",
            config.context_length, config.num_input_channels, "context_length",
            dtype=self.dtype, require_observed=True,
        )

    def scale_and_patch(
        self, values: torch.Tensor, observed: torch.Tensor, statistics_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scales the checked window, pads it on the left to `config.padded_context_length` (`context_padding="left"`)
        and cuts it into patches. Values whose per-instance statistics overflow the model's dtype raise a `ValueError`
        (`_check_statistics`).

        Args:
            values, observed (`torch.Tensor` of shape `(batch, context_length, channels)`): from `check_inputs`.
            statistics_mask (`torch.Tensor` of the same shape, *optional*): the values `loc` and `scale` come from
                (default: every observed value); see `HiMTMScaler`.
        Returns:
            as `prepare_patches`.
        """
        config = self.config
        scaled, loc, scale = self.scaler(values, observed, statistics_mask)
        # Padding after scaling: the statistics never see it, and scaled zeros are the instance mean, as at any
        # unobserved step. The encoder sees padded patches like missing ones (no attention mask), so a padded window
        # runs the same kernels as a full one.
        scaled = pad_context(scaled, config.num_padding_steps)  # (batch, padded_context_length, channels)
        observed = pad_context(observed, config.num_padding_steps)
        patches = patchify(scaled, config.num_patches, config.patch_length)
        observed_patches = patchify(observed, config.num_patches, config.patch_length)
        return patches, observed_patches, loc, scale

    def encode(
        self, patches: torch.Tensor, token_index: torch.Tensor | None = None, output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> HMTOutput:
        """Embeds patches and runs HMT, optionally on the subset of patches `token_index` only.

        Args:
            patches (`torch.Tensor` of shape `(batch * channels, num_patches, patch_length)`)
            token_index (`torch.LongTensor` of shape `(batch * channels, num_kept)`, *optional*): sorted patch
                positions to keep, made of whole coarsest-level units.
        """
        tokens = self.embedding(patches)  # (batch * channels, num_patches, d_model_0)
        if token_index is not None:
            tokens = torch.gather(tokens, 1, token_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.encoder(tokens, output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HiMTMModelOutput | tuple:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `(batch_size, context_length, num_input_channels)`):
                The look-back window.
            past_observed_mask (`torch.Tensor` of the same shape, *optional*): 1 = observed, 0 = missing.
            output_hidden_states (`bool`, *optional*): return the embedded patches and every block's output.
            output_attentions (`bool`, *optional*): return every block's attention weights (computed with the
                eager kernel for that call when another one is configured).
            return_dict (`bool`, *optional*): return a [`HiMTMModelOutput`] instead of a tuple.
        Returns:
            [`HiMTMModelOutput`] or tuple.
        """
        output_hidden_states, output_attentions, return_dict = _output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        batch, channels = past_values.shape[0], self.config.num_input_channels
        patches, _, loc, scale = self.prepare_patches(past_values, past_observed_mask)
        encoded = self.encode(patches, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        features = tuple(f.view(batch, channels, f.shape[1], f.shape[2]) for f in encoded.features)
        output = HiMTMModelOutput(
            last_hidden_state=features[-1],
            hierarchy_features=features,
            patch_input=patches.view(batch, channels, *patches.shape[1:]),
            loc=loc,
            scale=scale,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# Masking (consistent across hierarchies)
# ----------------------------------------------------------------------------------------------------------------------


def hierarchical_random_mask(
    num_series: int,
    config: HiMTMConfig,
    device: torch.device,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draws `num_masked_units` of the `num_masking_units` coarsest tokens per series and broadcasts to patches.

    Because the mask is drawn at the coarsest hierarchy, a coarse token is masked exactly when all of its fine
    patches are, and 2-to-1 merging of the visible (or the masked) patches always joins true neighbours.

    The units are those of the left-padded window (`config.num_patches`). The oldest unit may hold padding and is
    masked like any other: padding is shorter than one unit, so every unit holds real steps, and the losses leave the
    padding out (the reconstruction counts observed elements only, the distillation tokens with an observed step).

    Args:
        noise (`torch.Tensor` of shape `(num_series, num_masking_units)`, *optional*): uniform noise to rank instead
            of drawing it (the units with the smallest noise are masked); lets a training loop make masks
            independent of the number of processes.

    Returns:
        `torch.BoolTensor` of shape `(num_series, num_patches)`, True = masked.
    """
    units = config.num_masking_units
    if noise is None:
        noise = torch.rand(num_series, units, device=device, generator=generator)
    elif noise.shape != (num_series, units):
        raise ValueError(
            f"`mask_noise` must have shape (batch_size, num_input_channels, num_masking_units) = "
            f"(*, {config.num_input_channels}, {units}); got {tuple(noise.shape)} after flattening to series."
        )
    ranks = noise.argsort(dim=1).argsort(dim=1)
    unit_mask = ranks < config.num_masked_units  # (num_series, units)
    return unit_mask.repeat_interleave(config.num_patches // units, dim=1)


def visible_statistics_mask(observed: torch.Tensor, patch_mask: torch.Tensor, config: HiMTMConfig) -> torch.Tensor:
    """The steps that give the scaling statistics with `pretraining_scaling_statistics="visible"`: observed and not
    under a masked patch, so the student is not told the masked region's mean and spread.

    A series with fewer than `patch_length` such steps (gaps in the data, or a visible part that is mostly left
    padding, e.g. `context_length=65` with 64-step units) falls back to all its observed steps: statistics from a
    handful of values would give a scale near its floor and reconstruction targets of ~1e5.

    Args:
        observed (`torch.Tensor` of shape `(batch, context_length, channels)`): the observed mask.
        patch_mask (`torch.BoolTensor` of shape `(batch * channels, num_patches)`): True = masked.
    Returns:
        `torch.Tensor` of shape `(batch, context_length, channels)`.
    """
    batch, length, channels = observed.shape
    masked = patch_mask.to(observed.dtype).repeat_interleave(config.patch_length, dim=1)  # (series, N * P)
    masked = masked.view(batch, channels, -1).transpose(1, 2)  # (batch, padded_context_length, channels)
    # Line the patch grid up with the window: left padding lies before it; the oldest steps that `"drop"` leaves out
    # of every patch are never masked.
    masked = masked[:, masked.shape[1] - length :] if masked.shape[1] >= length else pad_context(
        masked, length - masked.shape[1])
    visible = observed * (1.0 - masked)
    enough = visible.sum(dim=1, keepdim=True) >= config.patch_length  # (batch, 1, channels)
    return torch.where(enough, visible, observed)


def mask_at_level(patch_mask: torch.Tensor, level: int) -> torch.Tensor:
    """Mask of hierarchy `level`: token j is masked iff its 2**level patches are (they always agree)."""
    return patch_mask[:, :: 2**level]


def split_indices(mask: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted visible and masked positions of a mask with `num_masked` masked tokens in every row.

    The count comes from the config (`num_masked_patches`): counting it from the mask would be a host sync (and a
    graph break under `torch.compile`).
    """
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, each group in time order
    return order[:, : mask.shape[1] - num_masked], order[:, mask.shape[1] - num_masked :]


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    # x: (series, tokens, d); index: (series, k) -> (series, k, d)
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------------------------------------
# DED: decoupled decoder and reconstruction heads
# ----------------------------------------------------------------------------------------------------------------------


class HiMTMDecoderLevel(nn.Module):
    """The DED regressor of one hierarchy: mask queries -> predicted features of the masked tokens."""

    def __init__(self, config: HiMTMConfig, index: int):
        super().__init__()
        spec = config.hierarchy_specs()[index]
        width = config.decoder_d_model or spec.d_model
        self.input_projection = nn.Linear(spec.d_model, width) if width != spec.d_model else nn.Identity()
        # Drawn by `_init_weights` (std `initializer_range`), like every parameter of this module.
        self.mask_query = nn.Parameter(torch.zeros(1, 1, width))
        self.learned_positions = config.decoder_positional_encoding_type == "learned"
        if self.learned_positions:
            self.position_embedding = nn.Parameter(torch.zeros(1, spec.num_tokens, width))  # `_init_weights`
        else:
            # A fixed table as in MAE's decoder (a saved buffer, as in `HiMTMPatchEmbedding`): nearby tokens get
            # similar positions from the first step, so the queries can find their neighbours without first
            # learning what the positions mean.
            self.register_buffer("position_embedding", sincos_position_table(spec.num_tokens, width))
        self.layers = nn.ModuleList(
            HiMTMCrossSelfBlock(config, width, config.decoder_num_attention_heads, 2 * width)
            for _ in range(config.decoder_num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.output_projection = nn.Linear(width, spec.d_model) if width != spec.d_model else nn.Identity()

    def forward(self, visible: torch.Tensor, visible_index: torch.Tensor, masked_index: torch.Tensor) -> torch.Tensor:
        # visible: (series, n_visible, d_i) -> predicted masked features (series, n_masked, d_i)
        pos = self.position_embedding.expand(visible.shape[0], -1, -1)
        visible = self.input_projection(visible) + _gather_tokens(pos, visible_index)
        queries = self.mask_query + _gather_tokens(pos, masked_index)
        for layer in self.layers:
            queries = layer(queries, visible)
        return self.output_projection(self.norm(queries))


class HiMTMDecoupledDecoder(nn.Module):
    """DED: one regressor per hierarchy, each predicting that hierarchy's masked features from its visible ones."""

    def __init__(self, config: HiMTMConfig):
        super().__init__()
        self.levels = nn.ModuleList(
            HiMTMDecoderLevel(config, i) for i in range(config.effective_num_hierarchies)
        )


class HiMTMReconstructionHead(nn.Module):
    """Light head: predicted features of a hierarchy-i token -> the 2**i raw patches it covers."""

    def __init__(self, d_model: int, patch_length: int, patches_per_token: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.projection = nn.Linear(d_model, patch_length * patches_per_token)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (series, tokens, d_i) -> (series, tokens, patches_per_token * patch_length)
        return self.projection(self.norm(features))


def observed_mse(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of `error**2` over the elements where `weight` is 1 (0 when none is): the one MSE of every loss here."""
    return (error**2 * weight).sum() / weight.sum().clamp_min(1.0)


def masked_reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, observed: torch.Tensor
) -> torch.Tensor:
    """MSE over masked, observed elements only.

    Args:
        reconstruction, target, observed (`torch.Tensor` of shape `(series, tokens, values_per_token)`)
        mask (`torch.Tensor` of shape `(series, tokens)`): 1 = masked.
    """
    weight = mask.unsqueeze(-1).to(target.dtype) * observed
    return observed_mse(reconstruction - target, weight)


def masked_distillation_loss(
    predicted: torch.Tensor, target: torch.Tensor, token_observed: torch.Tensor
) -> torch.Tensor:
    """MSE between predicted and teacher features over the masked tokens that cover at least one observed step.

    A token with no observed step (all left padding, or a long gap) has teacher features that describe padding, not
    data, so it is left out. When every token is observed this is exactly `F.mse_loss` (selected without a host
    sync, so `torch.compile(fullgraph=True)` still traces it); with none observed it is 0, not NaN.

    Args:
        predicted, target (`torch.Tensor` of shape `(series, tokens, d_model)`)
        token_observed (`torch.Tensor` of shape `(series, tokens)`): 1 = the token covers an observed step.
    """
    plain = F.mse_loss(predicted, target)
    weight = token_observed.to(plain.dtype).unsqueeze(-1)  # (series, tokens, 1)
    squared = (predicted.to(plain.dtype) - target.to(plain.dtype)) ** 2 * weight
    weighted = squared.sum() / (weight.sum() * predicted.shape[-1]).clamp_min(1.0)
    return torch.where(token_observed.bool().all(), plain, weighted)


# ----------------------------------------------------------------------------------------------------------------------
# HSD: hierarchical self-distillation
# ----------------------------------------------------------------------------------------------------------------------


STALE_TEACHER_FORWARDS = 1000

# Pre-training models with an EMA teacher, stepped by `_ema_step_after_optimizer_step` (weak: models are not kept
# alive by the hook).
_EMA_MODELS: weakref.WeakSet = weakref.WeakSet()
_EMA_HOOK: list = []  # the hook's handle, registered once per process


def _ema_step_after_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Global `torch.optim` post-step hook: every EMA model whose student this optimiser trains takes its step."""
    for model in list(_EMA_MODELS):
        anchor = model.model.embedding.projection.weight
        if any(param is anchor for group in optimizer.param_groups for param in group["params"]):
            model.update_teacher()


def _register_ema_model(model: nn.Module) -> None:
    _EMA_MODELS.add(model)
    if not _EMA_HOOK:
        _EMA_HOOK.append(register_optimizer_step_post_hook(_ema_step_after_optimizer_step))


class HiMTMSelfDistillation(nn.Module):
    """HSD: a stop-gradient teacher that gives per-hierarchy feature targets at the masked positions.

    `teacher_type="shared"` is the paper's teacher: the student's own embedding and HMT weights, run without
    gradient (and without dropout). `teacher_type="ema"` keeps a separate, frozen copy that follows the student as
    `teacher = m * teacher + (1 - m) * student`, one step per optimiser step.

    The EMA step needs no caller: [`HiMTMForPretraining`] takes it right after every `step()` of any
    `torch.optim` optimiser that holds the student's parameters (a global optimiser post-step hook), so
    `transformers.Trainer` (fused AdamW included), Accelerate and hand-written loops all train the EMA teacher, and
    a skipped AMP step or a gradient-accumulation micro-step moves nothing. `update()` takes a step by hand (an
    optimiser that is not a `torch.optim.Optimizer`); a model whose teacher has not moved for many training forwards
    says so once.
    """

    def __init__(self, config: HiMTMConfig):
        super().__init__()
        self.teacher_type = config.teacher_type
        self.teacher_input = config.teacher_input
        self.momentum = config.teacher_momentum
        self.target_norm = config.distillation_target_norm
        self.forwards_since_update = 0  # training forwards since the teacher last moved (for the warning)
        if self.teacher_type == "ema":
            # Built like the student (sharing its config, so attention settings apply to both) and copied from it on
            # first use.
            self.teacher_embedding = HiMTMPatchEmbedding(config)
            self.teacher_encoder = HiMTMHierarchicalEncoder(config)
            self.freeze_teacher()
            # 0 until the teacher has been copied from the student (fresh init or a shared-teacher checkpoint).
            self.register_buffer("teacher_initialized", torch.zeros((), dtype=torch.bool))
        else:
            self.teacher_embedding = None
            self.teacher_encoder = None
            self.teacher_initialized = None

    def freeze_teacher(self) -> None:
        """The EMA teacher never gets gradients (DDP would otherwise wait for them)."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def _teacher_modules(self, student: HiMTMModel) -> tuple[nn.Module, nn.Module]:
        if self.teacher_type == "ema":
            return self.teacher_embedding, self.teacher_encoder
        return student.embedding, student.encoder

    @torch.no_grad()
    def sync_from_student(self, student: HiMTMModel) -> None:
        """Copies the student's weights into the EMA teacher (no-op for the shared teacher)."""
        if self.teacher_type != "ema":
            return
        self.teacher_embedding.load_state_dict(student.embedding.state_dict())
        self.teacher_encoder.load_state_dict(student.encoder.state_dict())
        self.teacher_initialized.fill_(True)
        self.forwards_since_update = 0

    @torch.no_grad()
    def update(self, student: HiMTMModel) -> None:
        """EMA step `t = m * t + (1 - m) * s` now (the first one copies the student)."""
        if self.teacher_type != "ema":
            return
        if not bool(self.teacher_initialized):
            self.sync_from_student(student)
            return
        for teacher_module, student_module in (
            (self.teacher_embedding, student.embedding), (self.teacher_encoder, student.encoder)
        ):
            for t, s in zip(teacher_module.parameters(), student_module.parameters()):
                t.lerp_(s.detach(), 1.0 - self.momentum)
        self.forwards_since_update = 0

    def count_training_forward(self) -> None:
        """Warns once when the EMA teacher has not moved for `STALE_TEACHER_FORWARDS` training forwards (its
        optimiser is not a `torch.optim.Optimizer` holding the student's parameters, e.g. some FSDP set-ups)."""
        if self.teacher_type != "ema":
            return
        self.forwards_since_update += 1
        if self.forwards_since_update == STALE_TEACHER_FORWARDS:
            logger.warning(
                f"HiMTM's EMA teacher has not moved for {STALE_TEACHER_FORWARDS} training forwards: no torch.optim "
                "optimiser holding the student's parameters has stepped. Call `model.update_teacher()` after each "
                "optimiser step, or use teacher_type='shared'."
            )

    @torch.no_grad()
    def targets(
        self, student: HiMTMModel, patches: torch.Tensor, patch_mask: torch.Tensor, masked_index: torch.Tensor,
        level_masked_index: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Teacher features of the masked tokens at every hierarchy, `(series, n_masked_i, d_i)` each."""
        if self.teacher_type == "ema" and not bool(self.teacher_initialized):
            self.sync_from_student(student)
        embedding, encoder = self._teacher_modules(student)
        was_training = encoder.training
        embedding.eval()
        encoder.eval()  # the teacher runs without dropout
        try:
            tokens = embedding(patches)
            if self.teacher_input == "masked":
                features = encoder(_gather_tokens(tokens, masked_index)).features
                features = [self._normalize(f) for f in features]
            else:  # "full": encode the whole window, normalise over its tokens, then take the masked positions
                full = encoder(tokens).features
                features = [_gather_tokens(self._normalize(f), idx) for f, idx in zip(full, level_masked_index)]
        finally:
            embedding.train(was_training)
            encoder.train(was_training)
        return [f.detach() for f in features]

    def _normalize(self, features: torch.Tensor) -> torch.Tensor:
        """`config.distillation_target_norm` on the teacher's features `(series, tokens, d)` of one hierarchy."""
        if self.target_norm == "token":
            return F.layer_norm(features, features.shape[-1:])
        if self.target_norm == "instance":
            # Each feature standardised over the window's tokens (data2vec's instance norm for 1-D signals).
            values = features.float()  # statistics in fp32 under autocast
            mean = values.mean(dim=1, keepdim=True)
            var = values.var(dim=1, keepdim=True, unbiased=False)
            return ((values - mean) * torch.rsqrt(var + 1e-5)).to(features.dtype)
        return features


# ----------------------------------------------------------------------------------------------------------------------
# Pre-training model
# ----------------------------------------------------------------------------------------------------------------------


class HiMTMForPretraining(HiMTMPreTrainedModel):
    """HiMTM pre-training: hierarchical masking, HMT student on visible patches, DED regressors and
    reconstruction heads per hierarchy, HSD feature targets from the stop-gradient teacher."""

    def __init__(self, config: HiMTMConfig):
        super().__init__(config)
        self.model = HiMTMModel(config)
        specs = config.hierarchy_specs()
        if config.use_ded:
            self.ded = HiMTMDecoupledDecoder(config)
            self.mask_token = None
            self.feature_predictors = None
        else:
            # SimMIM-style ablation: the encoder itself sees learnable mask tokens at the masked patches.
            self.ded = None
            self.mask_token = nn.Parameter(torch.zeros(1, 1, specs[0].d_model))
            self.feature_predictors = nn.ModuleList(nn.Linear(s.d_model, s.d_model) for s in specs)
        self.reconstruction_heads = nn.ModuleList(
            HiMTMReconstructionHead(s.d_model, config.patch_length, s.patches_per_token) for s in specs
        )
        self.hsd = HiMTMSelfDistillation(config) if config.use_hsd else None
        if self.hsd is not None and config.teacher_type == "ema":
            _register_ema_model(self)  # the EMA step after each optimiser step (see HiMTMSelfDistillation)
        self.post_init()

    def _freeze_fixed_parameters(self) -> None:
        if self.hsd is not None:
            self.hsd.freeze_teacher()

    def __setstate__(self, state: dict) -> None:
        # A copy (`copy.deepcopy`, unpickling) follows its own optimiser's steps too.
        super().__setstate__(state)
        if self.hsd is not None and self.hsd.teacher_type == "ema":
            _register_ema_model(self)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """Takes the EMA teacher's step towards the student now (no-op for the shared teacher).

        Not needed with a `torch.optim` optimiser: the model takes this step after each of its `step()` calls (see
        [`HiMTMSelfDistillation`]). Call it after each step of any other optimiser.
        """
        if self.hsd is not None:
            self.hsd.update(self.model)

    def _student_features(
        self, patches: torch.Tensor, patch_mask: torch.Tensor, visible_index: torch.Tensor,
        level_indices: list[tuple[torch.Tensor, torch.Tensor]], output_hidden_states: bool, output_attentions: bool,
    ) -> tuple[list[torch.Tensor], HMTOutput]:
        """Predicted features of the masked tokens of every hierarchy, `(series, n_masked_i, d_i)` each, and the
        student encoder's output."""
        if self.ded is not None:
            # DED: the encoder sees the visible patches only; the regressors fill in the masked ones.
            encoded = self.model.encode(patches, visible_index, output_hidden_states, output_attentions)
            predicted = [
                level(visible, vis_idx, mask_idx)
                for level, visible, (vis_idx, mask_idx) in zip(self.ded.levels, encoded.features, level_indices)
            ]
            return predicted, encoded
        # SimMIM ablation: mask tokens replace masked patch embeddings; predict from the encoder's own outputs.
        tokens = self.model.embedding.projection(patches)
        tokens = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = self.model.embedding.dropout(tokens + self.model.embedding.position_embedding)
        encoded = self.model.encoder(tokens, output_hidden_states=output_hidden_states,
                                     output_attentions=output_attentions)
        predicted = [
            predictor(_gather_tokens(f, mask_idx))
            for predictor, f, (_, mask_idx) in zip(self.feature_predictors, encoded.features, level_indices)
        ]
        return predicted, encoded

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        return_loss: bool = True,
        mask_noise: torch.Tensor | None = None,
        **kwargs,
    ) -> HiMTMForPretrainingOutput | tuple:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `(batch_size, context_length, num_input_channels)`):
                The window to mask and reconstruct.
            past_observed_mask (`torch.Tensor` of the same shape, *optional*): 1 = observed, 0 = missing; missing
                values are excluded from scaling and from the reconstruction loss.
            future_values, future_observed_mask (*optional*): accepted and ignored, so that forecasting windows
                feed pre-training and `Trainer` directly.
            output_hidden_states (`bool`, *optional*): return the student's embedded tokens and block outputs.
            output_attentions (`bool`, *optional*): return the student's attention weights per block.
            return_dict (`bool`, *optional*): return a [`HiMTMForPretrainingOutput`] instead of a tuple.
            return_loss (`bool`, defaults to `True`): lets `Trainer` report `eval_loss` without labels.
            mask_noise (`torch.Tensor` of shape `(batch_size, num_input_channels, num_masking_units)`, *optional*):
                uniform noise that decides the mask (smallest `num_masked_units` per series are masked) instead of
                a fresh draw; for masks that do not depend on how a batch is split across processes.
        Returns:
            [`HiMTMForPretrainingOutput`] or tuple.
        """
        config = self.config
        output_hidden_states, output_attentions, return_dict = _output_flags(
            config, output_hidden_states, output_attentions, return_dict
        )
        if self.training and self.hsd is not None:
            self.hsd.count_training_forward()
        batch, channels = past_values.shape[0], config.num_input_channels
        values, observed_steps = self.model.check_inputs(past_values, past_observed_mask)  # (batch, L, channels)
        num_series = batch * channels

        # The mask is drawn before scaling so that the statistics can come from the visible patches only (scaling
        # draws no random numbers, so the masks are those of a scale-first order).
        if mask_noise is not None:
            mask_noise = mask_noise.to(values.device).reshape(num_series, -1)
        patch_mask = hierarchical_random_mask(num_series, config, values.device, noise=mask_noise)  # (series, N)
        statistics_mask = (
            visible_statistics_mask(observed_steps, patch_mask, config)
            if config.pretraining_scaling_statistics == "visible" else None
        )
        # Masked values are scaled with the same statistics (the reconstruction targets); the HSD teacher encodes
        # these same scaled patches.
        patches, observed, loc, scale = self.model.scale_and_patch(values, observed_steps, statistics_mask)
        visible_index, masked_index = split_indices(patch_mask, config.num_masked_patches)
        level_masks = [mask_at_level(patch_mask, i) for i in range(config.effective_num_hierarchies)]
        level_indices = [split_indices(m, config.num_masked_patches // 2**i) for i, m in enumerate(level_masks)]

        predicted, encoded = self._student_features(
            patches, patch_mask, visible_index, level_indices, output_hidden_states, output_attentions
        )
        teacher_features = (
            self.hsd.targets(self.model, patches, patch_mask, masked_index, [idx[1] for idx in level_indices])
            if self.hsd is not None
            else None
        )
        rec_stack, dist_stack, finest_reconstruction = self._hierarchy_losses(
            patches, observed, predicted, teacher_features, level_masks, level_indices
        )
        w = torch.tensor(config.resolved_hierarchy_loss_weights(), dtype=rec_stack.dtype, device=rec_stack.device)
        reconstruction_loss = (w * rec_stack).sum()
        distillation_loss = (w * dist_stack).sum()
        loss = config.reconstruction_loss_weight * reconstruction_loss
        if self.hsd is not None:
            loss = loss + config.distillation_loss_weight * distillation_loss

        output = HiMTMForPretrainingOutput(
            loss=loss if return_loss else None,
            reconstruction_loss=reconstruction_loss,
            distillation_loss=distillation_loss,
            hierarchy_reconstruction_losses=rec_stack.detach(),
            hierarchy_distillation_losses=dist_stack.detach(),
            reconstruction=finest_reconstruction.view(batch, channels, config.num_patches, config.patch_length),
            mask=patch_mask.view(batch, channels, config.num_patches).to(patches.dtype),
            patch_input=patches.view(batch, channels, config.num_patches, config.patch_length),
            loc=loc,
            scale=scale,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()

    def _hierarchy_losses(
        self, patches: torch.Tensor, observed: torch.Tensor, predicted: list[torch.Tensor],
        teacher_features: list[torch.Tensor] | None, level_masks: list[torch.Tensor],
        level_indices: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_R^i and L_D^i of every hierarchy (two `(num_hierarchies,)` tensors) and the finest reconstruction
        `(series, num_patches, patch_length)`."""
        num_series, patch_length = patches.shape[0], self.config.patch_length
        rec_losses, dist_losses, reconstructions = [], [], []
        for i, head in enumerate(self.reconstruction_heads):
            per_token = 2**i * patch_length
            level_patches = patches.reshape(num_series, -1, per_token)  # (series, num_patches // 2**i, 2**i * P)
            level_observed = observed.reshape(num_series, -1, per_token)
            masked_idx = level_indices[i][1]
            # Place the predictions of the masked tokens on the full token grid; visible tokens keep the input,
            # so the loss below (masked elements only) cannot see them.
            predicted_patches = head(predicted[i]).to(level_patches.dtype)  # autocast-safe
            reconstruction = level_patches.scatter(1, masked_idx.unsqueeze(-1).expand(-1, -1, per_token),
                                                   predicted_patches)
            reconstructions.append(reconstruction)
            rec_losses.append(
                masked_reconstruction_loss(reconstruction, level_patches, level_masks[i], level_observed)
            )
            if teacher_features is not None:
                # (series, n_masked_i): does the masked token cover an observed step (not only left padding or gaps)?
                token_observed = _gather_tokens(level_observed.amax(dim=-1, keepdim=True), masked_idx).squeeze(-1)
                dist_losses.append(masked_distillation_loss(predicted[i], teacher_features[i], token_observed))
            else:
                dist_losses.append(patches.new_zeros(()))
        return torch.stack(rec_losses), torch.stack(dist_losses), reconstructions[0]

    # ------------------------------------------------------------------------------------------------------------------
    # Forecasting by masked reconstruction (no new parameters: the pre-training task with the mask on the future)
    # ------------------------------------------------------------------------------------------------------------------

    def forecast_look_back(self, prediction_length: int) -> int:
        """Look-back steps that [`~HiMTMForPretraining.forecast`] reads for `prediction_length`: the window
        (`config.context_length`) less the whole coarsest units that cover the horizon.

        Raises:
            `ValueError`: when the horizon leaves no step of the window to look back on.
        """
        config = self.config
        if (isinstance(prediction_length, bool) or not isinstance(prediction_length, numbers.Integral)
                or prediction_length < 1):
            raise ValueError(f"`prediction_length` must be a positive int, got {prediction_length!r}.")
        prediction_length = int(prediction_length)
        unit = config.coarsest_unit_length
        look_back = config.context_length - math.ceil(prediction_length / unit) * unit
        if look_back < 1:
            longest = (config.context_length - 1) // unit * unit
            raise ValueError(
                f"prediction_length={prediction_length} covers {math.ceil(prediction_length / unit)} masking units of "
                f"{unit} steps, which fill the whole {config.context_length}-step window of this model and leave no "
                f"look-back. The longest horizon it reconstructs is {longest} steps; forecast further by fine-tuning "
                "a HiMTMForPrediction (from_pretrained(path, prediction_length=...)) instead."
            )
        return look_back

    def _forecast_window(
        self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None, look_back: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's window for a forecast: the last `look_back` steps of the input (left-padded as unobserved when
        it is shorter), then the horizon units as unobserved zeros. Both `(batch, context_length, channels)`."""
        config = self.config
        length = past_values.shape[1] if torch.is_tensor(past_values) and past_values.dim() == 3 else look_back
        values, observed = _check_values(
            "past_values", past_values, past_observed_mask, "past_observed_mask", length,
            config.num_input_channels, "look-back", dtype=self.dtype, require_observed=True,
        )
        values, observed = values[:, -look_back:], observed[:, -look_back:]
        if not torch.compiler.is_compiling():
            _check_rows_observed("past_values", "past_observed_mask", observed)  # the kept steps may be all missing
        # Unobserved on both sides: the scaler's statistics then come from the look-back alone (the visible patches,
        # as in pre-training), and nothing of the zeros reaches the encoder, which sees the visible units only.
        future_steps = config.context_length - look_back
        values = F.pad(values, (0, 0, look_back - values.shape[1], future_steps))
        observed = F.pad(observed, (0, 0, look_back - observed.shape[1], future_steps))
        return values, observed

    def _masked_future_reconstructions(self, patches: torch.Tensor, num_future_patches: int) -> tuple[
        list[torch.Tensor], HMTOutput
    ]:
        """Every hierarchy's reconstruction of the last `num_future_patches` patches, `(series, future steps)`
        each in scaled space, and the student encoder's output on the visible patches."""
        num_series, num_patches = patches.shape[:2]
        patch_mask = torch.zeros(num_series, num_patches, dtype=torch.bool, device=patches.device)
        patch_mask[:, num_patches - num_future_patches :] = True  # (series, num_patches), True = masked
        visible_index, _ = split_indices(patch_mask, num_future_patches)
        level_indices = [
            split_indices(mask_at_level(patch_mask, i), num_future_patches // 2**i)
            for i in range(self.config.effective_num_hierarchies)
        ]
        predicted, encoded = self._student_features(patches, patch_mask, visible_index, level_indices, False, False)
        # The masked tokens come in time order (`split_indices`), so each head's patches join into the future steps.
        return [head(p).reshape(num_series, -1) for head, p in zip(self.reconstruction_heads, predicted)], encoded

    def forecast(
        self,
        past_values: torch.Tensor,
        prediction_length: int | None = None,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        hierarchy: int | None = None,
        return_dict: bool | None = None,
    ) -> HiMTMForPredictionOutput | tuple:
        r"""Forecasts with the pre-trained model as it is, by masked reconstruction: the future is what is masked.

        The look-back fills the model's window (`config.context_length` steps) up to the last
        `ceil(prediction_length / config.coarsest_unit_length)` coarsest units; those units are masked, the encoder
        sees the look-back only, and the DED regressors and reconstruction heads predict the masked units, as they
        did in pre-training. The forecast is the mean over the hierarchies' reconstructions (or one `hierarchy`'s),
        cut to `prediction_length` steps and returned in the input's units. No parameter is new, so a pre-trained
        checkpoint forecasts without any training on the target (zero-shot); the call is differentiable, so the
        same path can be fine-tuned. Call `model.eval()` first: dropout is active in training mode.

        Args:
            past_values (`torch.FloatTensor` of shape `(batch_size, look_back, num_input_channels)`): the history,
                any length >= 1. Only its last `forecast_look_back(prediction_length)` steps are read (the rest lies
                outside the model's window); a shorter history is padded on the left as unobserved.
            prediction_length (`int`, *optional*): steps to forecast (default `config.prediction_length`); at most
                the window less one coarsest unit (see [`~HiMTMForPretraining.forecast_look_back`]).
            past_observed_mask (`torch.Tensor` of the same shape as `past_values`, *optional*): 1 = observed.
            future_values (`torch.FloatTensor` of shape `(batch_size, prediction_length, num_input_channels)`,
                *optional*): targets; `loss` is then the MSE over their observed values, in their units.
            future_observed_mask (`torch.Tensor` of the same shape as `future_values`, *optional*): 1 = observed.
            hierarchy (`int`, *optional*): forecast from one hierarchy's reconstruction (0 = finest) instead of the
                mean over all of them.
            return_dict (`bool`, *optional*): return a [`HiMTMForPredictionOutput`] instead of a tuple.
        Returns:
            [`HiMTMForPredictionOutput`] (`hierarchy_features` hold the visible tokens only) or tuple.
        """
        config = self.config
        return_dict = _output_flags(config, False, False, return_dict)[2]
        horizon = config.prediction_length if prediction_length is None else prediction_length
        look_back = self.forecast_look_back(horizon)
        num_levels = config.effective_num_hierarchies
        if hierarchy is not None and (isinstance(hierarchy, bool) or hierarchy not in range(num_levels)):
            raise ValueError(f"`hierarchy` must be None (the mean) or an int in [0, {num_levels}), got {hierarchy!r}.")
        values, observed = self._forecast_window(past_values, past_observed_mask, look_back)
        batch, channels = values.shape[0], config.num_input_channels
        patches, _, loc, scale = self.model.scale_and_patch(values, observed)  # statistics: the look-back only
        future_patches = (config.context_length - look_back) // config.patch_length
        reconstructions, encoded = self._masked_future_reconstructions(patches, future_patches)
        scaled = torch.stack(reconstructions).mean(0) if hierarchy is None else reconstructions[hierarchy]
        scaled = scaled[:, :horizon].to(values.dtype).view(batch, channels, horizon).transpose(1, 2)
        prediction = scaled * scale + loc  # (batch, prediction_length, channels), original units

        loss = None
        if future_values is not None:
            target, target_observed = _check_values(
                "future_values", future_values, future_observed_mask, "future_observed_mask", horizon, channels,
                "prediction_length",
            )
            loss = observed_mse(prediction - target, target_observed)
        output = HiMTMForPredictionOutput(
            loss=loss,
            prediction_outputs=prediction,
            hierarchy_features=tuple(f.view(batch, channels, f.shape[1], f.shape[2]) for f in encoded.features),
            loc=loc,
            scale=scale,
        )
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# CSA-FT: cross-scale attention fine-tuning head and the forecasting model
# ----------------------------------------------------------------------------------------------------------------------


class HiMTMForecastProjection(nn.Linear):
    """The flatten (or pooled) features -> horizon layer of CSA-FT; its own class so that `_init_weights` can give it
    `config.forecast_head_init` (with `"zeros"` a fresh head forecasts the look-back mean)."""


class HiMTMCrossScaleHead(nn.Module):
    """CSA-FT: tokens of all hierarchies, projected to one width and tagged with a scale embedding, attend to each
    other across scales, then a flatten (or mean) + linear layer gives the horizon.

    With `csa_attention="local"` a token attends only to the tokens of all scales that cover the same coarsest-level
    span (a group of `2**K - 1` tokens for K hierarchies), which keeps the cost linear in the look-back; the
    token order seen by the flatten projection is the same for both modes.

    With `use_csa=False` the attention layers are skipped (flatten head over the same multi-scale tokens), which
    isolates the effect of the cross-scale attention itself.
    """

    def __init__(self, config: HiMTMConfig):
        super().__init__()
        specs = config.hierarchy_specs()
        width = specs[0].d_model
        self.projections = nn.ModuleList(
            nn.Linear(s.d_model, width) if s.d_model != width else nn.Identity() for s in specs
        )
        self.scale_embedding = nn.Parameter(torch.zeros(len(specs), width))
        num_layers = config.csa_num_layers if config.use_csa else 0
        self.layers = nn.ModuleList(
            HiMTMTransformerBlock(config, width, config.csa_num_attention_heads, specs[0].ffn_dim)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.local = config.csa_attention == "local"
        self.head_type = config.head_type
        num_tokens = sum(s.num_tokens for s in specs)
        in_features = num_tokens * width if self.head_type == "flatten" else width
        self.dropout = nn.Dropout(config.head_dropout)
        self.projection = HiMTMForecastProjection(in_features, config.prediction_length)

    def forward(self, features: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        # features[i]: (series, num_tokens_i, d_i) -> tokens: (series, sum_i num_tokens_i, d_0)
        tokens = torch.cat(
            [proj(f) + self.scale_embedding[i] for i, (proj, f) in enumerate(zip(self.projections, features))], dim=1
        )
        if self.layers and self.local:
            tokens = self._attend_locally(tokens, [f.shape[1] for f in features])  # same shape, scale-major order
        elif self.layers:
            tokens = self._attend(tokens)  # every token over all scales' tokens
        tokens = self.norm(tokens)
        pooled = tokens.flatten(1) if self.head_type == "flatten" else tokens.mean(dim=1)
        return self.projection(self.dropout(pooled))  # (series, prediction_length)

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens, _ = layer(tokens)
        return tokens

    def _attend_locally(self, tokens: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Attention within each coarsest-level span: regroup `(series, sum_i N_i, d)` into
        `(series * N_coarsest, sum_i N_i / N_coarsest, d)`, attend, and restore the scale-major order."""
        series, _, width = tokens.shape
        units = counts[-1]
        per_unit = [n // units for n in counts]  # tokens of scale i under one coarsest token: 2**(K-1-i)
        scales = tokens.split(counts, dim=1)
        groups = torch.cat([t.reshape(series, units, k, width) for t, k in zip(scales, per_unit)], dim=2)
        groups = self._attend(groups.reshape(series * units, sum(per_unit), width))
        groups = groups.reshape(series, units, sum(per_unit), width).split(per_unit, dim=2)
        return torch.cat([g.reshape(series, n, width) for g, n in zip(groups, counts)], dim=1)


class _HeldLoadReport:
    """Holds back transformers' load report of `class_name` during a `from_pretrained` and logs it at the end unless
    `expected` was set (an exception always releases it: transformers' error then points at "the above report")."""

    def __init__(self, class_name: str):
        self.prefix, self.held, self.expected = f"{class_name} LOAD REPORT", None, False
        self.logger = logging.get_logger("transformers.modeling_utils")

    def filter(self, record) -> bool:
        if self.held is None and self.prefix in record.getMessage():
            self.held = record.getMessage()
            return False
        return True

    def __enter__(self) -> _HeldLoadReport:
        self.logger.addFilter(self)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.logger.removeFilter(self)
        if self.held and (exc_type is not None or not self.expected):
            self.logger.warning(self.held)


class HiMTMForPrediction(HiMTMPreTrainedModel):
    """HiMTM forecaster: HMT encoder on the full look-back, CSA-FT head, forecasts in original units."""

    # Pre-training-only modules are expected to be left out when transferring a pre-trained encoder.
    _keys_to_ignore_on_load_unexpected = [r"^ded\.", r"^reconstruction_heads\.", r"^hsd\.", r"^mask_token",
                                          r"^feature_predictors\."]

    def __init__(self, config: HiMTMConfig):
        super().__init__(config)
        self.model = HiMTMModel(config)
        self.head = HiMTMCrossScaleHead(config)
        self.post_init()
        self.freeze_encoder(config.freeze_encoder)

    def _freeze_fixed_parameters(self) -> None:
        self.freeze_encoder(self.config.freeze_encoder)

    def freeze_encoder(self, freeze: bool = True) -> None:
        """Linear probing switch: freezes (or unfreezes) the HMT encoder and records it in the config."""
        self.config.freeze_encoder = freeze
        self.model.requires_grad_(not freeze)
        self.train(self.training)

    def train(self, mode: bool = True) -> HiMTMForPrediction:
        super().train(mode)
        if self.config.freeze_encoder:
            self.model.eval()  # a frozen encoder gives deterministic features: no dropout while probing
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus: from a pre-training (or bare encoder) checkpoint the forecast head is
        new by design, so instead of transformers' load report listing every head tensor as MISSING this logs one line
        saying so (`output_loading_info` still lists them). Anything else amiss (a missing encoder weight, unexpected
        or mismatched tensors, a forecaster without head weights) keeps the full report."""
        want_info = bool(kwargs.pop("output_loading_info", False))
        with _HeldLoadReport(cls.__name__) as report:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
            source = (model.config.architectures or [None])[0]  # the class the checkpoint was saved from
            report.expected = (
                source in ("HiMTMForPretraining", "HiMTMModel")
                and all(k.startswith("head.") for k in info["missing_keys"])
                and not any(info[k] for k in ("unexpected_keys", "mismatched_keys", "error_msgs") if k in info)
            )
        if report.expected:
            logger.warning(
                f"HiMTMForPrediction from the {source} checkpoint {pretrained_model_name_or_path}: pre-trained "
                f"encoder loaded, new CSA-FT forecast head (prediction_length={model.config.prediction_length}, "
                f"forecast_head_init={model.config.forecast_head_init!r}); fine-tune it before forecasting."
            )
        return (model, info) if want_info else model

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        return_loss: bool = True,
        **kwargs,
    ) -> HiMTMForPredictionOutput | tuple:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `(batch_size, context_length, num_input_channels)`):
                The look-back window, in original units.
            past_observed_mask (`torch.Tensor` of the same shape, *optional*): 1 = observed, 0 = missing.
            future_values (`torch.FloatTensor` of shape `(batch_size, prediction_length, num_input_channels)`,
                *optional*): targets; when given, `loss` is the MSE in their units (or in the per-instance scaled
                space with `config.prediction_loss_space="instance"`).
            future_observed_mask (`torch.Tensor` of the same shape as `future_values`, *optional*): 1 = observed;
                missing targets are left out of the loss.
            output_hidden_states (`bool`, *optional*): return the encoder's embedded patches and block outputs.
            output_attentions (`bool`, *optional*): return the encoder's attention weights per block.
            return_dict (`bool`, *optional*): return a [`HiMTMForPredictionOutput`] instead of a tuple.
            return_loss (`bool`, defaults to `True`): compute the loss when targets are given.
        Returns:
            [`HiMTMForPredictionOutput`] or tuple.
        """
        config = self.config
        output_hidden_states, output_attentions, return_dict = _output_flags(
            config, output_hidden_states, output_attentions, return_dict
        )
        batch, channels = past_values.shape[0], config.num_input_channels
        patches, _, loc, scale = self.model.prepare_patches(past_values, past_observed_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not config.freeze_encoder):
            encoded = self.model.encode(patches, output_hidden_states=output_hidden_states,
                                        output_attentions=output_attentions)

        forecast = self.head(encoded.features)  # (batch * channels, prediction_length), scaled space
        forecast = forecast.view(batch, channels, config.prediction_length).transpose(1, 2)
        prediction = forecast * scale + loc  # (batch, prediction_length, channels), original units

        loss = None
        if future_values is not None and return_loss:
            target, target_observed = _check_values(
                "future_values", future_values, future_observed_mask, "future_observed_mask",
                config.prediction_length, config.num_input_channels, "prediction_length",
            )
            if config.prediction_loss_space == "instance":
                error = forecast - (target - loc) / scale
            else:  # "input": de-normalised forecast vs target, robust to near-constant look-backs
                error = prediction - target
            loss = observed_mse(error, target_observed)

        output = HiMTMForPredictionOutput(
            loss=loss,
            prediction_outputs=prediction,
            hierarchy_features=tuple(f.view(batch, channels, f.shape[1], f.shape[2]) for f in encoded.features),
            loc=loc,
            scale=scale,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "HiMTMForPrediction",
    "HiMTMForPredictionOutput",
    "HiMTMForPretraining",
    "HiMTMForPretrainingOutput",
    "HiMTMModel",
    "HiMTMModelOutput",
    "HiMTMPreTrainedModel",
]
