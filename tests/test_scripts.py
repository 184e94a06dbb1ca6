"""Command-line tests of the training scripts, including a 2-process `accelerate launch` (CPU, gloo).

The 2-process pre-training must reproduce the 1-process loss curve (same global batch and seed): the loop seeds the
masks per optimiser step and lets each process skip the random numbers of the samples in front of its own, so both
runs draw identical masks (dropout is 0 here: dropout masks are per process).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

PRETRAIN_ARGS = [
    "--context_length", "64", "--prediction_length", "16", "--patch_length", "8", "--num_hierarchies", "2",
    "--d_model", "16", "--num_attention_heads", "2", "--ffn_dim", "32", "--decoder_num_attention_heads", "2",
    "--csa_num_attention_heads", "2", "--dropout", "0", "--max_steps", "10", "--max_train_windows", "96",
    "--max_eval_windows", "40", "--per_device_eval_batch_size", "16", "--logging_steps", "1",
    "--eval_every_steps", "5", "--disable_tqdm", "--seed", "3", "--teacher_type", "ema",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="1", MPLBACKEND="Agg",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def _run(cmd: list[str], expect_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if expect_ok and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(path: Path, split: str) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in records if r["split"] == split]


def test_two_process_pretraining_matches_one_process(tmp_path):
    accelerate = shutil.which("accelerate")
    assert accelerate, "the accelerate CLI is needed"
    one, two, accumulated = tmp_path / "one", tmp_path / "two", tmp_path / "accum"
    _run([sys.executable, str(SCRIPTS / "pretrain.py"), *PRETRAIN_ARGS, "--output_dir", str(one),
          "--per_device_train_batch_size", "8", "--use_cpu"])
    _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
          str(SCRIPTS / "pretrain.py"), *PRETRAIN_ARGS, "--output_dir", str(two), "--per_device_train_batch_size", "4"])
    # The same global batch as 1 process x 2 micro-batches of gradient accumulation.
    _run([sys.executable, str(SCRIPTS / "pretrain.py"), *PRETRAIN_ARGS, "--output_dir", str(accumulated),
          "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--use_cpu"])

    run_args = json.loads((two / "run_args.json").read_text())
    assert run_args["environment"]["num_processes"] == 2
    assert run_args["environment"]["distributed_type"].endswith("MULTI_CPU")
    reference = _losses(one / "log.jsonl", "train")
    assert [s for s, _ in reference] == list(range(1, 11))
    for other in (two, accumulated):
        curve = _losses(other / "log.jsonl", "train")
        assert [s for s, _ in curve] == [s for s, _ in reference]
        np.testing.assert_allclose([v for _, v in curve], [v for _, v in reference], rtol=1e-4, atol=0)
        np.testing.assert_allclose([v for _, v in _losses(other / "log.jsonl", "val")],
                                   [v for _, v in _losses(one / "log.jsonl", "val")], rtol=1e-4)
        a, b = load_file(str(one / "model.safetensors")), load_file(str(other / "model.safetensors"))
        for key in a:
            np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), atol=1e-5, err_msg=key)
    assert len({round(v, 6) for _, v in reference}) > 5  # the curve moves: the comparison is not vacuous

    # 2-process fine-tuning: the test metrics cover every test window exactly once (gather_for_metrics drops the
    # padding duplicates) and equal a 1-process evaluation of the saved model.
    finetuned = tmp_path / "ft2"
    _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
          str(SCRIPTS / "finetune.py"), "--context_length", "64", "--prediction_length", "16",
          "--pretrained_model_path", str(two), "--output_dir", str(finetuned), "--max_steps", "2",
          "--per_device_train_batch_size", "4", "--max_train_windows", "32", "--max_eval_windows", "33",
          "--per_device_eval_batch_size", "64", "--disable_tqdm"])
    metrics = json.loads((finetuned / "metrics.json").read_text())
    sys.path.insert(0, str(ROOT))
    from himtm_hf.data import load_splits
    from himtm_hf.training import evaluate_model

    assert metrics["num_processes"] == 2
    assert metrics["test"]["num_windows"] == len(load_splits("ETTh1", context_length=64, prediction_length=16).test)
    assert metrics["val"]["num_windows"] == 33
    single = evaluate_model(finetuned, "ETTh1", write=False, max_eval_windows=33, use_cpu=True)
    for split in ("test", "val"):
        for key in ("mse", "mae", "mse_original_units"):
            assert single[split][key] == pytest.approx(metrics[split][key], rel=1e-5), (split, key)


def test_cli_refuses_existing_output_dir_and_bad_dataset(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    (out / "something.txt").write_text("x")
    result = _run([sys.executable, str(SCRIPTS / "main_job.py"), "--output_dir", str(out)], expect_ok=False)
    assert result.returncode != 0 and "--overwrite_output_dir" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["something.txt"]
    result = _run([sys.executable, str(SCRIPTS / "evaluate.py"), "--model_dir", str(tmp_path / "missing"),
                   "--dataset", "ETTh1"], expect_ok=False)
    assert result.returncode != 0
    result = _run([sys.executable, str(SCRIPTS / "finetune.py"), "--dataset", "NoSuchSet",
                   "--output_dir", str(tmp_path / "ft")], expect_ok=False)
    assert result.returncode != 0 and "Unknown dataset 'NoSuchSet'" in result.stderr
    assert not (tmp_path / "ft").exists()


def test_evaluate_script_on_saved_model(tmp_path):
    """scripts/evaluate.py evaluates a saved forecaster on every test window and writes metrics.json."""
    sys.path.insert(0, str(ROOT))
    from himtm_hf import HiMTMConfig, HiMTMForPrediction
    from himtm_hf.data import load_splits

    model_dir = tmp_path / "model"
    config = HiMTMConfig(context_length=32, prediction_length=8, num_input_channels=7, patch_length=8,
                         patch_stride=8, num_hierarchies=2, d_model=8, num_attention_heads=2, ffn_dim=16,
                         decoder_num_attention_heads=2, csa_num_attention_heads=2)
    HiMTMForPrediction(config).save_pretrained(model_dir)
    out = tmp_path / "eval"
    result = _run([sys.executable, str(SCRIPTS / "evaluate.py"), "--model_dir", str(model_dir), "--dataset", "ETTh1",
                   "--prediction_length", "8", "--output_dir", str(out), "--max_eval_windows", "64"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_windows"] == len(load_splits("ETTh1", context_length=32, prediction_length=8).test)
    assert metrics["val"]["num_windows"] == 64
    assert "| ETTh1 H=8 test |" in result.stdout
    assert (out / "forecast_plot.png").is_file() and (out / "run_args.json").is_file()
    result = _run([sys.executable, str(SCRIPTS / "evaluate.py"), "--model_dir", str(model_dir), "--dataset", "ETTh1",
                   "--prediction_length", "96", "--output_dir", str(tmp_path / "eval2")], expect_ok=False)
    assert result.returncode != 0 and "prediction_length=8, not 96" in result.stderr


def test_profile_step_reports_attention_share(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "profile_step.py"), "--context_length", "128", "--batch_size", "2",
         "--d_model", "16", "--num_heads", "2", "--ffn_dim", "32", "--rows", "5", "--model", "pretraining"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "scaled_dot_product" in result.stdout  # the table lists the attention kernels by name
    share = float(result.stdout.split("attention (scaled_dot_product_attention, forward + backward): ")[1].split("%")[0])
    assert 0.0 < share < 100.0
    bad = subprocess.run([sys.executable, str(SCRIPTS / "profile_step.py"), "--model", "classifier"],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert bad.returncode != 0 and "--model must be 'prediction' or 'pretraining'" in bad.stderr


@pytest.mark.slow
def test_gpu_benchmark_session_script_runs_its_steps_and_packs_the_records(tmp_path):
    """`scripts/gpu_benchmarks.sh` is only ever run on a lent GPU, where a broken flag would cost device minutes: run
    it on the CPU at the quick budgets (the compiled speed step skipped by its 0 limit, the optional variant step on)
    and check what it packs."""
    import tarfile

    out = tmp_path / "gpu"
    env = {**_env(), "RESULTS_OUT": str(out), "WORK_ROOT": str(tmp_path / "work"), "SPEED_BUDGET": "quick",
           "SPEED_DEVICE": "cpu", "FULL_BUDGET": "quick", "FULL_DATASETS": "ETTh1", "T_SPEED_COMPILE": "0",
           "T_SPEED": "400", "T_FULL": "400", "T_FULL_VARIANT": "400", "FULL_VARIANT_DATASETS": "ETTh1",
           "BASE_STEPS": "3", "BASE_ARGS": "--d_model 16 --num_attention_heads 2 --ffn_dim 32 "
           "--decoder_num_attention_heads 2 --csa_num_attention_heads 2 --per_device_train_batch_size 8 "
           "--max_eval_windows 32 --max_windows_per_dataset 256 --context_length 128 --datasets ETTh1,ETTh2 "
           "--eval_every_steps 3 --use_cpu"}
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_benchmarks.sh")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "speed_compiled skipped" in result.stdout
    assert result.stdout.count("   exit 0 at") == 4, result.stdout  # himtm-base, accuracy, speed, the variant step
    # himtm-base runs first, then the accuracy protocol, then speed
    order = [result.stdout.index(f"{name} (limit") for name in ("himtm_base", "acc_quick", "speed")]
    assert order == sorted(order), result.stdout
    with tarfile.open(out / "results.tgz") as archive:
        names = archive.getnames()
    base = {n.removeprefix("results/himtm-base/") for n in names if n.startswith("results/himtm-base/")}
    assert {"model.safetensors", "config.json", "README.md", "corpus.json", "metrics.json"} <= base, base
    assert not any(n.startswith("checkpoint") for n in base)  # the resumable checkpoints stay in the work folder
    assert any(n.startswith("results/himtm-base-hub/") for n in names)  # the push_to_hub dry-run folder
    records = [n for n in names if n.startswith("results/accuracy/") and n.endswith(".json")]
    assert len(records) == 16  # ETTh1 x 4 horizons x (3 models + the HiMTM variant)
    assert sum("-himtm-hsd_instance_norm_head_init_zeros-quick-" in n for n in records) == 4
    assert any(n.startswith("results/speed/cpu-quick-") for n in names)
    assert "##### " in (out / "all_logs.txt").read_text() and not list(out.glob("*.log"))
