"""Nothing a user made is lost or silently wrong: output folders, run locks, crash-safe checkpoints, trusted loading,
upload hygiene (items 1-9 and the `scripts/evaluate.py` part of item 12 of the output-safety issue).

Every destructive command runs inside `tmp_path` (the "home" and "project" folders are fake ones made there). The new
API is imported inside the tests that need it, so that on older code each test fails on its behaviour (a file lost,
a command that succeeds) rather than on an import.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from script_loading import load_script

from himtm_hf import HiMTMConfig, HiMTMForPrediction, HiMTMForPretraining
from himtm_hf.data import load_splits

ROOT = Path(__file__).resolve().parents[1]
L, H = 64, 16
TINY_MODEL = [
    "--patch_length", "8", "--num_hierarchies", "2", "--d_model", "16", "--num_attention_heads", "2",
    "--ffn_dim", "32", "--decoder_num_attention_heads", "2", "--csa_num_attention_heads", "2",
]
TINY_RUN = [
    "--context_length", str(L), "--prediction_length", str(H), "--per_device_train_batch_size", "8",
    "--max_train_windows", "24", "--max_eval_windows", "16", "--per_device_eval_batch_size", "16",
    "--logging_steps", "1", "--disable_tqdm", "--use_cpu",
]
QUICK_EVAL = ["--max_test_windows", "8", "--max_eval_windows", "8", "--plot_windows", "0", "--use_cpu",
              "--disable_tqdm"]


def tiny_config(**overrides) -> HiMTMConfig:
    values = dict(context_length=L, prediction_length=H, num_input_channels=7, patch_length=8, patch_stride=8,
                  num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                  csa_num_attention_heads=2)
    values.update(overrides)
    return HiMTMConfig(**values)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to show that nothing was touched)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pretrain(output_dir: Path, *extra: str):
    return load_script("pretrain").main([*TINY_MODEL, *TINY_RUN, "--output_dir", str(output_dir), *extra])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved forecaster with the scaler of ETTh1's train split (what fine-tuning writes)."""
    folder = tmp_path_factory.mktemp("models") / "forecaster"
    torch.manual_seed(0)
    HiMTMForPrediction(tiny_config()).save_pretrained(folder)
    load_splits("ETTh1", context_length=L, prediction_length=H).scaler.save(folder)
    return folder


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    """A private copy of the forecaster, for the tests that point destructive commands at it."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


# ----------------------------------------------------------------------------------------------------------------------
# 1-5: files lost
# ----------------------------------------------------------------------------------------------------------------------


def test_1_evaluate_never_writes_into_the_model_it_evaluates(model_copy):
    """`evaluate.py --model_dir M --output_dir M --overwrite_output_dir` used to delete M (then fail with
    "Unrecognized model"); the default output folder lay inside the model folder."""
    evaluate = load_script("evaluate")
    before = snapshot(model_copy)
    for output in (model_copy, model_copy / "eval"):  # is the model / lies inside it
        with pytest.raises(ValueError, match=r"(is|lies inside) the model"):
            evaluate.main(["--model_dir", str(model_copy), "--output_dir", str(output), "--overwrite_output_dir",
                           *QUICK_EVAL])
        assert snapshot(model_copy) == before
    evaluate.main(["--model_dir", str(model_copy), *QUICK_EVAL])  # default: next to the model, not inside it
    assert snapshot(model_copy) == before
    assert (model_copy.parent / "model-eval-ETTh1" / "metrics.json").is_file()


def test_2_finetune_never_writes_into_its_pretraining(tmp_path):
    """`finetune.py --pretrained_model_path P --output_dir P --overwrite_output_dir` used to delete P."""
    pretraining = tmp_path / "pretraining"
    HiMTMForPretraining(tiny_config()).save_pretrained(pretraining)
    before = snapshot(pretraining)
    finetune = load_script("finetune")
    for output in (pretraining, pretraining / "ft", tmp_path):  # is / lies inside / contains the pre-training
        with pytest.raises(ValueError, match="the pre-training"):
            finetune.main([*TINY_RUN, "--pretrained_model_path", str(pretraining), "--output_dir", str(output),
                           "--overwrite_output_dir", "--max_steps", "1", "--max_test_windows", "8"])
        assert snapshot(pretraining) == before


def test_3_overwrite_never_deletes_files_the_package_did_not_write(tmp_path, monkeypatch):
    """`--overwrite_output_dir` deleted run-file names (checkpoints/, config.json, ...) in any folder: the user's
    project with `--output_dir .`, the home folder with `--output_dir ~`. Only a folder with the package's marker is
    cleaned now, and only of what the marker lists."""
    folders = {name: tmp_path / name for name in ("cwd", "home", "project", "other")}
    for folder in folders.values():
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "best.pt").write_bytes(b"my weights")
        (folder / "config.json").write_text('{"mine": true}')
    (folders["project"] / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.setenv("HOME", str(folders["home"]))
    monkeypatch.chdir(folders["cwd"])
    before = {name: snapshot(folder) for name, folder in folders.items()}
    cases = ((".", "current folder"), (str(folders["home"]), "home folder"),
             (str(folders["project"]), "project folder"), (str(folders["other"]), "no .himtm-run.json marker"))
    for output, reason in cases:
        with pytest.raises((ValueError, FileExistsError), match=reason):
            pretrain(Path(output), "--max_steps", "1", "--overwrite_output_dir")
    assert {name: snapshot(folder) for name, folder in folders.items()} == before

    # A folder the package made is replaced, but only its own files.
    run = tmp_path / "run"
    pretrain(run, "--max_steps", "1")
    marker = json.loads((run / ".himtm-run.json").read_text())
    assert marker["kind"] == "run" and "checkpoints" in marker["written"]
    (run / "notes.txt").write_text("keep me")
    pretrain(run, "--max_steps", "1", "--overwrite_output_dir")
    assert (run / "notes.txt").read_text() == "keep me" and (run / "model.safetensors").is_file()


def test_4_dry_run_overwrite_never_deletes_a_folder_it_did_not_make(model_dir, tmp_path):
    """`push_to_hub.py --dry_run --dry_run_dir D --overwrite` used to delete all of D (a data folder here)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "important.csv").write_text("a,b\n1,2\n")
    push = load_script("push_to_hub")
    with pytest.raises(FileExistsError, match="marker"):
        push.main(["--output_dir", str(model_dir), "--dry_run", "--dry_run_dir", str(data), "--overwrite",
                   "--verify", "false"])
    assert snapshot(data) == {"important.csv": b"a,b\n1,2\n"}


def test_5_forecast_never_replaces_its_input_or_an_existing_output(model_dir, tmp_path, monkeypatch):
    """`forecast.py CSV --output CSV` overwrote its own input (200 rows became 16 forecast rows), and existing
    outputs and plots were replaced without asking."""
    monkeypatch.chdir(tmp_path)
    history = tmp_path / "history.csv"
    pd.read_csv(Path(os.environ.get("HIMTM_DATA_DIR", ROOT.parent / "shared" / "data")) / "ETTh1.csv.gz").tail(
        100).to_csv(history, index=False)
    original = history.read_bytes()
    forecast = load_script("forecast")
    for extra in ([], ["--overwrite"]):  # the input is never an output, even with --overwrite
        with pytest.raises(ValueError, match="is the input CSV"):
            forecast.main([str(history), "--model", str(model_dir), "--output", str(history), *extra])
        with pytest.raises(ValueError, match="is the input CSV"):
            forecast.main([str(history), "--model", str(model_dir), "--output", "out.csv", "--plot", str(history),
                           *extra])
    assert history.read_bytes() == original and not (tmp_path / "out.csv").exists()

    (tmp_path / "old.csv").write_text("mine\n")
    (tmp_path / "old.png").write_bytes(b"my plot")
    with pytest.raises(FileExistsError, match="--overwrite"):
        forecast.main([str(history), "--model", str(model_dir), "--output", "old.csv"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        forecast.main([str(history), "--model", str(model_dir), "--output", "new.csv", "--plot", "old.png"])
    assert (tmp_path / "old.csv").read_text() == "mine\n" and (tmp_path / "old.png").read_bytes() == b"my plot"
    assert not (tmp_path / "new.csv").exists()  # both outputs are checked before either is written
    result = forecast.main([str(history), "--model", str(model_dir), "--output", "old.csv", "--overwrite"])
    assert len(pd.read_csv(tmp_path / "old.csv")) == len(result) == H
    assert (tmp_path / "old.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert history.read_bytes() == original


# ----------------------------------------------------------------------------------------------------------------------
# 6-9: silently wrong or unsafe
# ----------------------------------------------------------------------------------------------------------------------


def _write_lock(folder: Path, pid: int) -> None:
    """The lock a run holding `folder` writes (as process `pid` of this host)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".himtm-run.lock").write_text(json.dumps({"pid": pid, "hostname": socket.gethostname(),
                                                        "started": "2026-01-01T00:00:00"}))


def test_6_a_second_writer_refuses_while_a_run_holds_the_folder(tmp_path):
    """Two runs into one folder both exited 0 (one's run_args.json beside the other's weights, an interleaved log),
    and a second run with --overwrite_output_dir deleted a live run's checkpoints."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        busy = tmp_path / "busy"  # a run with checkpoints that is still going
        pretrain(busy, "--max_steps", "2", "--save_steps", "1")
        assert not (busy / ".himtm-run.lock").exists()  # released at the end of a run
        _write_lock(busy, live.pid)
        before = snapshot(busy)
        with pytest.raises(RuntimeError, match=f"being written by process {live.pid}"):
            pretrain(busy, "--max_steps", "2", "--overwrite_output_dir")
        assert snapshot(busy) == before

        fresh = tmp_path / "fresh"  # a run has just started in it (lock only)
        _write_lock(fresh, live.pid)
        with pytest.raises(RuntimeError, match=f"being written by process {live.pid}"):
            pretrain(fresh, "--max_steps", "1")
        assert [p.name for p in fresh.iterdir()] == [".himtm-run.lock"]
    finally:
        live.kill()
        live.wait()
    # The holder is gone: its lock is stale and the next run replaces it.
    pretrain(busy, "--max_steps", "1", "--overwrite_output_dir")
    assert not (busy / ".himtm-run.lock").exists() and not (busy / "checkpoints").exists()


class _SimulatedKill(BaseException):
    """Stands for SIGKILL/SIGINT arriving in the middle of a checkpoint save."""


def test_7_an_interrupted_checkpoint_save_is_never_resumed_from(tmp_path, monkeypatch):
    """A kill during a save left a half-written `step-N` that `--resume_from_checkpoint latest` picked (then
    `FileNotFoundError .../optimizer.bin` or a bare `EOFError`)."""
    run = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "step-4" in str(f) and Path(str(f)).name == "optimizer.bin":
            raise _SimulatedKill  # the weights of step 4 are on disk, the optimizer state is not
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(_SimulatedKill):
        pretrain(run, "--max_steps", "6", "--save_steps", "2")
    monkeypatch.setattr(torch, "save", real_save)
    # Another half-written one, as a kill during an older version's save left it (truncated files, no marker).
    broken = run / "checkpoints" / "step-5"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"")
    (broken / "optimizer.bin").write_bytes(b"PK\x03")
    complete = sorted(p.name for p in (run / "checkpoints").iterdir() if (p / "checkpoint.json").is_file())
    assert complete == ["step-2"]
    with pytest.raises(FileNotFoundError, match="checkpoint.json"):
        pretrain(run, "--max_steps", "6", "--save_steps", "2", "--resume_from_checkpoint", str(broken))
    pretrain(run, "--max_steps", "6", "--save_steps", "2", "--resume_from_checkpoint", "latest")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]  # resumed from step 2
    assert all((run / "checkpoints" / f"step-{n}" / "checkpoint.json").is_file() for n in (2, 4, 6))
    assert not list((run / "checkpoints").glob(".tmp-*"))


class _Payload:
    """Unpickling this runs `open(path, "w")`: the stand-in for code hidden in a checkpoint."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_8_resume_never_unpickles_arbitrary_objects(tmp_path, monkeypatch):
    """`--resume_from_checkpoint` unpickled checkpoint files without restriction (code in a checkpoint ran), and
    neither the docs nor --help said that checkpoints must be trusted."""
    run = tmp_path / "run"
    pretrain(run, "--max_steps", "4", "--save_steps", "2", "--stop_after_steps", "2")
    clean = Path(shutil.copytree(run, tmp_path / "clean"))

    # Every torch.load of a resume is restricted to tensors and plain values.
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    pretrain(clean, "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", "latest")
    monkeypatch.setattr(torch, "load", real_load)
    assert calls and all(flag is True for flag in calls), calls

    # A checkpoint whose pickles carry code: each is refused or ignored, and the code never runs.
    ran = tmp_path / "payload-ran"
    pickles = sorted(p.name for p in (run / "checkpoints" / "step-2").iterdir() if p.suffix in (".bin", ".pkl"))
    assert pickles
    refused = 0
    for name in pickles:
        poisoned = Path(shutil.copytree(run, tmp_path / f"poisoned-{name}"))
        with (poisoned / "checkpoints" / "step-2" / name).open("wb") as handle:
            pickle.dump(_Payload(ran), handle, protocol=2)
        try:
            pretrain(poisoned, "--max_steps", "4", "--resume_from_checkpoint", "latest")
        except ValueError as error:
            assert "refused rather than unpickled" in str(error)
            refused += 1
        assert not ran.exists(), name
    assert refused >= 1  # the optimizer state at least is needed, so its poisoned file stops the resume

    from himtm_hf.training import TrainArguments

    help_text = TrainArguments.__dataclass_fields__["resume_from_checkpoint"].metadata["help"]
    assert "weights_only=True" in help_text and "trust" in help_text
    assert "trusted source" in (ROOT / "docs" / "training.md").read_text()


def test_9_uploads_carry_no_machine_paths_and_bad_repo_ids_are_refused(model_dir, tmp_path):
    """The upload folder carried run_args.json as written (the Python executable, the full path of a private data
    file); the dry run accepted repo ids the Hub rejects (`a/b/c`, `../../x`)."""
    from himtm_hf.hub import PublishArguments, publish

    run = Path(shutil.copytree(model_dir, tmp_path / "home" / "alice" / "runs" / "etth1"))
    private = "/home/alice/private/customers.csv"
    (run / "run_args.json").write_text(json.dumps({
        "data_args": {"dataset": private, "data_dir": "/srv/data"},
        "train_args": {"output_dir": str(run), "pretrained_model_path": str(run.parent / "pt"), "seed": 3},
        "command_line": [sys.executable, str(ROOT / "scripts" / "finetune.py"), "--dataset", private,
                         f"--output_dir={run}", "--logging_dir", str(run / "logs")],
    }))
    (run / "metrics.json").write_text(json.dumps({
        "dataset": "customers", "prediction_length": H, "context_length": L, "model_dir": str(run),
        "test": {"mse": 0.5, "mae": 0.5}, "pretrained_model_path": "~/runs/pt",
    }))
    dest = tmp_path / "stage"
    publish(PublishArguments(output_dir=str(run), repo_id="alice/etth1", dry_run=True, dry_run_dir=str(dest),
                             verify=False))
    staged = {p.name: p.read_text(encoding="utf-8", errors="ignore") for p in dest.iterdir()
              if p.suffix in (".json", ".md")}
    for name, text in staged.items():
        for machine_path in (str(tmp_path), "/home/alice", "/srv/data", sys.executable, str(ROOT), "~/"):
            assert machine_path not in text, (name, machine_path)
    run_args = json.loads((dest / "run_args.json").read_text())
    assert run_args["data_args"]["dataset"] == "customers.csv" and run_args["train_args"]["output_dir"] == "."
    assert run_args["command_line"][0] == Path(sys.executable).name
    assert run_args["command_line"][4:] == ["--output_dir=.", "--logging_dir", "logs"]
    assert run_args["train_args"]["seed"] == 3  # everything else as it was

    for bad in ("a/b/c", "../../x", "org/na me"):
        target = tmp_path / f"bad-{len(bad)}"
        with pytest.raises(ValueError, match="not a valid Hub repo id"):
            publish(PublishArguments(output_dir=str(run), repo_id=bad, dry_run=True, dry_run_dir=str(target),
                                     verify=False))
        assert not target.exists()


# ----------------------------------------------------------------------------------------------------------------------
# 12 (scripts/evaluate.py)
# ----------------------------------------------------------------------------------------------------------------------


def test_12_evaluate_takes_context_length_and_never_suggests_resuming(model_dir, tmp_path):
    """`evaluate.py` rejected `--context_length` (a raw argparse error) and, re-run into its output folder,
    suggested `--resume_from_checkpoint latest`, which evaluation does not have."""
    evaluate = load_script("evaluate")
    out = tmp_path / "eval"
    common = ["--model_dir", str(model_dir), "--output_dir", str(out), *QUICK_EVAL]
    metrics = evaluate.main([*common, "--context_length", str(L)])
    assert metrics["context_length"] == L and (out / "metrics.json").is_file()
    with pytest.raises(ValueError, match=f"reads context_length={L}, not 96.*--context_length"):
        evaluate.main([*common, "--context_length", "96", "--output_dir", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileExistsError) as error:
        evaluate.main(common)
    assert "--overwrite_output_dir" in str(error.value) and "--resume_from_checkpoint" not in str(error.value)
    evaluate.main([*common, "--overwrite_output_dir"])
