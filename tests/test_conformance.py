"""Regressions for what transformers' own model test suite found in HiMTM: the DED decoder never initialised,
folders that name one Auto class, an EMA teacher that never moved under `Trainer` and came back trainable after
loading, no SDPA/eager switch or attention weights, no `hidden_size` / `num_hidden_layers`, a sine-cosine table
left at zero until `_init_weights`, hidden states off the autograd path, no gradient checkpointing."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from test_modeling import BLOCK_HIMTM, batch, tiny_config
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from himtm_hf import HiMTMForPrediction, HiMTMForPretraining, HiMTMModel
from himtm_hf.modeling_himtm import HiMTMPatchEmbedding, sincos_position_table

CLASSES = (HiMTMModel, HiMTMForPretraining, HiMTMForPrediction)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _assert_initialised(level, std: float) -> None:
    """A DED level's mask query and positions are finite draws of the configured std (not zeros, not garbage)."""
    for name in ("mask_query", "position_embedding"):
        values = getattr(level, name).detach()
        assert torch.isfinite(values).all(), name
        # The mask query holds one width's worth of draws (16-32 here), so its sample std is looser.
        low, high = (0.5, 1.6) if name == "mask_query" else (0.8, 1.2)
        assert low * std < values.std().item() < high * std, (name, values.std().item())


def test_fresh_decoder_queries_and_positions_have_the_configured_std():
    model = HiMTMForPretraining(tiny_config(initializer_range=0.05))
    assert len(model.ded.levels) == 3
    for level in model.ded.levels:
        _assert_initialised(level, 0.05)


def test_pretraining_from_an_encoder_folder_initialises_the_decoder(tmp_path):
    cfg = tiny_config()
    encoder = HiMTMModel(cfg)
    encoder.save_pretrained(tmp_path)
    model = HiMTMForPretraining.from_pretrained(tmp_path)
    for level in model.ded.levels:
        _assert_initialised(level, cfg.initializer_range)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], tensor), name
    assert torch.isfinite(model(batch(2, cfg)).loss)


def test_every_saved_folder_names_all_four_auto_classes(tmp_path):
    expected = {
        "AutoConfig": "configuration_himtm.HiMTMConfig",
        "AutoModel": "modeling_himtm.HiMTMModel",
        "AutoModelForPreTraining": "modeling_himtm.HiMTMForPretraining",
        "AutoModelForTimeSeriesPrediction": "modeling_himtm.HiMTMForPrediction",
    }
    for cls in CLASSES:
        cls(tiny_config()).save_pretrained(tmp_path / cls.__name__)
        assert json.loads((tmp_path / cls.__name__ / "config.json").read_text())["auto_map"] == expected, cls
        assert {"modeling_himtm.py", "configuration_himtm.py"} <= {p.name for p in (tmp_path / cls.__name__).iterdir()}


def test_cross_class_remote_code_loads_without_the_package(tmp_path):
    """A pre-training folder loads as a forecaster and a forecaster as a pre-training model with trust_remote_code,
    in a process where `himtm_hf` cannot be imported."""
    cfg = tiny_config()
    HiMTMForPretraining(cfg).save_pretrained(tmp_path / "pretraining")
    HiMTMForPrediction(cfg).save_pretrained(tmp_path / "forecaster")
    encoders = {name: HiMTMModel.from_pretrained(tmp_path / name).state_dict() for name in ("pretraining", "forecaster")}
    torch.save({"x": batch(2, cfg), "encoders": encoders}, tmp_path / "io.pt")
    script = BLOCK_HIMTM + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForPreTraining, AutoModelForTimeSeriesPrediction
        io = torch.load({str(tmp_path / 'io.pt')!r})
        for auto, folder, kind in ((AutoModelForTimeSeriesPrediction, "pretraining", "HiMTMForPrediction"),
                                   (AutoModelForPreTraining, "forecaster", "HiMTMForPretraining")):
            model = auto.from_pretrained({str(tmp_path)!r} + "/" + folder, trust_remote_code=True).eval()
            assert type(model).__name__ == kind and type(model).__module__.startswith("transformers_modules")
            for name, tensor in io["encoders"][folder].items():
                assert torch.equal(model.model.state_dict()[name], tensor), name
            out = model(io["x"])
            value = out.loss if kind == "HiMTMForPretraining" else out.prediction_outputs
            assert torch.isfinite(value).all()
            print("REMOTE_OK", folder, kind)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_OK pretraining HiMTMForPrediction" in result.stdout
    assert "REMOTE_OK forecaster HiMTMForPretraining" in result.stdout


class _Windows(Dataset):
    def __init__(self, n: int):
        series = batch(1, tiny_config())[0]
        self.items = [{"past_values": series + i * 0.01} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class _StudentTrajectory(TrainerCallback):
    """The student's embedding + encoder weights before training and after every optimiser step."""

    def __init__(self, model: HiMTMForPretraining):
        self.model, self.states = model, []

    def _snapshot(self) -> None:
        student = self.model.model
        self.states.append([p.detach().clone() for m in (student.embedding, student.encoder) for p in m.parameters()])

    def on_train_begin(self, args, state, control, **kwargs):
        self._snapshot()

    def on_step_end(self, args, state, control, **kwargs):
        self._snapshot()


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_ema_teacher_follows_the_student_under_trainer(tmp_path, optim):
    """`transformers.Trainer` calls nothing of HiMTM's, yet the EMA teacher is the momentum average of the student's
    weights after every step (t_0 = s_0, t_k = m t_(k-1) + (1 - m) s_k)."""
    momentum = 0.5
    model = HiMTMForPretraining(tiny_config(teacher_type="ema", teacher_momentum=momentum, dropout=0.0))
    trajectory = _StudentTrajectory(model)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=0.05, optim=optim)
    Trainer(model=model, args=args, train_dataset=_Windows(12), callbacks=[trajectory]).train()
    assert len(trajectory.states) == 4
    expected = trajectory.states[0]
    for student in trajectory.states[1:]:
        expected = [momentum * t + (1 - momentum) * s for t, s in zip(expected, student)]
    teacher = [p for m in (model.hsd.teacher_embedding, model.hsd.teacher_encoder) for p in m.parameters()]
    assert any(not torch.equal(t, s) for t, s in zip(teacher, trajectory.states[0]))
    for t, e in zip(teacher, expected):
        torch.testing.assert_close(t, e, rtol=1e-5, atol=1e-6)


def test_ema_teacher_stays_frozen_after_loading(tmp_path):
    HiMTMForPretraining(tiny_config(teacher_type="ema")).save_pretrained(tmp_path)
    model = HiMTMForPretraining.from_pretrained(tmp_path)
    teacher = {id(p) for p in model.hsd.parameters()}
    assert teacher and all(not p.requires_grad for p in model.hsd.parameters())
    assert all(id(p) not in teacher for p in model.parameters() if p.requires_grad)
    model, _ = HiMTMForPretraining.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not p.requires_grad for p in model.hsd.parameters())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_attention_implementation_is_a_real_switch(tmp_path, cls):
    cfg = tiny_config(dropout=0.0)
    cls(cfg).save_pretrained(tmp_path)
    sdpa = cls.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    eager = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    x = batch(2, cfg)
    kwargs = {"mask_noise": torch.rand(2, 3, cfg.num_masking_units)} if cls is HiMTMForPretraining else {}
    with torch.no_grad():
        reference = sdpa(x, **kwargs)
        with mock.patch("torch.nn.functional.scaled_dot_product_attention", side_effect=AssertionError("sdpa ran")):
            written_out = eager(x, output_attentions=True, **kwargs)  # the eager model never calls the SDPA kernel
            with pytest.raises(AssertionError, match="sdpa ran"):
                sdpa(x, **kwargs)
    torch.testing.assert_close(written_out[0], reference[0], rtol=1e-5, atol=1e-5)
    attentions = written_out.attentions
    assert len(attentions) == cfg.num_hidden_layers == 4
    tokens = cfg.num_patches - cfg.num_masked_patches if cls is HiMTMForPretraining else cfg.num_patches
    assert attentions[0].shape == (2 * 3, 2, tokens, tokens)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2 * 3, 2, tokens))


def test_config_has_transformers_common_names():
    cfg = tiny_config()  # d_model [16, 24, 32], num_layers [1, 2, 1], heads [2, 2, 4]
    assert cfg.hidden_size == 32 and cfg.num_hidden_layers == 4 and cfg.num_attention_heads == [2, 2, 4]
    cfg.hidden_size = 64
    assert cfg.d_model == 64
    with pytest.raises(ValueError, match="num_layers"):
        cfg.num_hidden_layers = 3


def test_sincos_table_is_filled_when_the_module_is_built():
    cfg = tiny_config()
    embedding = HiMTMPatchEmbedding(cfg)
    assert torch.equal(embedding.position_embedding, sincos_position_table(cfg.num_patches, 16))
    assert embedding.position_embedding.std() > 0


def test_hidden_states_lie_on_the_autograd_path():
    cfg = tiny_config()
    out = HiMTMModel(cfg)(batch(2, cfg), output_hidden_states=True)
    for hidden in out.hidden_states:
        hidden.retain_grad()
    out.last_hidden_state.sum().backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in out.hidden_states)


@pytest.mark.parametrize("cls", (HiMTMForPretraining, HiMTMForPrediction), ids=lambda c: c.__name__)
def test_gradient_checkpointing_gives_the_same_gradients(cls):
    cfg = tiny_config(dropout=0.0)
    x, y = batch(3, cfg), torch.randn(3, cfg.prediction_length, 3)
    kwargs = {"mask_noise": torch.rand(3, 3, cfg.num_masking_units)} if cls is HiMTMForPretraining else {
        "future_values": y}
    plain = cls(cfg).train()
    checkpointed = cls(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    for model in (plain, checkpointed):
        model(x, **kwargs).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_copied_ema_model_follows_its_own_optimiser():
    cfg = tiny_config(teacher_type="ema", teacher_momentum=0.5)
    model = copy.deepcopy(HiMTMForPretraining(cfg))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(batch(2, cfg)).loss.backward()  # copies the student into the teacher
    teacher = model.hsd.teacher_embedding.projection.weight
    before, student = teacher.detach().clone(), model.model.embedding.projection.weight
    optimizer.step()
    torch.testing.assert_close(teacher, 0.5 * before + 0.5 * student.detach())
