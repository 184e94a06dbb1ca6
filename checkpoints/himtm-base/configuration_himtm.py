"""HiMTM model configuration.

This file is self-contained (it imports only `transformers`) so that `save_pretrained` can ship it next to the
weights for `trust_remote_code` loading.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PretrainedConfig

_SCALINGS = ("std", "mean", None)
_TEACHERS = ("shared", "ema")
_TEACHER_INPUTS = ("masked", "full")
_HEAD_TYPES = ("flatten", "mean")
_CSA_ATTENTIONS = ("global", "local")
_POSITIONAL_ENCODINGS = ("learned", "sincos")
_FORECAST_HEAD_INITS = ("normal", "zeros")
_DISTILLATION_TARGET_NORMS = ("none", "token", "instance")
# "drop" rather than "none": the command-line flags read the word "none" as "not given" (training/arguments.py), except
# for the fields where it is a value (`_NONE_IS_A_VALUE` there: distillation_target_norm).
_CONTEXT_PADDINGS = ("left", "drop")
_PRETRAINING_SCALING_STATISTICS = ("visible", "all")

# Field types checked by `HiMTMConfig._check_field_types` before anything reads the values: a string such as
# `d_model="64"` would otherwise be iterated character by character into the widths [6, 4].
_POSITIVE_INT_FIELDS = ("context_length", "prediction_length", "num_input_channels", "patch_length", "patch_stride",
                        "num_hierarchies", "decoder_num_layers", "decoder_num_attention_heads",
                        "csa_num_attention_heads")
_INT_OR_LIST_FIELDS = ("d_model", "num_layers", "num_attention_heads", "ffn_dim")
_FLOAT_FIELDS = ("dropout", "attention_dropout", "positional_dropout", "head_dropout", "mask_ratio", "teacher_momentum",
                 "reconstruction_loss_weight", "distillation_loss_weight", "minimum_scale", "initializer_range",
                 "pretraining_visible_scale_floor")
_BOOL_FIELDS = ("freeze_encoder", "use_hmt", "use_ded", "use_hsd", "use_csa")


def _is_int(value) -> bool:
    """True for Python and numpy integers; False for bools (a bool is an int to Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """True for finite ints and floats (Python or numpy); False for bools, strings and NaN/inf."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _type_error(name: str, expected: str, value) -> ValueError:
    """The error for a field of the wrong type, naming the field, the expected type and what was given."""
    hint = ""
    if isinstance(value, str):
        hint = " A value read as text (a command-line flag, a quoted YAML or JSON value) must be converted first."
    return ValueError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__}).{hint}")


@dataclass(frozen=True)
class HierarchySpec:
    """Resolved sizes of one HMT hierarchy (finest = index 0)."""

    index: int
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    num_tokens: int
    patches_per_token: int


def _as_list(name: str, value: int | Sequence[int], length: int) -> list[int]:
    """Broadcasts an int to `length` hierarchies, or checks that a list has one entry per hierarchy."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an int or a list of ints, got a bool.")
    if _is_int(value):
        return [int(value)] * length
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _type_error(name, "an int or a list of ints", value)
    if not all(_is_int(v) for v in value):
        raise _type_error(name, "an int or a list of ints", value)
    values = [int(v) for v in value]
    if len(values) != length:
        raise ValueError(
            f"`{name}` has {len(values)} entries but the model has {length} hierarchies; give one int "
            f"(used for every hierarchy) or a list of exactly {length} ints."
        )
    return values


class HiMTMConfig(PretrainedConfig):
    r"""
    Configuration of HiMTM (Hierarchical Multi-scale Masked Time-series Modelling with self-distillation,
    arXiv 2401.05012). One config drives the encoder ([`HiMTMModel`]), pre-training ([`HiMTMForPretraining`]) and
    forecasting ([`HiMTMForPrediction`]); the paper's components are named after the paper: HMT (hierarchical
    multi-scale transformer), DED (decoupled encoder-decoder), HSD (hierarchical self-distillation) and CSA-FT
    (cross-scale attention fine-tuning).

    Args:
        context_length (`int`, defaults to 512): look-back window length L. With `context_padding="left"` any
            length longer than one coarsest-hierarchy token (`patch_length * 2**(num_hierarchies - 1)` steps, 64
            with the defaults) works: 96, 336 and 720 are padded to 128, 384 and 768.
        context_padding (`str`, defaults to `"left"`): how a look-back that is not a whole number of coarsest-hierarchy
            tokens is fitted to the patch grid. `"left"`: zeros with observed mask 0 are prepended up to the next
            multiple of `patch_length * 2**(num_hierarchies - 1)` (`padded_context_length`); the scaler and the
            reconstruction loss ignore them, and a length that is already a multiple runs exactly as without padding.
            `"drop"`: the oldest `context_length mod patch_length` steps are dropped and the patch count must divide by
            `2**(num_hierarchies - 1)` (the only behaviour before this field, and what configs saved without it load
            with: their forecast head's size depends on the patch count).
        prediction_length (`int`, defaults to 96): forecast horizon H.
        num_input_channels (`int`, defaults to 7): number of series (channels). The model is channel-independent:
            every channel is encoded as its own univariate series with shared weights, so this only validates
            inputs and can be changed when transferring to data with another channel count.
        patch_length (`int`, defaults to 16): time steps per patch at the finest hierarchy.
        patch_stride (`int`, defaults to 16): step between patches. Must equal `patch_length` (non-overlapping)
            so that a masked patch leaks nothing to its visible neighbours.
        num_hierarchies (`int`, defaults to 3): number of HMT hierarchies; each coarser one merges 2 adjacent
            tokens into 1, so the number of patches must be divisible by `2 ** (num_hierarchies - 1)` (left padding
            makes it so with `context_padding="left"`).
        d_model (`int` or `list[int]`, defaults to 128): width of each hierarchy.
        num_layers (`int` or `list[int]`, defaults to 1): transformer blocks per hierarchy.
        num_attention_heads (`int` or `list[int]`, defaults to 8): heads per hierarchy.
        ffn_dim (`int` or `list[int]`, defaults to 256): feed-forward width per hierarchy.
        dropout (`float`, defaults to 0.1): dropout on the residual branches of encoder and decoder blocks.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        positional_dropout (`float`, defaults to 0.0): dropout after adding positional embeddings.
        positional_encoding_type (`str`, defaults to `"sincos"`): position information of the finest-level patches.
            `"sincos"`: a fixed sine-cosine table (centred, std 0.1, as PatchTST builds it), informative from the
            first step. `"learned"`: a trainable embedding per patch from a small random init (the default before
            `sincos`, and what checkpoints saved without this field load with); at short budgets it forecasts
            worse (docs/findings.md).
        decoder_positional_encoding_type (`str`, defaults to `"learned"`): position information that DED adds to
            each hierarchy's visible features and mask queries. `"learned"`: a trainable embedding per token (std
            `initializer_range` at init). `"sincos"`: a fixed sine-cosine table per hierarchy, as MAE's decoder
            uses. Measured on ETTh1 (500 pre-training steps, docs/architecture.md) the fixed table reconstructed the
            finest hierarchy worse (skill 0.15 against 0.33) while a linear probe forecast better from its coarsest
            features (MSE 0.688 against 0.748); fine-tuned, it was level at H = 96 and worse at H = 720
            (ablation variant `decoder_pos_sincos`).
        head_dropout (`float`, defaults to 0.0): dropout before the forecast projection.
        forecast_head_init (`str`, defaults to `"normal"`): initial weights of the forecast projection (the flatten
            layer of CSA-FT). `"normal"`: std `initializer_range` like every other linear layer; flattening ~56
            layer-normed tokens through it starts fine-tuning from random forecasts of ~1.8 standard deviations.
            `"zeros"`: a fresh head forecasts each channel's look-back mean (the instance normalisation's `loc`).
            Which is better depends on the data (docs/findings.md, finding 10): zeros fits faster, which helped
            on ETTm1, over-fitted ETTh2 and was mixed on ETTh1 at the `cpu` budget.
        decoder_num_layers (`int`, defaults to 1): DED regressor layers (cross-self attention) per hierarchy.
        decoder_d_model (`int`, *optional*): DED width; `None` uses each hierarchy's own width.
        decoder_num_attention_heads (`int`, defaults to 8): heads of the DED layers.
        mask_ratio (`float`, defaults to 0.5): fraction of coarsest-hierarchy tokens masked in pre-training; the
            mask is drawn at the coarsest hierarchy and broadcast to the finer ones.
        pretraining_scaling_statistics (`str`, defaults to `"visible"`): which values give the per-instance `loc` and
            `scale` in pre-training ([`HiMTMForPretraining`] only; forecasting always uses the whole look-back).
            `"visible"`: the mask is drawn first and the statistics come from the observed values of the visible
            patches, so the student is not told the masked region's mean and spread; the masked values are scaled
            with the same statistics (the reconstruction targets), and the HSD teacher sees the same scaled window. A
            series with fewer than `patch_length` observed visible steps falls back to all its observed values.
            `"all"`: statistics over the whole window, masked values included (the behaviour before this field, and
            what configs saved without it load with).
        pretraining_visible_scale_floor (`float`, defaults to 0.5): with `pretraining_scaling_statistics="visible"`,
            the visible part's scale is floored at this fraction of the whole window's scale (`loc` stays the visible
            mean). Without a floor (0.0) a visible part that is constant while the masked part moves gives targets
            of ~1e5. Measured on ~600 training windows of ETTh1, ETTh2 and ETTm1 at L = 64 and 512: the mean squared
            scaled target over the masked steps is ~1 with `"all"`, 5e6-1e8 without a floor (all three at L = 64,
            ETTh2 also at L = 512), and 1.3-3.3 (at most 15 for any series) with 0.5.
        teacher_type (`str`, defaults to `"shared"`): `"shared"` = the paper's stop-gradient teacher that uses the
            student's weights; `"ema"` = a separate teacher updated as `t = m * t + (1 - m) * s`.
        teacher_momentum (`float`, defaults to 0.996): `m` of the EMA teacher.
        teacher_input (`str`, defaults to `"full"`): what the HSD teacher encodes: `"full"` (the whole window,
            data2vec-style; its features at the masked positions are the targets) or `"masked"` (the masked patches
            only, CAE-style). `"full"` is the default since it forecast better in every run we compared
            (docs/results.md); `"masked"` was the default before.
        distillation_target_norm (`str`, defaults to `"instance"`): how the HSD teacher's features are normalised
            before the distillation loss, which keeps the target scale fixed: `"instance"` (each feature standardised
            over the teacher's tokens of the window, data2vec's choice for 1-D signals: a feature that is the same at
            every position then gives no target, so making features position-independent cannot lower the loss),
            `"token"` (a LayerNorm without affine over each token's features; the default before defaults v4 and
            what configs saved without this field load with: with the shared teacher the encoder collapses to
            features that are alike at every position and reconstructs no better than the visible mean,
            docs/architecture.md) or `"none"`. The legacy `normalize_distillation_targets=False` means `"none"`
            (and `True` means `"token"`); passed together with a contradicting `distillation_target_norm` it raises
            a `ValueError`.
        reconstruction_loss_weight (`float`, defaults to 1.0): weight of the patch reconstruction losses L_R.
        distillation_loss_weight (`float`, defaults to 1.0): weight of the feature distillation losses L_D.
        hierarchy_loss_weights (`list[float]`, *optional*): weight of each hierarchy's losses (normalised to sum
            to 1); `None` = equal weights.
        scaling (`str` or `None`, defaults to `"std"`): per-instance normalisation (RevIN-style, mask-aware):
            `"std"` (mean and std), `"mean"` (mean absolute value) or `None`.
        minimum_scale (`float`, defaults to 1e-5): floor on the per-instance scale.
        prediction_loss_space (`str`, defaults to `"input"`): where the forecasting MSE is computed. `"input"`: in the
            units of `future_values` (the de-normalised forecast against the target, as RevIN and PatchTST do; with
            standardised data this is the reported metric). `"instance"`: in the per-instance scaled space; it blows
            up on windows whose look-back is nearly constant (measured on ETTh2: training loss ~1e8, test MSE 20), so
            it is kept only for comparison.
        head_type (`str`, defaults to `"flatten"`): forecast projection after CSA-FT: `"flatten"` flattens every
            token of every scale into one linear layer (PatchTST-style), `"mean"` averages them (tiny head).
        csa_num_layers (`int`, defaults to 1): cross-scale attention layers of the CSA-FT head.
        csa_num_attention_heads (`int`, defaults to 8): heads of the CSA-FT layers.
        csa_attention (`str`, defaults to `"local"`): which tokens a CSA-FT token attends to. `"global"`: every
            token of every scale (cost quadratic in the look-back). `"local"`: the tokens of all scales that cover
            the same coarsest-level time span (1 coarsest token, 2 below it, 4 below those, ...), so cost grows
            linearly with the look-back; dependencies within a scale are left to the HMT's own self-attention.
            `"local"` is the default: it forecast as well as `"global"` (docs/results.md) at linear cost.
        freeze_encoder (`bool`, defaults to `False`): linear probing; the HMT encoder gets no gradient.
        use_hmt (`bool`, defaults to `True`): ablation switch; `False` uses one hierarchy whose depth is the sum
            of all hierarchies' depths (flat PatchTST-like encoder).
        use_ded (`bool`, defaults to `True`): ablation switch; `False` replaces the decoupled decoder with a
            SimMIM-style encoder that sees learnable mask tokens and predicts directly from its outputs.
        use_hsd (`bool`, defaults to `True`): ablation switch; `False` trains with reconstruction only.
        use_csa (`bool`, defaults to `True`): ablation switch; `False` drops the cross-scale attention layers
            (flatten head over the multi-scale tokens).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.

    transformers' common names read as: `hidden_size` = width of the coarsest hierarchy (of `last_hidden_state`),
    `num_hidden_layers` = encoder blocks over all hierarchies, `num_attention_heads` = the field above.
    """

    model_type = "himtm"

    def __init__(
        self,
        context_length: int = 512,
        prediction_length: int = 96,
        num_input_channels: int = 7,
        patch_length: int = 16,
        patch_stride: int = 16,
        num_hierarchies: int = 3,
        d_model: int | list[int] = 128,
        num_layers: int | list[int] = 1,
        num_attention_heads: int | list[int] = 8,
        ffn_dim: int | list[int] = 256,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        positional_dropout: float = 0.0,
        positional_encoding_type: str = "sincos",
        decoder_positional_encoding_type: str = "learned",
        head_dropout: float = 0.0,
        forecast_head_init: str = "normal",
        decoder_num_layers: int = 1,
        decoder_d_model: int | None = None,
        decoder_num_attention_heads: int = 8,
        mask_ratio: float = 0.5,
        teacher_type: str = "shared",
        teacher_momentum: float = 0.996,
        teacher_input: str = "full",
        distillation_target_norm: str | None = None,
        reconstruction_loss_weight: float = 1.0,
        distillation_loss_weight: float = 1.0,
        hierarchy_loss_weights: list[float] | None = None,
        scaling: str | None = "std",
        minimum_scale: float = 1e-5,
        prediction_loss_space: str = "input",
        head_type: str = "flatten",
        csa_num_layers: int = 1,
        csa_num_attention_heads: int = 8,
        csa_attention: str = "local",
        freeze_encoder: bool = False,
        use_hmt: bool = True,
        use_ded: bool = True,
        use_hsd: bool = True,
        use_csa: bool = True,
        initializer_range: float = 0.02,
        context_padding: str = "left",
        pretraining_scaling_statistics: str = "visible",
        pretraining_visible_scale_floor: float = 0.5,
        **kwargs,
    ):
        self.context_length = context_length
        self.context_padding = context_padding
        self.prediction_length = prediction_length
        self.num_input_channels = num_input_channels
        self.patch_length = patch_length
        self.patch_stride = patch_stride
        self.num_hierarchies = num_hierarchies
        self.d_model = list(d_model) if isinstance(d_model, (list, tuple)) else d_model
        self.num_layers = list(num_layers) if isinstance(num_layers, (list, tuple)) else num_layers
        self.num_attention_heads = (
            list(num_attention_heads) if isinstance(num_attention_heads, (list, tuple)) else num_attention_heads
        )
        self.ffn_dim = list(ffn_dim) if isinstance(ffn_dim, (list, tuple)) else ffn_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.positional_dropout = positional_dropout
        self.positional_encoding_type = positional_encoding_type
        self.decoder_positional_encoding_type = decoder_positional_encoding_type
        self.head_dropout = head_dropout
        self.forecast_head_init = forecast_head_init
        self.decoder_num_layers = decoder_num_layers
        self.decoder_d_model = decoder_d_model
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.mask_ratio = mask_ratio
        self.pretraining_scaling_statistics = pretraining_scaling_statistics
        self.pretraining_visible_scale_floor = pretraining_visible_scale_floor
        self.teacher_type = teacher_type
        self.teacher_momentum = teacher_momentum
        self.teacher_input = teacher_input
        # Configs saved before `distillation_target_norm` existed carry the boolean it replaced (False = "none",
        # True = normalised). A hand-written config whose two names disagree is an error: say so, don't pick one.
        legacy_normalize = kwargs.pop("normalize_distillation_targets", None)
        if (legacy_normalize is False and distillation_target_norm == "instance") or (
            legacy_normalize is True and distillation_target_norm == "none"
        ):
            raise ValueError(
                f"HiMTMConfig got normalize_distillation_targets={legacy_normalize} together with "
                f"distillation_target_norm={distillation_target_norm!r}, which contradict each other. The boolean is "
                "the old name of distillation_target_norm; drop it and pass distillation_target_norm alone ('token', "
                "'instance' or 'none')."
            )
        if legacy_normalize is False:
            distillation_target_norm = "none"
        elif legacy_normalize is True and distillation_target_norm is None:
            distillation_target_norm = "token"  # what the boolean's True meant when it existed
        self.distillation_target_norm = "instance" if distillation_target_norm is None else distillation_target_norm
        self.reconstruction_loss_weight = reconstruction_loss_weight
        self.distillation_loss_weight = distillation_loss_weight
        self.hierarchy_loss_weights = (
            list(hierarchy_loss_weights) if isinstance(hierarchy_loss_weights, (list, tuple)) else hierarchy_loss_weights
        )
        self.scaling = scaling
        self.minimum_scale = minimum_scale
        self.prediction_loss_space = prediction_loss_space
        self.head_type = head_type
        self.csa_num_layers = csa_num_layers
        self.csa_num_attention_heads = csa_num_attention_heads
        self.csa_attention = csa_attention
        self.freeze_encoder = freeze_encoder
        self.use_hmt = use_hmt
        self.use_ded = use_ded
        self.use_hsd = use_hsd
        self.use_csa = use_csa
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self._validate()

    # Fields added after checkpoints were already saved, with the value those checkpoints were trained with. A saved
    # config always holds every field, so a missing one means "saved before the field existed".
    _FIELDS_ADDED_LATER = {"csa_attention": "global", "positional_encoding_type": "learned",
                           "distillation_target_norm": "token", "context_padding": "drop",
                           "decoder_positional_encoding_type": "learned",
                           "pretraining_scaling_statistics": "all"}

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As `PretrainedConfig.from_dict`, but a config saved before a field existed gets the value its weights were
        trained with (not today's default): e.g. a forecaster saved before `csa_attention` loads with `"global"`.

        Keyword overrides (`from_pretrained(path, num_input_channels=3)`) are set by transformers after `__init__`, so
        the result is validated again: an override of the wrong type fails here, not inside the model."""
        config_dict = {**{k: v for k, v in cls._FIELDS_ADDED_LATER.items() if k not in config_dict}, **config_dict}
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result)._validate()
        return result

    # ------------------------------------------------------------------ transformers' common names
    @property
    def hidden_size(self) -> int:
        """Width of the coarsest hierarchy, i.e. of `last_hidden_state` (as Swin defines it); the name library code
        reads (DeepSpeed's `"auto"` sizes, `ConfigTester`). Setting it sets `d_model` for every hierarchy."""
        return self.hierarchy_specs()[-1].d_model

    @hidden_size.setter
    def hidden_size(self, value: int) -> None:
        self.d_model = value

    @property
    def num_hidden_layers(self) -> int:
        """Transformer blocks of the HMT encoder over all hierarchies (`len(hidden_states) - 1`)."""
        return sum(spec.num_layers for spec in self.hierarchy_specs())

    @num_hidden_layers.setter
    def num_hidden_layers(self, value: int) -> None:
        raise ValueError(
            f"HiMTMConfig has one depth per hierarchy: set `num_layers` (an int for every hierarchy, or a list of "
            f"{self.num_hierarchies}) instead of num_hidden_layers={value!r}."
        )

    # ------------------------------------------------------------------ derived sizes
    @property
    def effective_num_hierarchies(self) -> int:
        """Hierarchies actually built: `num_hierarchies`, or 1 when HMT is ablated."""
        return self.num_hierarchies if self.use_hmt else 1

    @property
    def coarsest_unit_length(self) -> int:
        """Time steps under one coarsest-hierarchy token, `patch_length * 2**(hierarchies - 1)` (64 with the
        defaults): the grid that left padding fills and the unit at which pre-training masks are drawn."""
        return self.patch_length * 2 ** (self.effective_num_hierarchies - 1)

    @property
    def padded_context_length(self) -> int:
        """Time steps the model cuts into patches: `context_length` rounded up to a whole number of coarsest units
        (`context_padding="left"`; 96 -> 128 with the defaults), or down to a whole number of patches (`"drop"`)."""
        if self.context_padding == "left":
            unit = self.coarsest_unit_length
            return -(-self.context_length // unit) * unit
        return self.context_length // self.patch_length * self.patch_length

    @property
    def num_padding_steps(self) -> int:
        """Unobserved zeros prepended to the look-back (0 with `"drop"` and when it is a whole number of units)."""
        return max(self.padded_context_length - self.context_length, 0)

    @property
    def num_patches(self) -> int:
        """Patches cut from one (padded) look-back window: the finest hierarchy's token count."""
        return self.padded_context_length // self.patch_length

    @property
    def num_masking_units(self) -> int:
        """Tokens of the coarsest hierarchy: the unit at which pre-training masks are drawn."""
        return self.num_patches // 2 ** (self.effective_num_hierarchies - 1)

    @property
    def num_masked_units(self) -> int:
        """Masked coarse units per series: `round(mask_ratio * num_masking_units)`, at least 1 and at most all but 1."""
        return min(max(1, round(self.mask_ratio * self.num_masking_units)), self.num_masking_units - 1)

    @property
    def num_masked_patches(self) -> int:
        """Masked finest-level patches per series (every masked coarse unit covers the same number of patches)."""
        return self.num_masked_units * (self.num_patches // self.num_masking_units)

    def hierarchy_specs(self) -> list[HierarchySpec]:
        """Per-hierarchy sizes after broadcasting ints and applying the `use_hmt` ablation."""
        n = self.num_hierarchies
        widths = _as_list("d_model", self.d_model, n)
        depths = _as_list("num_layers", self.num_layers, n)
        heads = _as_list("num_attention_heads", self.num_attention_heads, n)
        ffns = _as_list("ffn_dim", self.ffn_dim, n)
        if not self.use_hmt:
            # Flat ablation: one hierarchy at the finest width holding the whole depth budget.
            return [HierarchySpec(0, widths[0], sum(depths), heads[0], ffns[0], self.num_patches, 1)]
        return [
            HierarchySpec(i, widths[i], depths[i], heads[i], ffns[i], self.num_patches // 2**i, 2**i)
            for i in range(n)
        ]

    def resolved_hierarchy_loss_weights(self) -> list[float]:
        """Per-hierarchy loss weights, normalised to sum to 1."""
        n = self.effective_num_hierarchies
        if self.hierarchy_loss_weights is None or not self.use_hmt:
            return [1.0 / n] * n
        weights = [float(w) for w in self.hierarchy_loss_weights]
        total = sum(weights)
        return [w / total for w in weights]

    # ------------------------------------------------------------------ validation
    def _check_field_types(self) -> None:
        """Checks every field's type before any value is used: ints (numpy ints are accepted and stored as Python
        ints, so the config stays JSON-serialisable), finite numbers, bools, ints-or-lists-of-ints and optional
        fields. Range and choice checks follow in `_validate`. Python's own comparisons would otherwise fail with a
        bare `TypeError` (`dropout="0.1"`) or, worse, succeed on nonsense (`d_model="64"` iterated into [6, 4])."""
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _type_error(name, "a positive int", value)
            setattr(self, name, int(value))
        if not _is_int(self.csa_num_layers) or self.csa_num_layers < 0:
            raise _type_error("csa_num_layers", "an int >= 0", self.csa_num_layers)
        self.csa_num_layers = int(self.csa_num_layers)
        if self.decoder_d_model is not None:
            if not _is_int(self.decoder_d_model) or self.decoder_d_model < 1:
                raise _type_error("decoder_d_model", "a positive int or None", self.decoder_d_model)
            self.decoder_d_model = int(self.decoder_d_model)
        for name in _INT_OR_LIST_FIELDS:
            value = getattr(self, name)
            if _is_int(value):
                values = [int(value)]
                setattr(self, name, values[0])
            elif isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
                values = [int(v) for v in value]
                setattr(self, name, values)
            else:
                raise _type_error(name, "an int or a non-empty list of ints (one per hierarchy)", value)
            if any(v < 1 for v in values):
                raise ValueError(f"`{name}` must be positive (each entry >= 1), got {value!r}.")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not _is_number(value):
                raise _type_error(name, "a finite number", value)
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise _type_error(name, "True or False", value)
        weights = self.hierarchy_loss_weights
        if weights is not None and (
            isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence)
            or not all(_is_number(w) for w in weights)
        ):
            raise _type_error("hierarchy_loss_weights", "None or a list of finite numbers", weights)
        for name, choices in (("teacher_type", _TEACHERS), ("teacher_input", _TEACHER_INPUTS),
                              ("distillation_target_norm", _DISTILLATION_TARGET_NORMS), ("scaling", _SCALINGS),
                              ("prediction_loss_space", ("input", "instance")), ("head_type", _HEAD_TYPES),
                              ("csa_attention", _CSA_ATTENTIONS), ("positional_encoding_type", _POSITIONAL_ENCODINGS),
                              ("decoder_positional_encoding_type", _POSITIONAL_ENCODINGS),
                              ("forecast_head_init", _FORECAST_HEAD_INITS), ("context_padding", _CONTEXT_PADDINGS),
                              ("pretraining_scaling_statistics", _PRETRAINING_SCALING_STATISTICS)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise _type_error(name, f"one of {choices}", value)

    def _check_context_length(self) -> None:
        """Checks that the (padded) look-back splits into at least 2 coarsest-hierarchy tokens, which masking needs
        (1 masked, 1 visible); the error names the context lengths, patch lengths and hierarchy counts that work."""
        if self.context_padding not in _CONTEXT_PADDINGS:
            raise ValueError(f"`context_padding` must be one of {_CONTEXT_PADDINGS}, got {self.context_padding!r}.")
        factor = 2 ** (self.effective_num_hierarchies - 1)
        unit = self.coarsest_unit_length
        setting = (f"patch_length={self.patch_length} and num_hierarchies={self.num_hierarchies}"
                   + ("" if self.use_hmt else " (use_hmt=False: 1 hierarchy)"))
        if self.context_padding == "drop" and self.num_patches % factor != 0:
            multiples = sorted({unit * k for k in (max(2, self.context_length // unit), self.context_length // unit + 1)})
            raise ValueError(
                f"context_length={self.context_length} with patch_length={self.patch_length} gives "
                f"{self.num_patches} patches, which is not divisible by 2**(num_hierarchies-1) = {factor} "
                f"(num_hierarchies={self.num_hierarchies}). With context_padding='drop' use a context_length that is "
                f"a multiple of patch_length * {factor} (e.g. {multiples}), another patch_length or fewer hierarchies; "
                "or context_padding='left', which pads the window on the left to the next multiple."
            )
        units = self.num_patches // factor
        if units >= 2:
            return
        # The first length that gives 2 units, and the largest patch length / hierarchy count that do at this length.
        shortest = unit + 1 if self.context_padding == "left" else 2 * unit
        budget = self.context_length - 1 if self.context_padding == "left" else self.context_length // 2
        fixes = [f"context_length >= {shortest}"]
        if budget // factor >= 1:
            fixes.append(f"patch_length = patch_stride <= {budget // factor}")
        if self.use_hmt and budget // self.patch_length >= 1:
            fixes.append(f"num_hierarchies <= {(budget // self.patch_length).bit_length()}")
        if self.context_padding == "drop" and self.context_length > unit:
            fixes.append("context_padding='left'")
        raise ValueError(
            f"context_length={self.context_length} is too short for {setting}: the coarsest hierarchy would hold "
            f"{units} token(s) of {unit} steps (patch_length * 2**(num_hierarchies-1)) and masking needs at least 2. "
            f"With context_padding={self.context_padding!r} use {', or '.join(fixes)}."
        )

    def _validate(self) -> None:
        self._check_field_types()
        if self.minimum_scale <= 0:
            raise ValueError(
                f"`minimum_scale` must be > 0 (the floor on the per-instance scale, which the input is divided "
                f"by), got {self.minimum_scale}."
            )
        if self.initializer_range < 0:
            raise ValueError(f"`initializer_range` must be >= 0, got {self.initializer_range}.")
        if self.patch_length > self.context_length:
            raise ValueError(
                f"`patch_length` ({self.patch_length}) is longer than `context_length` ({self.context_length}); "
                "use a shorter patch or a longer look-back."
            )
        if self.patch_stride != self.patch_length:
            raise ValueError(
                f"`patch_stride` ({self.patch_stride}) must equal `patch_length` ({self.patch_length}): HiMTM masks "
                "and merges non-overlapping patches (overlap would leak masked values into visible patches). "
                f"Set patch_stride={self.patch_length}."
            )
        self._check_context_length()
        specs = self.hierarchy_specs()  # raises for lists of the wrong length
        for spec in specs:
            if spec.d_model % spec.num_heads != 0:
                raise ValueError(
                    f"Hierarchy {spec.index}: d_model={spec.d_model} is not divisible by num_attention_heads="
                    f"{spec.num_heads}; choose a head count that divides the width."
                )
            if spec.num_layers < 1:
                raise ValueError(f"Hierarchy {spec.index} has num_layers={spec.num_layers}; every hierarchy needs >= 1.")
        dec_widths = [self.decoder_d_model or s.d_model for s in specs]
        for i, width in enumerate(dec_widths):
            if width % self.decoder_num_attention_heads != 0:
                raise ValueError(
                    f"DED width {width} (hierarchy {i}) is not divisible by decoder_num_attention_heads="
                    f"{self.decoder_num_attention_heads}."
                )
        if specs[0].d_model % self.csa_num_attention_heads != 0:
            raise ValueError(
                f"CSA-FT width {specs[0].d_model} is not divisible by csa_num_attention_heads="
                f"{self.csa_num_attention_heads}."
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in (0, 1), got {self.mask_ratio}.")
        if self.pretraining_scaling_statistics not in _PRETRAINING_SCALING_STATISTICS:
            raise ValueError(
                f"`pretraining_scaling_statistics` must be one of {_PRETRAINING_SCALING_STATISTICS}, got "
                f"{self.pretraining_scaling_statistics!r}."
            )
        if not 0.0 <= self.pretraining_visible_scale_floor <= 1.0:
            raise ValueError(
                f"`pretraining_visible_scale_floor` must be in [0, 1] (a fraction of the whole window's scale), got "
                f"{self.pretraining_visible_scale_floor}."
            )
        if self.teacher_type not in _TEACHERS:
            raise ValueError(f"`teacher_type` must be one of {_TEACHERS}, got {self.teacher_type!r}.")
        if not 0.0 <= self.teacher_momentum <= 1.0:
            raise ValueError(f"`teacher_momentum` must be in [0, 1], got {self.teacher_momentum}.")
        if self.teacher_input not in _TEACHER_INPUTS:
            raise ValueError(f"`teacher_input` must be one of {_TEACHER_INPUTS}, got {self.teacher_input!r}.")
        if self.distillation_target_norm not in _DISTILLATION_TARGET_NORMS:
            raise ValueError(
                f"`distillation_target_norm` must be one of {_DISTILLATION_TARGET_NORMS}, got "
                f"{self.distillation_target_norm!r}."
            )
        if self.scaling not in _SCALINGS:
            raise ValueError(f"`scaling` must be one of {_SCALINGS}, got {self.scaling!r}.")
        if self.prediction_loss_space not in ("input", "instance"):
            raise ValueError(
                f"`prediction_loss_space` must be 'input' or 'instance', got {self.prediction_loss_space!r}."
            )
        if self.csa_attention not in _CSA_ATTENTIONS:
            raise ValueError(f"`csa_attention` must be one of {_CSA_ATTENTIONS}, got {self.csa_attention!r}.")
        if self.positional_encoding_type not in _POSITIONAL_ENCODINGS:
            raise ValueError(
                f"`positional_encoding_type` must be one of {_POSITIONAL_ENCODINGS}, got "
                f"{self.positional_encoding_type!r}."
            )
        if self.decoder_positional_encoding_type not in _POSITIONAL_ENCODINGS:
            raise ValueError(
                f"`decoder_positional_encoding_type` must be one of {_POSITIONAL_ENCODINGS}, got "
                f"{self.decoder_positional_encoding_type!r}."
            )
        if self.forecast_head_init not in _FORECAST_HEAD_INITS:
            raise ValueError(
                f"`forecast_head_init` must be one of {_FORECAST_HEAD_INITS}, got {self.forecast_head_init!r}."
            )
        if self.head_type not in _HEAD_TYPES:
            raise ValueError(f"`head_type` must be one of {_HEAD_TYPES}, got {self.head_type!r}.")
        for name in ("dropout", "attention_dropout", "positional_dropout", "head_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if self.reconstruction_loss_weight < 0 or self.distillation_loss_weight < 0:
            raise ValueError("Loss weights must be >= 0.")
        if self.reconstruction_loss_weight == 0 and (self.distillation_loss_weight == 0 or not self.use_hsd):
            raise ValueError(
                "Pre-training would have no loss: reconstruction_loss_weight is 0 and distillation is off. "
                "Set reconstruction_loss_weight > 0 or enable use_hsd with distillation_loss_weight > 0."
            )
        if self.hierarchy_loss_weights is not None and self.use_hmt:
            if len(self.hierarchy_loss_weights) != self.num_hierarchies:
                raise ValueError(
                    f"`hierarchy_loss_weights` has {len(self.hierarchy_loss_weights)} entries; give one per "
                    f"hierarchy ({self.num_hierarchies})."
                )
            if any(w < 0 for w in self.hierarchy_loss_weights) or sum(self.hierarchy_loss_weights) <= 0:
                raise ValueError("`hierarchy_loss_weights` must be >= 0 and sum to a positive number.")


__all__ = ["HiMTMConfig", "HierarchySpec"]
