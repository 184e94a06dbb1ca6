"""Model-core behaviour: shapes, losses, ablations, masking, HSD teacher, save/load, transfer, equivariance, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForTimeSeriesPrediction,
)

from himtm_hf import HiMTMConfig, HiMTMForPrediction, HiMTMForPretraining, HiMTMModel
from himtm_hf.modeling_himtm import (
    hierarchical_random_mask,
    mask_at_level,
    masked_reconstruction_loss,
    sincos_position_table,
)

TINY = dict(
    context_length=64,
    prediction_length=8,
    num_input_channels=3,
    patch_length=4,
    patch_stride=4,
    num_hierarchies=3,
    d_model=[16, 24, 32],
    num_layers=[1, 2, 1],
    num_attention_heads=[2, 2, 4],
    ffn_dim=32,
    decoder_num_attention_heads=2,
    csa_num_attention_heads=2,
)


def tiny_config(**overrides) -> HiMTMConfig:
    return HiMTMConfig(**{**TINY, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def batch(b: int = 4, cfg: HiMTMConfig | None = None) -> torch.Tensor:
    cfg = cfg or tiny_config()
    t = torch.arange(cfg.context_length, dtype=torch.float32)
    season = torch.sin(2 * torch.pi * t / 12)[None, :, None]
    return season * torch.rand(b, 1, cfg.num_input_channels) * 3 + torch.randn(b, cfg.context_length, cfg.num_input_channels) * 0.1


# ---------------------------------------------------------------------------------------------------- shapes, ablations


def test_encoder_shapes_per_hierarchy():
    cfg = tiny_config()
    model = HiMTMModel(cfg).eval()
    out = model(batch(2), output_hidden_states=True)
    assert [tuple(f.shape) for f in out.hierarchy_features] == [(2, 3, 16, 16), (2, 3, 8, 24), (2, 3, 4, 32)]
    assert out.last_hidden_state.shape == (2, 3, 4, 32)
    assert len(out.hidden_states) == 5  # the embedded patches, then 1 + 2 + 1 blocks
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 3, 16, 16)] * 2 + [(2, 3, 8, 24)] * 2 + [(2, 3, 4, 32)]
    assert out.patch_input.shape == (2, 3, 16, 4)
    assert out.loc.shape == out.scale.shape == (2, 1, 3)


ABLATIONS = [
    {},
    {"teacher_type": "ema"},
    {"teacher_input": "masked"},
    {"distillation_target_norm": "token"},
    {"distillation_target_norm": "token", "teacher_input": "masked"},
    {"distillation_target_norm": "none"},
    {"use_hmt": False},
    {"use_ded": False},
    {"use_hsd": False},
    {"use_csa": False},
    {"csa_attention": "local"},
    {"csa_attention": "local", "num_hierarchies": 1, "d_model": 16, "num_layers": 2, "num_attention_heads": 2},
    {"head_type": "mean"},
    {"positional_encoding_type": "learned"},
    {"forecast_head_init": "zeros"},
    {"decoder_d_model": 8, "decoder_num_layers": 2},
    {"scaling": "mean"},
    {"scaling": None},
    {"num_hierarchies": 1, "d_model": 16, "num_layers": 2, "num_attention_heads": 2},
    {"num_hierarchies": 4, "d_model": 16, "num_layers": 1, "num_attention_heads": 2},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "full")
def test_every_variant_builds_and_trains_a_step(overrides):
    cfg = tiny_config(**overrides)
    x = batch(4, cfg)
    y = torch.randn(4, cfg.prediction_length, cfg.num_input_channels)
    for model, kwargs in ((HiMTMForPretraining(cfg), {}), (HiMTMForPrediction(cfg), {"future_values": y})):
        model.train()
        # No weight decay, so a changed weight means a gradient reached it. Two steps: a forecast head that starts at
        # zero (`forecast_head_init="zeros"`) passes the encoder its first gradient in the second step.
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for _ in range(2):
            out = model(x, **kwargs)
            assert out.loss.dim() == 0 and torch.isfinite(out.loss)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if isinstance(model, HiMTMForPretraining):
            model.update_teacher()
            n = cfg.effective_num_hierarchies
            assert out.hierarchy_reconstruction_losses.shape == (n,)
            assert out.hierarchy_distillation_losses.shape == (n,)
            assert out.reconstruction.shape == (4, 3, cfg.num_patches, cfg.patch_length)
            assert out.mask.shape == (4, 3, cfg.num_patches)
            if cfg.use_hsd:
                assert (out.hierarchy_distillation_losses > 0).all()
            else:
                assert (out.hierarchy_distillation_losses == 0).all()
        else:
            assert out.prediction_outputs.shape == (4, cfg.prediction_length, 3)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.startswith("model.embedding") for k in changed), "encoder did not train"


def test_ablation_switches_change_the_architecture():
    full = HiMTMForPretraining(tiny_config())
    assert len(full.model.encoder.hierarchies) == 3 and full.ded is not None and full.hsd is not None
    assert len(HiMTMForPretraining(tiny_config(use_hmt=False)).model.encoder.hierarchies) == 1
    no_hmt = HiMTMForPretraining(tiny_config(use_hmt=False))
    assert len(no_hmt.model.encoder.hierarchies[0].blocks) == 4  # the whole depth budget in one hierarchy
    no_ded = HiMTMForPretraining(tiny_config(use_ded=False))
    assert no_ded.ded is None and no_ded.mask_token is not None
    assert HiMTMForPretraining(tiny_config(use_hsd=False)).hsd is None
    assert len(HiMTMForPrediction(tiny_config(use_csa=False)).head.layers) == 0
    assert len(HiMTMForPrediction(tiny_config()).head.layers) == 1


@pytest.mark.parametrize("mode", ["global", "local"])
def test_cross_scale_attention_reach(mode):
    """A change to one finest token reaches every CSA-FT token in "global" mode and, in "local" mode, exactly the
    tokens of all scales that cover the same coarsest-level span (finest 0-3, middle 0-1, coarsest 0 here)."""
    cfg = tiny_config(csa_attention=mode, dropout=0.0, d_model=16)
    head = HiMTMForPrediction(cfg).head.eval()
    features = [torch.randn(2, n, 16) for n in (16, 8, 4)]
    seen = {}
    head.norm.register_forward_hook(lambda module, args, out: seen.__setitem__("tokens", args[0]))
    head(features)
    before = seen["tokens"].clone()
    moved = [f.clone() for f in features]
    moved[0][:, 0] += torch.randn(16)  # not a constant shift: LayerNorm would remove that
    head(moved)
    reached = ((seen["tokens"] - before).abs().sum(-1) > 1e-6)[0]
    if mode == "global":
        assert reached.all()
    else:
        expected = torch.zeros(28, dtype=torch.bool)
        expected[[0, 1, 2, 3, 16, 17, 24]] = True
        assert torch.equal(reached, expected)


def test_local_cross_scale_attention_keeps_the_token_layout():
    """Regrouping by span and back is an exact permutation round trip: with the attention layers replaced by the
    identity, "local" and "global" give the same forecast."""
    cfg = tiny_config(csa_attention="local", d_model=16)
    head = HiMTMForPrediction(cfg).head.eval()
    head._attend = lambda tokens: tokens
    features = [torch.randn(2, n, 16) for n in (16, 8, 4)]
    local = head(features)
    head.local = False
    torch.testing.assert_close(local, head(features))


# ---------------------------------------------------------------------------------------------------- HSD teacher


def test_shared_teacher_receives_no_gradient():
    """With the shared teacher, the distillation targets carry no graph: gradients come only from the student."""
    cfg = tiny_config(reconstruction_loss_weight=0.0, dropout=0.0)
    model = HiMTMForPretraining(cfg)
    targets, _, _ = _teacher_targets(model, cfg)
    assert all(not t.requires_grad and t.grad_fn is None for t in targets)
    # a backward through the distillation-only loss leaves the teacher path without gradient: the loss
    # gradient w.r.t. the targets is not propagated (they are leaves without grad)
    out = model(batch(3, cfg))
    out.loss.backward()
    assert out.distillation_loss > 0
    assert model.model.embedding.projection.weight.grad is not None  # the student still learns


def test_ema_teacher_gets_no_gradient_and_follows_momentum_rule():
    """The first forward copies the student; each optimiser step then moves the teacher by the momentum rule with
    nothing else called (the model's optimiser post-step hook)."""
    cfg = tiny_config(teacher_type="ema", teacher_momentum=0.9)
    model = HiMTMForPretraining(cfg)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(batch(4, cfg)).loss.backward()  # first forward copies the student into the teacher
    teacher_params = list(model.hsd.teacher_encoder.parameters()) + list(model.hsd.teacher_embedding.parameters())
    student_params = list(model.model.encoder.parameters()) + list(model.model.embedding.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher_params)
    assert bool(model.hsd.teacher_initialized)
    for t, s in zip(teacher_params, student_params):
        assert torch.equal(t, s)
    teacher_before = [t.detach().clone() for t in teacher_params]
    optimizer.step()
    student_now = [s.detach().clone() for s in student_params]
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, student_now))
    for t, before, s in zip(teacher_params, teacher_before, student_now):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * s, rtol=1e-6, atol=1e-6)  # float rounding only


def _teacher_targets(model, cfg, num_series=6):
    from himtm_hf.modeling_himtm import split_indices

    patches = torch.randn(num_series, cfg.num_patches, cfg.patch_length)
    mask = hierarchical_random_mask(num_series, cfg, patches.device)
    assert (mask.sum(dim=1) == cfg.num_masked_patches).all()
    _, masked_index = split_indices(mask, cfg.num_masked_patches)
    levels = cfg.effective_num_hierarchies
    level_masked = [split_indices(mask_at_level(mask, i), cfg.num_masked_patches // 2**i)[1] for i in range(levels)]
    with torch.no_grad():
        full = model.model.encoder(model.model.embedding(patches)).features
    return model.hsd.targets(model.model, patches, mask, masked_index, level_masked), full, level_masked


@pytest.mark.parametrize("norm", ["token", "instance", "none"])
def test_distillation_targets_are_normalised_as_configured(norm):
    """`distillation_target_norm`: "token" standardises each target token over its features, "instance" each
    feature over the teacher's tokens of the whole window (before the masked ones are picked), "none" leaves the
    teacher's features as they are."""
    cfg = tiny_config(distillation_target_norm=norm, dropout=0.0)
    model = HiMTMForPretraining(cfg).eval()
    targets, full, level_masked = _teacher_targets(model, cfg)
    for target, features, index in zip(targets, full, level_masked):
        picked = torch.gather(features, 1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
        if norm == "token":
            torch.testing.assert_close(target.mean(-1), torch.zeros_like(target[..., 0]), atol=1e-5, rtol=0)
            torch.testing.assert_close(target.var(-1, unbiased=False), torch.ones_like(target[..., 0]), atol=1e-3,
                                       rtol=0)
        elif norm == "instance":
            expected = (features - features.mean(1, keepdim=True)) / (
                features.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
            expected = torch.gather(expected, 1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
            torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)
            # not the per-token LayerNorm: token means are not all zero
            assert target.mean(-1).abs().max() > 1e-2
        else:
            torch.testing.assert_close(target, picked)


def test_instance_normalised_targets_ignore_features_shared_by_every_position():
    """A feature pattern added at every position of the window (the position-independent shortcut the shared
    teacher allows) leaves the "instance" targets unchanged, but moves the per-token "token" targets."""
    torch.manual_seed(0)
    for norm, unchanged in (("instance", True), ("token", False)):
        cfg = tiny_config(distillation_target_norm=norm, dropout=0.0)
        model = HiMTMForPretraining(cfg).eval()
        features = torch.randn(4, 16, 16)
        shifted = features + 3.0 * torch.randn(1, 1, 16)  # the same vector added to every token
        same = torch.allclose(model.hsd._normalize(features), model.hsd._normalize(shifted), atol=1e-4)
        assert same is unchanged, norm


def test_config_saved_with_the_old_boolean_keeps_its_target_normalisation(tmp_path):
    """Configs from before `distillation_target_norm` carry `normalize_distillation_targets`: True loads as
    "token" (what those checkpoints trained with), False as "none"; the field is saved, the boolean is not."""
    model = HiMTMForPretraining(tiny_config())
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["distillation_target_norm"] == "instance" and "normalize_distillation_targets" not in saved
    for old_value, expected in ((True, "token"), (False, "none")):
        legacy = {k: v for k, v in saved.items() if k != "distillation_target_norm"}
        legacy["normalize_distillation_targets"] = old_value
        config_file.write_text(json.dumps(legacy))
        assert HiMTMConfig.from_pretrained(tmp_path).distillation_target_norm == expected
    assert HiMTMConfig(normalize_distillation_targets=False).distillation_target_norm == "none"
    # built by hand with the boolean alone: True meant per-token normalisation, not today's default
    assert HiMTMConfig(normalize_distillation_targets=True).distillation_target_norm == "token"
    assert HiMTMConfig().distillation_target_norm == "instance"


@pytest.mark.parametrize("old_value, new_value", [(False, "instance"), (True, "none")])
def test_old_boolean_contradicting_the_new_field_is_an_error(old_value, new_value):
    """A hand-written config with both names must not silently keep one of them."""
    with pytest.raises(ValueError, match="old name of distillation_target_norm"):
        HiMTMConfig(normalize_distillation_targets=old_value, distillation_target_norm=new_value)
    # pairs that agree are accepted (True only says "normalise", so any normalisation agrees with it)
    agreeing = "none" if old_value is False else "instance"
    config = HiMTMConfig(normalize_distillation_targets=old_value, distillation_target_norm=agreeing)
    assert config.distillation_target_norm == agreeing


# ---------------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_realised_mask_ratio_and_cross_scale_consistency(ratio):
    cfg = tiny_config(context_length=256, mask_ratio=ratio)  # 64 patches, 16 coarse units
    mask = hierarchical_random_mask(500, cfg, torch.device("cpu"))
    assert mask.shape == (500, 64)
    assert torch.all(mask.float().mean(dim=1) == ratio)
    for level in range(1, 3):
        groups = mask.view(500, -1, 2**level)
        coarse = mask_at_level(mask, level)
        assert torch.equal(coarse, groups.all(dim=-1))  # masked exactly when all its fine patches are
        assert torch.equal(groups.any(dim=-1), groups.all(dim=-1))  # never partially masked
    # masks differ across series (random) and every unit is masked sometimes
    assert mask.float().mean(dim=0).min() > 0


def test_output_mask_matches_configured_ratio():
    cfg = tiny_config(mask_ratio=0.5)
    out = HiMTMForPretraining(cfg)(batch(8, cfg))
    assert out.mask.mean().item() == 0.5


def test_reconstruction_loss_ignores_visible_positions():
    cfg = tiny_config(dropout=0.0)
    model = HiMTMForPretraining(cfg)
    out = model(batch(4, cfg))
    mask = out.mask.flatten(0, 1)  # (series, patches)
    reconstruction = out.reconstruction.flatten(0, 1).detach()
    target = out.patch_input.flatten(0, 1)
    ones = torch.ones_like(target)
    loss = masked_reconstruction_loss(reconstruction, target, mask, ones)
    torch.testing.assert_close(loss, out.hierarchy_reconstruction_losses[0])
    noisy = reconstruction + torch.randn_like(reconstruction) * 100 * (1 - mask).unsqueeze(-1)
    torch.testing.assert_close(masked_reconstruction_loss(noisy, target, mask, ones), loss)
    changed = reconstruction + mask.unsqueeze(-1)  # a change at masked positions does move it
    assert masked_reconstruction_loss(changed, target, mask, ones) != loss


def test_simmim_ablation_loss_ignores_encoder_outputs_at_visible_positions():
    """In the no-DED variant the encoder produces features at every position; perturbing the visible ones
    must leave the reconstruction loss unchanged, perturbing the masked ones must not."""
    cfg = tiny_config(use_ded=False, use_hsd=False, dropout=0.0)
    model = HiMTMForPretraining(cfg).eval()  # eval: the mask draw is the forward's only random op
    x = batch(4, cfg)
    torch.manual_seed(1)
    mask = hierarchical_random_mask(4 * 3, cfg, torch.device("cpu"))  # the draw the forward will make
    torch.manual_seed(1)
    base = model(x)
    assert torch.equal(base.mask.flatten(0, 1).bool(), mask)

    def perturbed_loss(where: torch.Tensor) -> torch.Tensor:
        hook = model.model.encoder.hierarchies[0].norm.register_forward_hook(
            lambda module, args, output: output + 50.0 * where.unsqueeze(-1).float()
        )
        torch.manual_seed(1)
        try:
            return model(x).loss
        finally:
            hook.remove()

    torch.testing.assert_close(perturbed_loss(~mask), base.loss)
    assert not torch.allclose(perturbed_loss(mask), base.loss)


# ---------------------------------------------------------------------------------------------------- save / load


def test_save_and_reload_give_identical_outputs(tmp_path):
    cfg = tiny_config()
    x = batch(3, cfg)
    for cls in (HiMTMModel, HiMTMForPretraining, HiMTMForPrediction):
        model = cls(cfg).eval()
        model.save_pretrained(tmp_path / cls.__name__)
        files = {p.name for p in (tmp_path / cls.__name__).iterdir()}
        assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
        assert {"configuration_himtm.py", "modeling_himtm.py", "config.json"} <= files
        loaded = cls.from_pretrained(tmp_path / cls.__name__).eval()
        for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k
        torch.manual_seed(3)
        a = model(x)
        torch.manual_seed(3)
        b = loaded(x)
        first = a[0] if cls is not HiMTMModel else a.last_hidden_state
        second = b[0] if cls is not HiMTMModel else b.last_hidden_state
        assert torch.equal(first, second)


def test_auto_classes_resolve_himtm(tmp_path):
    cfg = tiny_config()
    assert isinstance(AutoConfig.for_model("himtm", **TINY), HiMTMConfig)
    assert isinstance(AutoModel.from_config(cfg), HiMTMModel)
    assert isinstance(AutoModelForPreTraining.from_config(cfg), HiMTMForPretraining)
    assert isinstance(AutoModelForTimeSeriesPrediction.from_config(cfg), HiMTMForPrediction)
    HiMTMForPrediction(cfg).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForTimeSeriesPrediction"] == "modeling_himtm.HiMTMForPrediction"
    assert auto_map["AutoConfig"] == "configuration_himtm.HiMTMConfig"


def test_pretraining_to_prediction_transfer_loads_every_encoder_weight(tmp_path):
    cfg = tiny_config(teacher_type="ema")
    pre = HiMTMForPretraining(cfg)
    pre(batch(2, cfg)).loss.backward()  # initialises the EMA teacher too
    pre.save_pretrained(tmp_path)
    pred, info = HiMTMForPrediction.from_pretrained(tmp_path, prediction_length=24, output_loading_info=True)
    assert pred.config.prediction_length == 24
    assert info["missing_keys"] and all(k.startswith("head.") for k in info["missing_keys"])
    assert not info["mismatched_keys"] and not info["error_msgs"]
    encoder_pre = pre.model.state_dict()
    encoder_pred = pred.model.state_dict()
    assert encoder_pre.keys() == encoder_pred.keys()
    for k in encoder_pre:
        assert torch.equal(encoder_pre[k], encoder_pred[k]), k
    assert pred(batch(2, cfg)).prediction_outputs.shape == (2, 24, 3)
    # linear probing: the encoder is frozen, the head trains
    probe = HiMTMForPrediction.from_pretrained(tmp_path, freeze_encoder=True)
    assert not any(p.requires_grad for p in probe.model.parameters())
    assert all(p.requires_grad for p in probe.head.parameters())
    probe.train()
    assert probe.head.training and not probe.model.training  # frozen encoder: no dropout while probing
    out = probe(batch(2, cfg), future_values=torch.randn(2, 8, 3))
    out.loss.backward()
    assert probe.head.projection.weight.grad is not None


def test_new_head_from_a_pretraining_checkpoint_is_one_log_line_not_a_missing_report(tmp_path, caplog):
    """From a pre-training checkpoint the head is new by design: one line says so instead of transformers' table of
    ~20 MISSING head tensors. A forecaster checkpoint that lacks head weights still gets the full report."""
    from safetensors.torch import load_file, save_file
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as hf_logging

    transformers_logger = hf_logging.get_logger("transformers.modeling_utils")
    HiMTMForPretraining(tiny_config()).save_pretrained(tmp_path / "pre")
    with CaptureLogger(transformers_logger) as captured, caplog.at_level("WARNING"):
        model, info = HiMTMForPrediction.from_pretrained(tmp_path / "pre", output_loading_info=True)
    assert "LOAD REPORT" not in captured.out
    assert "from the HiMTMForPretraining checkpoint" in caplog.text and "new CSA-FT forecast head" in caplog.text
    assert info["missing_keys"] and all(k.startswith("head.") for k in info["missing_keys"])  # still reported here
    assert isinstance(model, HiMTMForPrediction)

    HiMTMForPrediction(tiny_config()).save_pretrained(tmp_path / "pred")
    weights = tmp_path / "pred" / "model.safetensors"
    kept = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("head.projection")}
    save_file(kept, str(weights), metadata={"format": "pt"})
    caplog.clear()
    with CaptureLogger(transformers_logger) as captured, caplog.at_level("WARNING"):
        HiMTMForPrediction.from_pretrained(tmp_path / "pred")
    assert "LOAD REPORT" in captured.out and "head.projection.weight" in captured.out
    assert "new CSA-FT forecast head" not in caplog.text
    # A pre-training checkpoint that lacks an encoder weight: the full report, no "encoder loaded" line.
    weights = tmp_path / "pre" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if k != "model.embedding.position_embedding"},
              str(weights), metadata={"format": "pt"})
    caplog.clear()
    with CaptureLogger(transformers_logger) as captured, caplog.at_level("WARNING"):
        HiMTMForPrediction.from_pretrained(tmp_path / "pre")
    assert "LOAD REPORT" in captured.out and "model.embedding.position_embedding" in captured.out
    assert "new CSA-FT forecast head" not in caplog.text
    # A failing load from a pre-training checkpoint (a shape override that does not fit) still shows the report its
    # error points to.
    with CaptureLogger(transformers_logger) as captured, pytest.raises(RuntimeError, match="above report"):
        HiMTMForPrediction.from_pretrained(tmp_path / "pre", ffn_dim=64)
    assert "LOAD REPORT" in captured.out and "MISMATCH" in captured.out


def test_transfer_to_another_channel_count(tmp_path):
    pre = HiMTMForPretraining(tiny_config())
    pre.save_pretrained(tmp_path)
    pred = HiMTMForPrediction.from_pretrained(tmp_path, num_input_channels=5)
    x = torch.randn(2, 64, 5)
    assert pred(x).prediction_outputs.shape == (2, 8, 5)


# ---------------------------------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("a,b", [(3.0, -7.0), (0.01, 100.0), (250.0, 0.5)])
def test_forecasts_are_scale_equivariant_with_std_scaling(a, b):
    cfg = tiny_config(scaling="std")
    model = HiMTMForPrediction(cfg).eval()
    x = batch(4, cfg)
    with torch.no_grad():
        base = model(x).prediction_outputs
        shifted = model(x * a + b).prediction_outputs
    torch.testing.assert_close(shifted, base * a + b, rtol=1e-4, atol=1e-4 * a)


def test_prediction_loss_spaces_and_masking():
    cfg = tiny_config()
    model = HiMTMForPrediction(cfg).eval()
    x = batch(2, cfg)
    y = torch.randn(2, 8, 3)
    with torch.no_grad():
        out = model(x, future_values=y)
        # default "input": the de-normalised forecast against the target, in the target's units
        torch.testing.assert_close(out.loss, ((out.prediction_outputs - y) ** 2).mean())
        mask = torch.ones_like(y)
        mask[:, :4] = 0
        partial = model(x, future_values=y, future_observed_mask=mask).loss
        torch.testing.assert_close(partial, ((out.prediction_outputs - y) ** 2)[:, 4:].mean())
        # "instance": per-instance scaled space, invariant to the input's units
        model.config.prediction_loss_space = "instance"
        scaled = model(x, future_values=y).loss
        torch.testing.assert_close(scaled, (((out.prediction_outputs - y) / out.scale) ** 2).mean())
        big = model(x * 1000, future_values=y * 1000).loss
        torch.testing.assert_close(big, scaled, rtol=1e-3, atol=1e-4)


def test_input_space_loss_stays_bounded_on_a_flat_look_back():
    """A constant look-back makes the per-instance scale hit its floor; the scaled-space loss then explodes
    (what broke fine-tuning on ETTh2), the default input-space loss does not."""
    cfg = tiny_config()
    model = HiMTMForPrediction(cfg).eval()
    flat = torch.full((2, 64, 3), 0.5)
    y = flat[:, :8] + 1.0
    with torch.no_grad():
        assert model(flat, future_values=y).loss < 10
        model.config.prediction_loss_space = "instance"
        assert model(flat, future_values=y).loss > 1e6


def test_missing_values_with_observed_mask_are_ignored():
    cfg = tiny_config()
    model = HiMTMForPrediction(cfg).eval()
    x = batch(2, cfg)
    observed = torch.ones_like(x)
    observed[:, :10] = 0
    x_nan = x.clone()
    x_nan[:, :10] = float("nan")
    x_other = x.clone()
    x_other[:, :10] = 1e6
    with torch.no_grad():
        a = model(x_nan, past_observed_mask=observed).prediction_outputs
        b = model(x_other, past_observed_mask=observed).prediction_outputs
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make_input,match",
    [
        (lambda: torch.randn(64, 3), "3 dimensions"),
        (lambda: torch.randn(2, 60, 3), "context_length=64"),
        (lambda: torch.randn(2, 64, 4), "num_input_channels=3"),
        (lambda: torch.full((2, 64, 3), float("nan")), "NaN or inf"),
        (lambda: torch.full((2, 64, 3), float("inf")), "NaN or inf"),
    ],
)
def test_bad_inputs_raise_clear_errors(make_input, match):
    for model in (HiMTMForPrediction(tiny_config()), HiMTMForPretraining(tiny_config()), HiMTMModel(tiny_config())):
        with pytest.raises(ValueError, match=match):
            model(make_input())


def test_bad_masks_and_targets_raise():
    model = HiMTMForPrediction(tiny_config())
    x = torch.randn(2, 64, 3)
    with pytest.raises(ValueError, match="same shape"):
        model(x, past_observed_mask=torch.ones(2, 64))
    with pytest.raises(ValueError, match="prediction_length=8"):
        model(x, future_values=torch.randn(2, 9, 3))
    with pytest.raises(ValueError, match="future_observed_mask"):
        model(x, future_values=torch.randn(2, 8, 3), future_observed_mask=torch.ones(2, 8))
    nan_observed = x.clone()
    nan_observed[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="marks as observed"):
        model(nan_observed, past_observed_mask=torch.ones_like(x))


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"context_length": 72, "context_padding": "drop"}, "not divisible by 2\\*\\*\\(num_hierarchies-1\\)"),
        ({"context_length": 16}, "coarsest hierarchy would hold 1 token.*context_length >= 17"),
        ({"context_padding": "none"}, "context_padding"),
        ({"pretraining_scaling_statistics": "masked"}, "pretraining_scaling_statistics"),
        ({"patch_stride": 2}, "must equal `patch_length`"),
        ({"d_model": [16, 24]}, "one int"),
        ({"d_model": 18}, "not divisible by num_attention_heads"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"teacher_type": "momentum"}, "teacher_type"),
        ({"distillation_target_norm": "batch"}, "distillation_target_norm"),
        ({"csa_attention": "window"}, "csa_attention"),
        ({"positional_encoding_type": "rope"}, "positional_encoding_type"),
        ({"forecast_head_init": "xavier"}, "forecast_head_init"),
        ({"scaling": "minmax"}, "scaling"),
        ({"prediction_loss_space": "scaled"}, "prediction_loss_space"),
        ({"num_hierarchies": 5}, "coarsest hierarchy would hold 1"),
        ({"patch_length": 128, "patch_stride": 128}, "longer than `context_length`"),
        ({"use_hsd": False, "reconstruction_loss_weight": 0.0}, "no loss"),
        ({"hierarchy_loss_weights": [1.0, 1.0]}, "one per hierarchy"),
    ],
)
def test_invalid_configs_fail_with_a_fix(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


# ---------------------------------------------------------------------------------------------------- remote code, Trainer

BLOCK_HIMTM = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "himtm_hf" or name.startswith("himtm_hf."):
                raise ImportError("himtm_hf is blocked in this process")
            return None
    sys.meta_path.insert(0, _Block())
    try:
        import himtm_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("himtm_hf was importable")
    """
)


def test_remote_code_load_without_the_package(tmp_path):
    cfg = tiny_config()
    model = HiMTMForPrediction(cfg).eval()
    model.save_pretrained(tmp_path / "model")
    x = batch(2, cfg)
    with torch.no_grad():
        expected = model(x).prediction_outputs
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    script = BLOCK_HIMTM + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForTimeSeriesPrediction
        model = AutoModelForTimeSeriesPrediction.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(tmp_path / 'io.pt')!r})
        with torch.no_grad():
            out = model.eval()(io["x"]).prediction_outputs
        assert torch.equal(out, io["expected"]), (out - io["expected"]).abs().max()
        print("REMOTE_OK", type(model).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_OK HiMTMForPrediction" in result.stdout


def test_trainer_runs_a_step_and_reports_eval_loss(tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    cfg = tiny_config()

    class Windows(Dataset):
        def __init__(self, n):
            series = batch(1, tiny_config(context_length=64))[0]
            self.items = [
                {"past_values": series + i * 0.01, "future_values": series[:8] * 0.5} for i in range(n)
            ]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    for model in (HiMTMForPrediction(cfg), HiMTMForPretraining(cfg)):
        args = TrainingArguments(
            output_dir=str(tmp_path / type(model).__name__),
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            max_steps=2,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Windows(8), eval_dataset=Windows(6))
        result = trainer.train()
        assert result.global_step == 2
        metrics = trainer.evaluate()
        assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def test_package_does_not_import_itself_from_model_files():
    """The two model files must stay self-contained for trust_remote_code."""
    root = Path(__file__).resolve().parents[1] / "himtm_hf"
    for name in ("configuration_himtm.py", "modeling_himtm.py"):
        text = (root / name).read_text()
        assert "himtm_hf" not in text.replace("`himtm_hf`", ""), name
        for line in text.splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1]
                assert module.startswith((".", "torch", "transformers", "__future__", "copy", "math", "dataclasses", "typing",
                                          "weakref", "os", "numbers",
                                          "collections")), line


def test_mask_noise_decides_the_mask():
    cfg = tiny_config(dropout=0.0)
    model = HiMTMForPretraining(cfg).eval()
    x = batch(2, cfg)
    noise = torch.rand(2, 3, cfg.num_masking_units)
    a = model(x, mask_noise=noise)
    b = model(x, mask_noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)
    smallest = noise.argsort(dim=-1)[..., : cfg.num_masked_units]
    expected = torch.zeros(2, 3, cfg.num_masking_units, dtype=torch.bool).scatter(-1, smallest, True)
    assert torch.equal(a.mask.bool(), expected.repeat_interleave(cfg.num_patches // cfg.num_masking_units, -1))
    with pytest.raises(ValueError, match="mask_noise"):
        model(x, mask_noise=torch.rand(2, 3, cfg.num_masking_units + 1))


def test_checkpoint_saved_before_csa_attention_existed_loads_with_global_attention(tmp_path):
    """A forecaster saved before `csa_attention` existed was trained with global CSA-FT: it must load with that, not
    with today's default, and give the forecasts it gave before."""
    model = HiMTMForPrediction(tiny_config(csa_attention="global")).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["csa_attention"]  # what a config written before the field existed looks like
    config_file.write_text(json.dumps(saved))
    loaded = HiMTMForPrediction.from_pretrained(tmp_path).eval()
    assert loaded.config.csa_attention == "global" and not loaded.head.local
    x = batch(2)
    torch.testing.assert_close(loaded(x).prediction_outputs, model(x).prediction_outputs)
    assert HiMTMConfig().csa_attention == "local"  # new configs get the current default
    assert AutoConfig.from_pretrained(tmp_path).csa_attention == "global"


def test_sincos_positions_are_patchtsts_table_and_never_train(tmp_path):
    """`positional_encoding_type="sincos"` gives PatchTST's fixed table (centred, std 0.1); neither pre-training nor
    fine-tuning (after loading, which resets `requires_grad`) changes it, and it survives save/load."""
    from transformers import PatchTSTConfig
    from transformers.models.patchtst.modeling_patchtst import PatchTSTPositionalEncoding

    pretrain = HiMTMForPretraining(tiny_config(positional_encoding_type="sincos"))
    table = pretrain.model.embedding.position_embedding
    patchtst_config = PatchTSTConfig(d_model=table.shape[2], positional_encoding_type="sincos")
    expected = PatchTSTPositionalEncoding._init_pe(patchtst_config, table.shape[1])
    torch.testing.assert_close(table[0], expected.data)
    torch.testing.assert_close(HiMTMForPretraining(tiny_config()).model.embedding.position_embedding, table)
    learned = HiMTMForPretraining(tiny_config(positional_encoding_type="learned")).model.embedding.position_embedding
    assert learned.requires_grad and not torch.allclose(learned[0], expected.data)

    before = table.detach().clone()
    optimizer = torch.optim.AdamW(pretrain.parameters(), lr=0.1, weight_decay=0.1)
    pretrain(batch(4)).loss.backward()
    optimizer.step()
    torch.testing.assert_close(pretrain.model.embedding.position_embedding.detach(), before)

    pretrain.save_pretrained(tmp_path)
    # Loaded back, it is still no parameter: DDP (find_unused_parameters=False) would fail on a trainable tensor
    # that never gets a gradient.
    reloaded = HiMTMForPretraining.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.model.embedding.position_embedding, before)
    assert all("position_embedding" not in name for name, _ in reloaded.model.embedding.named_parameters())
    forecaster = HiMTMForPrediction.from_pretrained(tmp_path)
    forecaster.freeze_encoder(False)
    assert not forecaster.model.embedding.position_embedding.requires_grad
    forecaster.model.embedding.position_embedding.requires_grad_(True)  # even if a user flips it, it stays fixed
    optimizer = torch.optim.AdamW(forecaster.parameters(), lr=0.1, weight_decay=0.1)
    forecaster(batch(4), future_values=torch.randn(4, 8, 3)).loss.backward()
    optimizer.step()
    torch.testing.assert_close(forecaster.model.embedding.position_embedding.detach(), before)


def test_checkpoint_saved_before_positional_encoding_type_existed_keeps_learned_positions(tmp_path):
    """Checkpoints from before `positional_encoding_type` trained their positions: they load as `"learned"` (and go
    on training them), not as today's fixed sine-cosine default."""
    model = HiMTMForPrediction(tiny_config(positional_encoding_type="learned")).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["positional_encoding_type"]
    config_file.write_text(json.dumps(saved))
    loaded = HiMTMForPrediction.from_pretrained(tmp_path).eval()
    assert loaded.config.positional_encoding_type == "learned"
    assert loaded.model.embedding.learned_positions and loaded.model.embedding.position_embedding.requires_grad
    x = batch(2)
    torch.testing.assert_close(loaded(x).prediction_outputs, model(x).prediction_outputs)
    assert HiMTMConfig().positional_encoding_type == "sincos"


def test_decoder_positions_sincos_are_fixed_per_hierarchy_and_old_checkpoints_keep_learned_ones(tmp_path):
    """`decoder_positional_encoding_type="sincos"`: every DED level adds the fixed table of its own token count (a
    buffer: pre-training does not move it, save/load keeps it); `"learned"` trains one; a checkpoint saved before the
    field existed loads as `"learned"` with its trained values and reconstructs exactly as before."""
    fixed = HiMTMForPretraining(tiny_config(decoder_positional_encoding_type="sincos"))
    for level, spec in zip(fixed.ded.levels, fixed.config.hierarchy_specs()):
        torch.testing.assert_close(level.position_embedding, sincos_position_table(spec.num_tokens, spec.d_model))
        assert "position_embedding" not in dict(level.named_parameters())
    before = [level.position_embedding.clone() for level in fixed.ded.levels]
    optimizer = torch.optim.AdamW(fixed.parameters(), lr=0.1)
    fixed(batch(4)).loss.backward()
    optimizer.step()
    for level, table in zip(fixed.ded.levels, before):
        torch.testing.assert_close(level.position_embedding, table)
    fixed.save_pretrained(tmp_path / "fixed")
    reloaded = HiMTMForPretraining.from_pretrained(tmp_path / "fixed")
    torch.testing.assert_close(reloaded.ded.levels[0].position_embedding, before[0])

    learned = HiMTMForPretraining(tiny_config(decoder_positional_encoding_type="learned")).eval()
    assert learned.ded.levels[0].position_embedding.requires_grad
    learned.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["decoder_positional_encoding_type"]
    config_file.write_text(json.dumps(saved))
    old = HiMTMForPretraining.from_pretrained(tmp_path / "old").eval()
    assert old.config.decoder_positional_encoding_type == "learned"
    torch.testing.assert_close(old.ded.levels[0].position_embedding, learned.ded.levels[0].position_embedding)
    noise = torch.rand(4, 3, old.config.num_masking_units, generator=torch.Generator().manual_seed(0))
    x = batch(4)
    torch.testing.assert_close(old(x, mask_noise=noise).reconstruction, learned(x, mask_noise=noise).reconstruction)
    with pytest.raises(ValueError, match="decoder_positional_encoding_type"):
        HiMTMConfig(decoder_positional_encoding_type="rope")


def test_zero_forecast_head_forecasts_the_look_back_mean_and_then_learns(tmp_path):
    """`forecast_head_init="zeros"`: a new head, and the head of a forecaster built from a pre-training checkpoint,
    forecast each channel's look-back mean; one step moves the head off it and a second reaches the encoder. The
    default `"normal"` keeps the generic init."""
    x = batch(4) * 3 + 5
    fresh = HiMTMForPrediction(tiny_config(forecast_head_init="zeros"))
    HiMTMForPretraining(tiny_config(forecast_head_init="zeros")).save_pretrained(tmp_path)
    transferred = HiMTMForPrediction.from_pretrained(tmp_path)
    for model in (fresh, transferred):
        assert torch.count_nonzero(model.head.projection.weight) == 0
        forecast = model.eval()(x).prediction_outputs
        torch.testing.assert_close(forecast, x.mean(dim=1, keepdim=True).expand_as(forecast))
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3, weight_decay=0.0)
    embedding = fresh.model.embedding.projection.weight.detach().clone()
    for step in range(2):
        fresh.train()(x, future_values=torch.randn(4, 8, 3)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.count_nonzero(fresh.head.projection.weight) > 0
        assert torch.equal(fresh.model.embedding.projection.weight, embedding) == (step == 0)
    fresh.save_pretrained(tmp_path / "trained")  # loading keeps a trained head: the init only fills missing weights
    torch.testing.assert_close(HiMTMForPrediction.from_pretrained(tmp_path / "trained").head.projection.weight,
                               fresh.head.projection.weight)
    assert HiMTMConfig().forecast_head_init == "normal"
    normal = HiMTMForPrediction(tiny_config()).head.projection.weight
    assert 0.01 < normal.std().item() < 0.03  # initializer_range 0.02


# ------------------------------------------------------------------------------------------------------ torch.compile


@pytest.mark.parametrize("model_class", [HiMTMForPrediction, HiMTMForPretraining])
def test_forward_traces_into_one_graph_and_matches_eager(model_class):
    """`fullgraph=True` fails on any graph break: a host sync in the forward pass (counting masked tokens, checking
    values) would split the step and rule out CUDA graphs, the fix for HiMTM's kernel-launch-bound GPU steps at
    short look-backs. The `eager` backend traces with Dynamo without compiling kernels, so this stays fast on CPU."""
    torch._dynamo.reset()
    cfg = tiny_config(dropout=0.0, attention_dropout=0.0)
    model = model_class(cfg).eval()
    x = batch(cfg=cfg)
    kwargs = {"future_values": torch.randn(4, cfg.prediction_length, 3)} if model_class is HiMTMForPrediction else {
        "mask_noise": torch.rand(4, 3, cfg.num_masking_units)}
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    eager_out, compiled_out = model(past_values=x, **kwargs), compiled(past_values=x, **kwargs)
    torch.testing.assert_close(compiled_out.loss, eager_out.loss)
    compiled_out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and n.startswith("model."))

