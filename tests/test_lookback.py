"""Any look-back (`context_padding`) and pre-training scaling statistics from the visible patches
(`pretraining_scaling_statistics`): sizes, every model at common and odd look-backs, bit-identity for whole units,
old configs, padded units under the mask, errors that name valid settings, and the pipeline with a short history."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig

from himtm_hf import HiMTMConfig, HiMTMForPrediction, HiMTMForPretraining, HiMTMModel
from himtm_hf.data import SeriesScaler
from himtm_hf.modeling_himtm import masked_distillation_loss
from himtm_hf.pipeline import HiMTMForecastPipeline

# The default patching (patch_length 16, 3 hierarchies: 64-step coarsest units) with tiny widths.
SMALL = dict(prediction_length=12, num_input_channels=2, d_model=16, num_attention_heads=2, ffn_dim=32,
             decoder_num_attention_heads=2, csa_num_attention_heads=2)
LOOK_BACKS = [96, 104, 336, 512, 720, 97, 333, 1001]


def small_config(context_length: int, **overrides) -> HiMTMConfig:
    return HiMTMConfig(context_length=context_length, **{**SMALL, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def series(batch: int, length: int, channels: int = 2) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float32)
    season = torch.sin(2 * torch.pi * t / 24)[None, :, None]
    return 5 + 3 * season * torch.rand(batch, 1, channels) + 0.3 * torch.randn(batch, length, channels)


def assert_all_equal(a, b) -> None:
    """Every tensor (and tuple of tensors) of two model outputs is bit-identical."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[key]), key
        elif isinstance(value, tuple):
            assert all(torch.equal(x, y) for x, y in zip(value, b[key])), key


# ---------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "length,padded", [(96, 128), (104, 128), (336, 384), (512, 512), (720, 768), (97, 128), (333, 384),
                      (1001, 1024), (65, 128)],
)
def test_padded_sizes_come_from_the_config(length, padded):
    config = HiMTMConfig(context_length=length)
    assert config.coarsest_unit_length == 64
    assert config.padded_context_length == padded
    assert config.num_padding_steps == padded - length
    assert config.num_patches == padded // 16
    assert config.num_masking_units == padded // 64
    assert config.num_masked_units == padded // 128  # half of the units (mask_ratio 0.5)
    assert config.num_masked_patches == config.num_masked_units * 4
    assert [s.num_tokens for s in config.hierarchy_specs()] == [padded // 16, padded // 32, padded // 64]


def test_drop_keeps_the_old_rule():
    config = HiMTMConfig(context_length=520, context_padding="drop")
    assert (config.padded_context_length, config.num_patches, config.num_padding_steps) == (512, 32, 0)
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*\(num_hierarchies-1\).*context_padding='left'"):
        HiMTMConfig(context_length=96, context_padding="drop")
    ablated = HiMTMConfig(context_length=100, use_hmt=False)  # one hierarchy: the unit is one patch
    assert (ablated.coarsest_unit_length, ablated.num_patches, ablated.num_masking_units) == (16, 7, 7)


@pytest.mark.parametrize(
    "overrides,fixes",
    [
        ({"context_length": 64}, ["context_length >= 65", "patch_length = patch_stride <= 15", "num_hierarchies <= 2"]),
        ({"context_length": 40}, ["context_length >= 65", "patch_length = patch_stride <= 9", "num_hierarchies <= 2"]),
        ({"context_length": 100, "num_hierarchies": 4}, ["context_length >= 129", "patch_length = patch_stride <= 12",
                                                         "num_hierarchies <= 3"]),
        ({"context_length": 40, "context_padding": "drop", "num_hierarchies": 2},
         ["context_length >= 64", "patch_length = patch_stride <= 10", "num_hierarchies <= 1",
          "context_padding='left'"]),
    ],
)
def test_too_short_look_back_names_settings_that_work(overrides, fixes):
    with pytest.raises(ValueError, match="coarsest hierarchy would hold 1 token") as error:
        HiMTMConfig(**overrides)
    message = str(error.value)
    for fix in fixes:
        assert fix in message
    # every setting the message names is accepted
    base = {"context_padding": "left", **overrides}
    assert HiMTMConfig(**{**base, "context_length": int(fixes[0].split(">= ")[1])})
    patch = int(fixes[1].split("<= ")[1])
    assert HiMTMConfig(**{**base, "patch_length": patch, "patch_stride": patch})
    assert HiMTMConfig(**{**base, "num_hierarchies": int(fixes[2].split("<= ")[1])})


# ---------------------------------------------------------------------------------------------------- every model


@pytest.mark.parametrize("length", LOOK_BACKS)
def test_every_model_runs_at_any_look_back(length, tmp_path):
    config = small_config(length)
    x = series(3, length)
    n = config.num_patches

    encoder = HiMTMModel(config).eval()
    out = encoder(x)
    assert [tuple(f.shape) for f in out.hierarchy_features] == [(3, 2, n, 16), (3, 2, n // 2, 16), (3, 2, n // 4, 16)]
    assert out.patch_input.shape == (3, 2, n, 16)
    # the padding is unobserved: 0 in scaled space (the instance mean), and absent from the statistics
    padded = out.patch_input.flatten(2)[..., : config.num_padding_steps]
    assert torch.equal(padded, torch.zeros_like(padded))
    torch.testing.assert_close(out.loc, x.mean(dim=1, keepdim=True))

    pretrain = HiMTMForPretraining(config)
    result = pretrain(x)
    assert torch.isfinite(result.loss) and result.mask.shape == (3, 2, n)
    assert result.reconstruction.shape == (3, 2, n, 16)
    result.loss.backward()
    grads = [p.grad for p in pretrain.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    forecaster = HiMTMForPrediction(config)
    forecast = forecaster(x, future_values=series(3, 12))
    assert forecast.prediction_outputs.shape == (3, 12, 2) and torch.isfinite(forecast.loss)
    forecast.loss.backward()

    forecaster.eval().save_pretrained(tmp_path)
    loaded = HiMTMForPrediction.from_pretrained(tmp_path).eval()
    assert loaded.config.context_padding == "left" and loaded.config.num_patches == n
    torch.testing.assert_close(loaded(x).prediction_outputs, forecaster(x).prediction_outputs, rtol=0, atol=0)


def test_padding_is_the_same_as_unobserved_leading_steps():
    """A 96-step window run by a left-padding model gives what a 128-step model gives for the same window preceded
    by 32 steps marked unobserved (whatever their values): padding is missing data, nothing else."""
    short, full = small_config(96), small_config(128)
    x = series(2, 96)
    junk = torch.full((2, 32, 2), 1e3)
    x_full = torch.cat([junk, x], dim=1)
    mask_full = torch.cat([torch.zeros_like(junk), torch.ones_like(x)], dim=1)
    noise = torch.rand(2, 2, short.num_masking_units)
    for cls, kwargs in ((HiMTMModel, {}), (HiMTMForPrediction, {}), (HiMTMForPretraining, {"mask_noise": noise})):
        a = cls(short).eval()
        b = cls(full).eval()
        b.load_state_dict(a.state_dict())
        out_a, out_b = a(x, **kwargs), b(x_full, past_observed_mask=mask_full, **kwargs)
        for key in ("loc", "scale", "patch_input", "prediction_outputs", "loss", "reconstruction"):
            if key in out_a:
                torch.testing.assert_close(out_a[key], out_b[key])


@pytest.mark.parametrize("length", [128, 512])
@pytest.mark.parametrize("statistics", ["visible", "all"])
def test_whole_units_run_bit_identically_to_drop(length, statistics):
    """A look-back that is a whole number of coarsest units is not padded: outputs, losses and gradients equal those
    of the old rule (`"drop"`) bit for bit, with the same weights."""
    x = series(3, length)
    mask = torch.ones_like(x)
    mask[1, 10:40, 0] = 0  # gaps too
    noise = torch.rand(3, 2, small_config(length).num_masking_units)
    for cls, kwargs in ((HiMTMModel, {}), (HiMTMForPretraining, {"mask_noise": noise}),
                        (HiMTMForPrediction, {"future_values": series(3, 12)})):
        models = [cls(small_config(length, context_padding=p, pretraining_scaling_statistics=statistics))
                  for p in ("left", "drop")]
        models[1].load_state_dict(models[0].state_dict())
        outputs = []
        for model in models:
            torch.manual_seed(1)  # the same dropout draws
            out = model.train()(x, past_observed_mask=mask, **kwargs)
            if "loss" in out:
                out.loss.backward()
            outputs.append(out)
        assert_all_equal(*outputs)
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name


def test_config_saved_before_the_fields_existed_loads_the_old_behaviour(tmp_path):
    """A folder saved before `context_padding` / `pretraining_scaling_statistics` existed keeps its weights' shapes
    (the forecast head's input size depends on the patch count) and forecasts exactly as before."""
    old = dict(context_padding="drop", pretraining_scaling_statistics="all")
    x = series(2, 520)
    pretrain = HiMTMForPretraining(small_config(520, **old))
    forecaster = HiMTMForPrediction(small_config(520, **old)).eval()
    for model, folder in ((pretrain, tmp_path / "pretrain"), (forecaster, tmp_path / "forecast")):
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        del saved["context_padding"], saved["pretraining_scaling_statistics"]
        (folder / "config.json").write_text(json.dumps(saved))

    config = AutoConfig.from_pretrained(tmp_path / "forecast")
    assert (config.context_padding, config.pretraining_scaling_statistics, config.num_patches) == ("drop", "all", 32)
    loaded = HiMTMForPrediction.from_pretrained(tmp_path / "forecast").eval()
    assert torch.equal(loaded(x).prediction_outputs, forecaster(x).prediction_outputs)
    noise = torch.rand(2, 2, config.num_masking_units)
    reloaded = HiMTMForPretraining.from_pretrained(tmp_path / "pretrain").eval()
    assert torch.equal(reloaded(x, mask_noise=noise).loss, pretrain.eval()(x, mask_noise=noise).loss)
    transferred = HiMTMForPrediction.from_pretrained(tmp_path / "pretrain", prediction_length=24)
    assert transferred.config.context_padding == "drop" and transferred(x).prediction_outputs.shape == (2, 24, 2)
    # new configs get the new defaults
    assert (HiMTMConfig().context_padding, HiMTMConfig().pretraining_scaling_statistics) == ("left", "visible")


# ---------------------------------------------------------------------------------------------------- padded units


def test_masked_padded_unit_and_fully_unobserved_masked_region_give_finite_zero_losses():
    """L = 96 pads to two 64-step units: [32 padding + 32 real, 64 real]. Masking the first unit is allowed (its
    padding is left out of both losses); when every masked element is unobserved both losses are 0, not NaN."""
    config = small_config(96)
    model = HiMTMForPretraining(config)
    x = series(2, 96)
    first_unit = torch.tensor([0.0, 1.0]).expand(2, 2, 2)  # the smallest noise is masked
    out = model(x, mask_noise=first_unit)
    assert out.mask[..., :4].eq(1).all() and out.mask[..., 4:].eq(0).all()
    assert torch.isfinite(out.loss) and out.reconstruction_loss > 0 and out.distillation_loss > 0
    observed = torch.ones_like(x)
    observed[:, :32] = 0  # the masked unit's real steps are missing too
    out = model(x, past_observed_mask=observed, mask_noise=first_unit)
    assert out.reconstruction_loss == 0 and out.distillation_loss == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_distillation_leaves_out_tokens_without_an_observed_step():
    """Only masked tokens that cover an observed step count (tokens that are all padding or gap do not); with every
    token observed the loss is `F.mse_loss` bit for bit."""
    predicted, target = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    every = torch.ones(3, 4)
    assert torch.equal(masked_distillation_loss(predicted, target, every), F.mse_loss(predicted, target))
    some = every.clone()
    some[0, :2] = 0
    some[2, 3] = 0
    keep = some.bool()
    torch.testing.assert_close(masked_distillation_loss(predicted, target, some),
                               F.mse_loss(predicted[keep], target[keep]))
    assert masked_distillation_loss(predicted, target, torch.zeros(3, 4)) == 0


# ---------------------------------------------------------------------------------------------------- visible statistics


def test_visible_statistics_ignore_the_masked_values():
    """With `"visible"` (and no relative floor) the statistics come from the visible patches: changing only the masked
    values changes neither loc/scale nor what the student sees; with `"all"` (the old behaviour) it does."""
    x = series(2, 128)
    noise = torch.rand(2, 2, 2)  # two 64-step units, one masked per series
    for statistics in ("visible", "all"):
        config = small_config(128, pretraining_scaling_statistics=statistics, pretraining_visible_scale_floor=0.0)
        model = HiMTMForPretraining(config).eval()
        a = model(x, mask_noise=noise, output_hidden_states=True)
        masked_steps = a.mask.repeat_interleave(16, dim=-1).transpose(1, 2).bool()  # (batch, 128, channels)
        # contiguous like `x`: a transposed layout would sum in another order (a last-bit difference)
        changed = torch.where(masked_steps, x * 3 + 7, x).contiguous()
        b = model(changed, mask_noise=noise, output_hidden_states=True)
        assert torch.equal(a.mask, b.mask)
        visible = ~a.mask.bool()
        if statistics == "visible":
            assert torch.equal(a.loc, b.loc) and torch.equal(a.scale, b.scale)
            assert torch.equal(a.patch_input[visible], b.patch_input[visible])
            assert torch.equal(a.hidden_states[0], b.hidden_states[0])  # the student's embedded (visible) patches
            steps = (~masked_steps).float()
            expected = (x * steps).sum(1, keepdim=True) / steps.sum(1, keepdim=True)
            torch.testing.assert_close(a.loc, expected)
            assert not torch.equal(a.patch_input[~visible], b.patch_input[~visible])  # targets use the statistics
        else:
            assert not torch.allclose(a.loc, b.loc)
            torch.testing.assert_close(a.loc, x.mean(dim=1, keepdim=True))


def test_visible_scale_is_floored_relative_to_the_whole_window():
    """A constant visible part next to a moving masked part (flat stretches of real data): without the floor the
    targets are ~1e5, with the default floor (0.5 of the whole window's scale) they stay O(1); loc is the visible
    mean either way."""
    x = series(2, 128)
    x[:, 64:] = 4.0  # the second unit is constant...
    noise = torch.tensor([0.0, 1.0]).expand(2, 2, 2)  # ...and visible; the first unit is masked
    outputs = {}
    for floor in (0.0, 0.5):
        model = HiMTMForPretraining(small_config(128, pretraining_visible_scale_floor=floor)).eval()
        outputs[floor] = model(x, mask_noise=noise)
        torch.testing.assert_close(outputs[floor].loc, torch.full_like(outputs[floor].loc, 4.0))
    assert outputs[0.0].patch_input.abs().max() > 1e4
    torch.testing.assert_close(outputs[0.5].scale, 0.5 * x.std(dim=1, unbiased=False, keepdim=True))
    assert outputs[0.5].patch_input.abs().max() < 10 and torch.isfinite(outputs[0.5].loss)
    assert HiMTMConfig().pretraining_visible_scale_floor == 0.5


def test_visible_statistics_fall_back_when_the_visible_part_is_almost_all_padding():
    """L = 65: the first unit holds 63 padding steps and 1 real one. With the second unit masked, the 1 visible
    step cannot give statistics, so the series falls back to all its observed values (the old behaviour)."""
    config = small_config(65)
    model = HiMTMForPretraining(config).eval()
    x = series(2, 65)
    out = model(x, mask_noise=torch.tensor([1.0, 0.0]).expand(2, 2, 2))
    torch.testing.assert_close(out.loc, x.mean(dim=1, keepdim=True))
    assert torch.isfinite(out.loss) and out.scale.min() > 0.1


def test_forecasting_ignores_the_pretraining_statistics_switch():
    x = series(2, 96)
    a = HiMTMForPrediction(small_config(96, pretraining_scaling_statistics="visible")).eval()
    b = HiMTMForPrediction(small_config(96, pretraining_scaling_statistics="all")).eval()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x).prediction_outputs, b(x).prediction_outputs)


# ---------------------------------------------------------------------------------------------------- pipeline


def test_pipeline_forecasts_from_a_short_history_with_the_default_patching():
    """The pipeline pads a history shorter than the look-back itself (mask 0); the model then pads 96 to 128."""
    model = HiMTMForPrediction(small_config(96)).eval()
    scaler = SeriesScaler(mean=[5.0, 5.0], std=[2.0, 2.0], columns=["a", "b"])
    pipe = HiMTMForecastPipeline(model, scaler)
    values = series(1, 96)[0].numpy()
    frame = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=96, freq="h"), "a": values[:, 0],
                          "b": values[:, 1]})
    for rows in (20, 70, 96):
        out = pipe(frame.tail(rows).reset_index(drop=True))
        assert len(out) == 12 and np.isfinite(out[["a", "b"]].to_numpy()).all()
    short = frame.tail(20).reset_index(drop=True)
    scaled = torch.tensor(scaler.transform(short[["a", "b"]].to_numpy()), dtype=torch.float32)
    window = torch.cat([torch.zeros(76, 2), scaled])[None]
    mask = torch.cat([torch.zeros(76, 2), torch.ones(20, 2)])[None]
    direct = scaler.inverse_transform(model(window, past_observed_mask=mask).prediction_outputs[0].detach().numpy())
    np.testing.assert_allclose(pipe(short)[["a", "b"]].to_numpy(), direct, rtol=1e-5, atol=1e-5)
