"""Tests for himtm_hf.training run in-process on small slices of the real ETTh1 data.

Runs use tiny models (L=64, H=16) and a few optimiser steps; the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from script_loading import load_script

from himtm_hf import HiMTMConfig
from himtm_hf.data import load_splits
from himtm_hf.modeling_himtm import hierarchical_random_mask
from himtm_hf.training import (
    LAYOUT_FILES,
    DataArguments,
    EpochShuffleSampler,
    FinetuneArguments,
    MainJobArguments,
    ModelArguments,
    PretrainArguments,
    TrainArguments,
    cap_windows,
    evaluate_model,
    finetune,
    mask_draws_per_sample,
    parse_args,
    predict,
    prepare_output_dir,
    pretrain,
    run_main_job,
    seed_for_micro_batch,
    set_encoder_frozen,
    train_model,
)

ROOT = Path(__file__).resolve().parents[1]


L, H = 64, 16
TINY_MODEL = [
    "--patch_length", "8", "--num_hierarchies", "2", "--d_model", "16", "--num_attention_heads", "2",
    "--ffn_dim", "32", "--decoder_num_attention_heads", "2", "--csa_num_attention_heads", "2",
]
TINY_RUN = [
    "--context_length", str(L), "--prediction_length", str(H), "--per_device_train_batch_size", "8",
    "--max_train_windows", "40", "--max_eval_windows", "32", "--per_device_eval_batch_size", "16",
    "--logging_steps", "1", "--eval_every_steps", "4", "--disable_tqdm", "--use_cpu",
]


def tiny_config(**overrides) -> HiMTMConfig:
    kwargs = dict(context_length=L, prediction_length=H, num_input_channels=7, patch_length=8, patch_stride=8,
                  num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                  csa_num_attention_heads=2, dropout=0.0)
    kwargs.update(overrides)
    return HiMTMConfig(**kwargs)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def max_abs_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def test_model_arguments_expose_every_config_field():
    config_fields = [
        name for name, p in inspect.signature(HiMTMConfig.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    assert [f.name for f in dataclasses.fields(ModelArguments)] == config_fields
    model_args, data_args, train_args = parse_args(
        (ModelArguments, DataArguments, PretrainArguments),
        ["--d_model", "16,32", "--num_layers", "[1, 2]", "--ffn_dim", "64", "--scaling", "none", "--use_hmt", "false",
         "--teacher_type", "ema", "--hierarchy_loss_weights", "0.5,1", "--context_length", "96",
         "--prediction_length", "24", "--max_steps", "7"],
    )
    kwargs = model_args.to_config_kwargs()
    assert kwargs["d_model"] == [16, 32] and kwargs["num_layers"] == [1, 2] and kwargs["ffn_dim"] == 64
    assert kwargs["scaling"] is None and kwargs["use_hmt"] is False and kwargs["teacher_type"] == "ema"
    assert kwargs["hierarchy_loss_weights"] == [0.5, 1]
    # One --context_length/--prediction_length flag for the windows and the model.
    assert (data_args.context_length, data_args.prediction_length) == (96, 24)
    assert (model_args.context_length, model_args.prediction_length) == (96, 24)
    assert "dropout" not in kwargs  # not given = config default
    assert train_args.max_steps == 7 and train_args.output_dir == "outputs/pretrain"


@pytest.mark.parametrize("word", ["none", "None"])
def test_none_is_a_value_where_the_config_allows_it(word):
    """`--distillation_target_norm none` selects un-normalised targets; it is not "not given" (the default)."""
    (model_args,) = parse_args((ModelArguments,), ["--distillation_target_norm", word, "--scaling", word])
    kwargs = model_args.to_config_kwargs()
    assert kwargs["distillation_target_norm"] == "none" and kwargs["scaling"] is None
    assert HiMTMConfig(**kwargs).distillation_target_norm == "none"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_single_argument_file(tmp_path, suffix):
    values = {"dataset": "ETTh1", "context_length": 64, "d_model": [16, 32], "num_hierarchies": 2,
              "output_dir": str(tmp_path / "run"), "max_steps": 3, "linear_probe": True}
    path = tmp_path / f"args{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        import yaml

        path.write_text(yaml.safe_dump(values))
    model_args, data_args, train_args = parse_args((ModelArguments, DataArguments, FinetuneArguments), [str(path)])
    assert model_args.to_config_kwargs()["d_model"] == [16, 32]
    assert model_args.context_length == 64 and data_args.context_length == 64
    assert train_args.linear_probe is True and train_args.max_steps == 3
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(json.dumps({"not_an_argument": 1}))
    with pytest.raises(ValueError, match="not_an_argument"):
        parse_args((ModelArguments, DataArguments, FinetuneArguments), [str(bad)])


# ----------------------------------------------------------------------------------------------------------------------
# Determinism building blocks
# ----------------------------------------------------------------------------------------------------------------------


def test_masks_do_not_depend_on_how_the_global_batch_is_split():
    """The seeding scheme gives sample i of a global batch the same mask for any process / micro-batch split."""
    config = tiny_config()
    draws = config.num_input_channels * config.num_masking_units
    cpu = torch.device("cpu")

    def masks(per_batch: int, global_batch: int = 8) -> torch.Tensor:
        parts = []
        for position in range(global_batch // per_batch):
            seed_for_micro_batch(7, 3, position, per_batch, draws, cpu)
            parts.append(hierarchical_random_mask(per_batch * config.num_input_channels, config, cpu))
        return torch.cat(parts)

    one = masks(8)
    assert torch.equal(one, masks(4)) and torch.equal(one, masks(2))
    assert not torch.equal(one[:4], one[4:])  # different samples get different masks
    # The noise path (for a model forward that takes `mask_noise`) draws the very same numbers.
    shape = (config.num_input_channels, config.num_masking_units)
    noise = torch.cat([seed_for_micro_batch(7, 3, p, 4, draws, cpu, shape) for p in range(2)])
    torch.manual_seed(0)
    seed_for_micro_batch(7, 3, 0, 8, draws, cpu)
    assert torch.equal(noise.reshape(8 * 7, -1), torch.rand(8 * 7, config.num_masking_units))
    assert mask_draws_per_sample(torch.nn.Module()) is None
    # HiMTM takes `mask_noise`: the loop passes the noise, and the model masks exactly as with the global-RNG path.
    from himtm_hf import HiMTMForPretraining

    model = HiMTMForPretraining(config).eval()
    x = torch.randn(4, L, 7)
    seed_for_micro_batch(7, 3, 1, 4, draws, cpu)
    via_rng = model(past_values=x).mask
    via_noise = model(past_values=x, mask_noise=seed_for_micro_batch(7, 3, 1, 4, draws, cpu, shape)).mask
    assert torch.equal(via_rng, via_noise)
    assert torch.equal(via_rng.reshape(4 * 7, -1)[:, :: config.num_patches // config.num_masking_units],
                       one[4 * 7 :, :: config.num_patches // config.num_masking_units])


def test_sampler_and_caps():
    sampler = EpochShuffleSampler(50, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    data = list(range(100))
    capped = cap_windows(data, 10)
    assert len(capped) == 10 and capped[0] == 0 and capped[9] == 99
    assert cap_windows(data, None) is data and cap_windows(data, 1000) is data


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------


def run_pretrain_script(output_dir: Path, *extra: str) -> Path:
    pretrain_script = load_script("pretrain")

    return pretrain_script.main([*TINY_MODEL, *TINY_RUN, "--output_dir", str(output_dir), "--save_steps", "3",
                                 "--dropout", "0.1", "--seed", "5", *extra])


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    """Killed-and-resumed runs end with exactly the weights (and log) of an uninterrupted run.

    40 windows / batch 8 = 5 steps per epoch, so the runs cross epoch boundaries and resume mid-epoch. Dropout is on:
    per-step seeding makes it reproducible too.
    """
    constant = ["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "2"]
    run_pretrain_script(tmp_path / "full", "--max_steps", "12", *constant)
    # "Killed" at step 7 (checkpoints at 3, 6 and 7), resumed from step 6 with the larger max_steps.
    run_pretrain_script(tmp_path / "part", "--max_steps", "7", *constant)
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step-3", "step-6", "step-7"]
    run_pretrain_script(tmp_path / "part", "--max_steps", "12", *constant,
                        "--resume_from_checkpoint", str(tmp_path / "part" / "checkpoints" / "step-6"))
    # Cosine decay depends on max_steps, so interrupt with --stop_after_steps instead and resume from "latest".
    run_pretrain_script(tmp_path / "cos_full", "--max_steps", "12")
    run_pretrain_script(tmp_path / "cos_part", "--max_steps", "12", "--stop_after_steps", "5")
    run_pretrain_script(tmp_path / "cos_part", "--max_steps", "12", "--resume_from_checkpoint", "latest")

    for full, part in (("full", "part"), ("cos_full", "cos_part")):
        a, b = tmp_path / full, tmp_path / part
        assert max_abs_diff(a / "checkpoints/step-12/model.safetensors", b / "checkpoints/step-12/model.safetensors") == 0
        assert max_abs_diff(a / "model.safetensors", b / "model.safetensors") == 0
        assert read_log(a / "log.jsonl") == read_log(b / "log.jsonl")
    steps = [r["step"] for r in read_log(tmp_path / "full" / "log.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 13))


@pytest.mark.parametrize("metric", ["loss", "reconstruction_loss"])
def test_metric_for_best_model_picks_the_restored_weights(tmp_path, metric):
    """The saved model is the checkpoint of the validation with the lowest `metric`, and the validations marked
    `best` (the ones early stopping counts as improvements) are exactly those that set a new lowest `metric`."""
    out = tmp_path / metric
    run_pretrain_script(out, "--max_steps", "8", "--eval_every_steps", "1", "--save_steps", "1",
                        "--early_stopping_patience", "0", "--metric_for_best_model", metric)
    log = read_log(out / "log.jsonl")
    val = [r for r in log if r["split"] == "val"]
    assert len(val) == 8 and all({"loss", "reconstruction_loss", "distillation_loss"} <= r.keys() for r in val)
    best = min(val, key=lambda r: r[metric])
    summary = next(r for r in log if r["split"] == "best")
    assert summary["best_step"] == best["step"] and summary["best_val_loss"] == pytest.approx(best[metric])
    assert summary["metric_for_best_model"] == metric
    assert [r["best"] for r in val] == [r[metric] < min([v[metric] for v in val[:i]], default=np.inf)
                                        for i, r in enumerate(val)]
    checkpoint = out / "checkpoints" / f"step-{best['step']}" / "model.safetensors"
    assert max_abs_diff(checkpoint, out / "model.safetensors") == 0


def test_metric_for_best_model_errors(tmp_path):
    with pytest.raises(ValueError, match="'recon' is not among the validation losses of HiMTMForPretraining "
                                         r"\(distillation_loss, loss, reconstruction_loss\)"):
        run_pretrain_script(tmp_path / "typo", "--max_steps", "4", "--metric_for_best_model", "recon")
    log = tmp_path / "typo" / "log.jsonl"
    assert not log.exists() or not read_log(log)  # refused before the first training step
    with pytest.raises(ValueError, match="must name a validation loss"):
        TrainArguments(output_dir=str(tmp_path), metric_for_best_model=" ")
    # A checkpoint keeps the metric it chose by: resuming with another would compare two different losses. The
    # pre-training's default is the reconstruction loss (its distillation part's target moves with the weights).
    run_pretrain_script(tmp_path / "run", "--max_steps", "6", "--stop_after_steps", "3")
    with pytest.raises(ValueError, match="chose its best weights by 'reconstruction_loss'.*--metric_for_best_model 'loss'"):
        run_pretrain_script(tmp_path / "run", "--max_steps", "6", "--resume_from_checkpoint", "latest",
                            "--metric_for_best_model", "loss")


def test_output_dir_and_bad_dataset_errors(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "log.jsonl").write_text('{"step": 99}\n')
    args = (ModelArguments(patch_length=8, num_hierarchies=2, d_model="16", num_attention_heads=2, ffn_dim="32",
                           decoder_num_attention_heads=2, csa_num_attention_heads=2),
            DataArguments(dataset="ETTh1", context_length=L, prediction_length=H))
    train = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=8, max_train_windows=16,
                 max_eval_windows=16, disable_tqdm=True, use_cpu=True)
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        pretrain(*args, PretrainArguments(**train))
    # Without the package's marker nothing in the folder can be told from the user's: even --overwrite_output_dir
    # is refused, and nothing is touched.
    with pytest.raises(FileExistsError, match="carries no .himtm-run.json marker"):
        pretrain(*args, PretrainArguments(**train, overwrite_output_dir=True))
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "notes.txt"]
    assert (out / "log.jsonl").read_text() == '{"step": 99}\n'  # untouched
    run = tmp_path / "marked"
    train["output_dir"] = str(run)
    pretrain(*args, PretrainArguments(**train))
    first_log = read_log(run / "log.jsonl")
    (run / "notes.txt").write_text("keep me")
    pretrain(*args, PretrainArguments(**train, overwrite_output_dir=True))
    assert (run / "notes.txt").read_text() == "keep me"  # only the run's own files are replaced
    assert len(read_log(run / "log.jsonl")) == len(first_log)  # the old log was removed, not appended to
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        pretrain(*args, PretrainArguments(**train, resume_from_checkpoint="latest"))
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="Unknown dataset 'ETTh9'"):
        pretrain(args[0], DataArguments(dataset="ETTh9", context_length=L, prediction_length=H),
                 PretrainArguments(**{**train, "output_dir": str(fresh)}))
    assert not fresh.exists()
    with pytest.raises(ValueError, match="num_input_channels"):
        pretrain(dataclasses.replace(args[0], num_input_channels=3), args[1],
                 PretrainArguments(**{**train, "output_dir": str(fresh)}))


def test_finetune_end_to_end_writes_the_layout(tmp_path):
    """Pre-train -> fine-tune -> evaluate on ETTh1 slices; every layout file, metrics on every test window."""
    finetune_script = load_script("finetune")

    pretrained = run_pretrain_script(tmp_path / "pt", "--max_steps", "3", "--teacher_type", "ema")
    out = tmp_path / "ft"
    metrics = finetune_script.main([
        *TINY_RUN, "--output_dir", str(out), "--pretrained_model_path", str(pretrained), "--max_steps", "4",
        "--save_steps", "2", "--dropout", "0.0",
    ])
    expected = set(LAYOUT_FILES)
    assert expected <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    full_test = len(load_splits("ETTh1", context_length=L, prediction_length=H).test)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["num_windows"] == full_test == metrics["test"]["num_windows"]
    assert saved["test"]["num_values"] == full_test * H * 7
    for key in ("mse", "mae", "mse_original_units", "mae_original_units"):
        assert np.isfinite(saved["test"][key]) and np.isfinite(saved["val"][key])
    assert saved["val"]["num_windows"] == 32
    assert {"dataset", "prediction_length", "context_length", "best_val_loss", "epochs", "steps",
            "wall_time_s"} <= saved.keys()
    assert (saved["dataset"], saved["prediction_length"], saved["context_length"], saved["steps"]) == ("ETTh1", H, L, 4)
    log = read_log(out / "log.jsonl")
    train_records = [r for r in log if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    assert all({"step", "epoch", "split", "loss", "lr"} <= r.keys() for r in train_records)
    assert any(r["split"] == "val" for r in log) and log[-1]["split"] == "test"
    pre_log = read_log(pretrained / "log.jsonl")
    assert all({"reconstruction_loss", "distillation_loss"} <= r.keys() for r in pre_log if r["split"] == "train")
    run_args = json.loads((out / "run_args.json").read_text())
    assert {"model_args", "data_args", "train_args", "config", "command_line"} <= run_args.keys()
    assert run_args["train_args"]["pretrained_model_path"] == str(pretrained)
    config = json.loads((out / "config.json").read_text())
    assert config["prediction_length"] == H and config["architectures"] == ["HiMTMForPrediction"]
    assert (out / "forecast_plot.png").stat().st_size > 10_000

    # Re-evaluating the saved folder gives the same test metrics; wrong horizons and pre-training folders are refused.
    evaluation = evaluate_model(out, "ETTh1", output_dir=tmp_path / "eval", max_eval_windows=32, use_cpu=True)
    assert evaluation["test"]["num_windows"] == full_test
    assert evaluation["test"]["mse"] == pytest.approx(saved["test"]["mse"], rel=1e-5)
    assert evaluation["val"]["mse"] == pytest.approx(saved["val"]["mse"], rel=1e-5)
    assert evaluation["scaler_matches_model_dir"] is True
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "eval" / "forecast_plot.png").is_file()
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        evaluate_model(out, "ETTh1", output_dir=tmp_path / "eval", use_cpu=True)
    with pytest.raises(ValueError, match="prediction_length=16, not 96"):
        evaluate_model(out, "ETTh1", prediction_length=96, write=False)
    with pytest.raises(ValueError, match="not a forecaster"):
        evaluate_model(pretrained, "ETTh1", write=False)


def test_linear_probe_trains_only_the_head(tmp_path):
    pretrained = run_pretrain_script(tmp_path / "pt", "--max_steps", "2")
    out = tmp_path / "lp"
    finetune(ModelArguments(), DataArguments(context_length=L, prediction_length=H),
             FinetuneArguments(output_dir=str(out), pretrained_model_path=str(pretrained), linear_probe=True,
                               max_steps=3, per_device_train_batch_size=8, max_train_windows=24, max_eval_windows=16,
                               max_test_windows=50, plot_windows=0, disable_tqdm=True, use_cpu=True))
    before, after = load_file(str(pretrained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    encoder = [k for k in after if k.startswith("model.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert json.loads((out / "metrics.json").read_text())["test"]["num_windows"] == 50


def test_head_only_epochs_train_the_head_first_then_everything_at_half_the_rate(tmp_path):
    """LP-FT (`--head_only_epochs`): phase 1 leaves the encoder at its pre-trained weights and trains the head at the
    learning rate, phase 2 trains everything at half of it, and the saved model is the checkpoint with the lowest
    validation loss over both phases."""
    pretrained = run_pretrain_script(tmp_path / "pt", "--max_steps", "2")
    out = tmp_path / "lpft"
    metrics = finetune(ModelArguments(), DataArguments(context_length=L, prediction_length=H),
                       FinetuneArguments(output_dir=str(out), pretrained_model_path=str(pretrained),
                                         head_only_epochs=1, num_train_epochs=3, learning_rate=1e-3,
                                         lr_scheduler_type="constant", per_device_train_batch_size=8,
                                         max_train_windows=24, max_eval_windows=16, max_test_windows=50,
                                         eval_every_steps=1, save_steps=1, early_stopping_patience=0,
                                         logging_steps=1, plot_windows=0, disable_tqdm=True, use_cpu=True))
    head_log, full_log = read_log(out / "head_only" / "log.jsonl"), read_log(out / "log.jsonl")
    assert [r["lr"] for r in head_log if r["split"] == "train"] == [1e-3] * 3  # 24 windows / 8 = 3 steps an epoch
    assert [r["lr"] for r in full_log if r["split"] == "train"] == [5e-4] * 6
    assert metrics["steps"] == 9 and metrics["head_only_epochs"] == 1.0

    before = load_file(str(pretrained / "model.safetensors"))
    encoder = [k for k in before if k.startswith("model.")]

    def encoder_moved(checkpoint: Path) -> bool:
        weights = load_file(str(checkpoint / "model.safetensors"))
        return any(not torch.equal(before[k], weights[k]) for k in encoder)

    assert encoder and not any(encoder_moved(out / "head_only" / "checkpoints" / f"step-{i}") for i in (1, 2, 3))
    assert all(encoder_moved(out / "checkpoints" / f"step-{i}") for i in range(1, 7))
    # the best validation over both phases is what was saved (phase 2's steps count after phase 1's 3)
    val = [(r["loss"], out / "head_only" / "checkpoints" / f"step-{r['step']}", r["step"])
           for r in head_log if r["split"] == "val"]
    val += [(r["loss"], out / "checkpoints" / f"step-{r['step']}", 3 + r["step"]) for r in full_log if r["split"] == "val"]
    best_loss, best_checkpoint, best_step = min(val, key=lambda v: v[0])
    assert metrics["best_val_loss"] == pytest.approx(best_loss) and metrics["best_step"] == best_step
    assert max_abs_diff(best_checkpoint / "model.safetensors", out / "model.safetensors") == 0
    assert json.loads((out / "config.json").read_text())["freeze_encoder"] is False  # saved unfrozen
    (out / "notes.txt").write_text("keep me")
    prepare_output_dir(out, overwrite_output_dir=True)  # what --overwrite_output_dir does before a new run
    assert not (out / "head_only").exists() and (out / "notes.txt").read_text() == "keep me"

    common = dict(output_dir=str(tmp_path / "x"), pretrained_model_path=str(pretrained), num_train_epochs=2)
    for bad, message in ((dict(head_only_epochs=2), "must be below --num_train_epochs"),
                         (dict(head_only_epochs=1, linear_probe=True), "contradict each other"),
                         (dict(head_only_epochs=1, max_steps=4), "use --head_only_steps with --max_steps"),
                         (dict(head_only_epochs=-1), "must be >= 0")):
        with pytest.raises(ValueError, match=message):
            FinetuneArguments(**common, **bad)


def test_head_only_steps_split_max_steps_between_the_head_and_the_whole_model(tmp_path):
    """LP-FT counted in optimiser steps (`--head_only_steps` with `--max_steps`, what a fixed-step benchmark budget
    needs): phase 1 runs exactly `head_only_steps` with the encoder frozen, phase 2 the rest at half the rate."""
    pretrained = run_pretrain_script(tmp_path / "pt", "--max_steps", "2")
    out = tmp_path / "lpft"
    metrics = finetune(ModelArguments(), DataArguments(context_length=L, prediction_length=H),
                       FinetuneArguments(output_dir=str(out), pretrained_model_path=str(pretrained),
                                         head_only_steps=2, max_steps=5, learning_rate=1e-3,
                                         lr_scheduler_type="constant", per_device_train_batch_size=8,
                                         max_train_windows=24, max_eval_windows=16, max_test_windows=20,
                                         eval_every_steps=1, save_steps=1, early_stopping_patience=0,
                                         logging_steps=1, plot_windows=0, disable_tqdm=True, use_cpu=True))
    head_log, full_log = read_log(out / "head_only" / "log.jsonl"), read_log(out / "log.jsonl")
    assert [r["lr"] for r in head_log if r["split"] == "train"] == [1e-3] * 2
    assert [r["lr"] for r in full_log if r["split"] == "train"] == [5e-4] * 3
    assert metrics["steps"] == 5 and metrics["head_only_steps"] == 2
    before = load_file(str(pretrained / "model.safetensors"))
    phase_1 = load_file(str(out / "head_only" / "checkpoints" / "step-2" / "model.safetensors"))
    encoder = [k for k in before if k.startswith("model.")]
    assert encoder and all(torch.equal(before[k], phase_1[k]) for k in encoder)

    common = dict(output_dir=str(tmp_path / "x"), pretrained_model_path=str(pretrained))
    for bad, message in ((dict(head_only_steps=2), "--max_steps is not set"),
                         (dict(head_only_steps=4, max_steps=4), "must be below --max_steps"),
                         (dict(head_only_steps=1, head_only_epochs=1, max_steps=4), "give one"),
                         (dict(head_only_steps=1, max_steps=4, linear_probe=True), "contradict each other"),
                         (dict(head_only_steps=-1), "must be >= 0")):
        with pytest.raises(ValueError, match=message):
            FinetuneArguments(**common, **bad)


def test_set_encoder_frozen_freezes_patchtst_backbone_not_its_head():
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    model = PatchTSTForPrediction(PatchTSTConfig(num_input_channels=3, context_length=L, prediction_length=H,
                                                 patch_length=8, patch_stride=8, d_model=16, num_attention_heads=2,
                                                 num_hidden_layers=1, ffn_dim=32, pooling_type=None))
    set_encoder_frozen(model, True)
    assert not any(p.requires_grad for p in model.model.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    set_encoder_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="cannot be trained alone"):
        set_encoder_frozen(torch.nn.Linear(2, 2), True)


def test_generic_loop_trains_patchtst(tmp_path):
    """The same loop trains transformers' PatchTST (no update_teacher, forward without future_observed_mask)."""
    from transformers import PatchTSTConfig, PatchTSTForPrediction, PatchTSTForPretraining

    splits = load_splits("ETTh1", context_length=L, prediction_length=H)
    config = PatchTSTConfig(num_input_channels=7, context_length=L, prediction_length=H, patch_length=8,
                            patch_stride=8, d_model=16, num_attention_heads=2, num_hidden_layers=1, ffn_dim=32,
                            pooling_type=None, random_mask_ratio=0.4)
    assert mask_draws_per_sample(PatchTSTForPretraining(config)) == 7 * 8
    args = TrainArguments(output_dir=str(tmp_path / "pt"), max_steps=3, per_device_train_batch_size=8,
                          max_train_windows=32, max_eval_windows=16, logging_steps=1, disable_tqdm=True, use_cpu=True)
    result = train_model(PatchTSTForPretraining(config), splits.train, splits.val, args, is_pretraining=True)
    assert result.global_step == 3 and result.best_val_loss is not None
    args = dataclasses.replace(args, output_dir=str(tmp_path / "ft"))
    result = train_model(PatchTSTForPrediction(config), splits.train, splits.val, args)
    assert result.global_step == 3 and len(read_log(tmp_path / "ft" / "log.jsonl")) >= 4
    out = predict(result.model, splits.test, batch_size=64, max_windows=100, disable_tqdm=True)  # model's device
    assert out["predictions"].shape == out["targets"].shape == (100, H, 7)
    np.testing.assert_allclose(out["targets"][0], splits.test[0]["future_values"].numpy())


@pytest.mark.parametrize("is_pretraining", [True, False])
def test_torch_compile_trains_like_eager(tmp_path, is_pretraining):
    """`--torch_compile` trains through `torch.compile` (applied by the loop) and otherwise changes nothing:
    the same losses and weights as an eager run, an eager model back (no `_orig_mod.` keys). The `eager` backend
    runs Dynamo's tracing without compiling kernels, so this stays fast on CPU."""
    from himtm_hf.modeling_himtm import HiMTMForPrediction, HiMTMForPretraining

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    splits = load_splits("ETTh1", context_length=L, prediction_length=H)
    model_class = HiMTMForPretraining if is_pretraining else HiMTMForPrediction
    results = {}
    for name, extra in (("eager", {}), ("compiled", {"torch_compile_backend": "eager"})):
        args = TrainArguments(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=8,
                              max_train_windows=32, max_eval_windows=16, logging_steps=1, disable_tqdm=True,
                              use_cpu=True, seed=3, **extra)
        torch.manual_seed(0)
        results[name] = train_model(model_class(tiny_config(dropout=0.1)), splits.train, splits.val, args,
                                    is_pretraining=is_pretraining)
    assert sum(torch._dynamo.utils.counters["stats"].values()) > 0  # Dynamo traced the compiled run's steps
    compiled = results["compiled"].model
    assert type(compiled) is model_class and not any("_orig_mod" in k for k in compiled.state_dict())
    train_losses = {n: [r["loss"] for r in r_.history if r["split"] == "train"] for n, r_ in results.items()}
    np.testing.assert_allclose(train_losses["compiled"], train_losses["eager"], rtol=1e-5)
    for key, value in results["eager"].model.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=1e-4, atol=1e-6)


def test_torch_compile_arguments():
    assert TrainArguments(torch_compile_mode="reduce-overhead").torch_compile  # a mode or backend implies it
    assert not TrainArguments().torch_compile
    with pytest.raises(ValueError, match="--torch_compile_mode must be one of default, reduce-overhead"):
        TrainArguments(torch_compile_mode="fast")
    with pytest.raises(ValueError, match="--torch_compile_backend must be one of inductor, eager"):
        TrainArguments(torch_compile_backend="tensorrt")


def test_main_job_tiny(tmp_path, capsys):
    args = MainJobArguments(output_dir=str(tmp_path / "job"), context_length=L, prediction_length=H, patch_length=8,
                            num_hierarchies=2, d_model="16", ffn_dim="32", num_attention_heads=2, pretrain_steps=3,
                            finetune_steps=3, batch_size=8, eval_every_steps=2, max_train_windows=32,
                            max_eval_windows=16, disable_tqdm=True, use_cpu=True)
    summary = run_main_job(args)
    full_test = len(load_splits("ETTh1", context_length=L, prediction_length=H).test)
    assert summary["test"]["num_windows"] == full_test and summary["finetune_test_matches_evaluate"]
    job = tmp_path / "job"
    for name in ("metrics.json", "forecast_plot.png", "summary.md", "pretrain/model.safetensors",
                 "finetune/model.safetensors", "finetune/metrics.json", "evaluate/metrics.json"):
        assert (job / name).is_file(), name
    out = capsys.readouterr().out
    assert "| ETTh1 H=16 test |" in out
    assert f"checkpoint {job / 'finetune'} " in out and f"plot {job / 'forecast_plot.png'}," in out
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_main_job(args)
