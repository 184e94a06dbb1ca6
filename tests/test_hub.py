"""Publishing: dry-run folder, model card metadata, remote-code loading without himtm_hf, offline repo-id loading
from a Hub cache laid out the way huggingface_hub does it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from himtm_hf import HiMTMConfig, HiMTMForPrediction
from himtm_hf.data import SeriesScaler
from himtm_hf.hub import (
    PublishArguments,
    load_run_results,
    populate_hf_cache,
    publish,
    render_model_card,
    select_files,
)

PROJECT = Path(__file__).resolve().parents[1]
REPO_ID = "himtm-test/etth1-tiny"
COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
METRICS = {
    "dataset": "ETTh1",
    "prediction_length": 16,
    "context_length": 64,
    "test": {"mse": 0.4123456, "mae": 0.4321, "mse_original_units": 5.25, "mae_original_units": 1.5,
             "num_windows": 2785},
    "val": {"mse": 0.71, "mae": 0.62},
}
RUN_ARGS = {
    "model_args": {"d_model": 16, "num_hierarchies": 2},
    "data_args": {"dataset": "ETTh1", "context_length": 64, "prediction_length": 16},
    "train_args": {"num_train_epochs": 2, "learning_rate": 1e-3, "seed": 0},
}

# Makes `import himtm_hf` fail in a child process although the package is installed (editable) in site-packages.
BLOCKER = textwrap.dedent(
    """
    import sys
    class _BlockHiMTM:
        def find_spec(self, name, path=None, target=None):
            if name == "himtm_hf" or name.startswith("himtm_hf."):
                raise ImportError("himtm_hf is blocked in this process")
            return None
    sys.meta_path.insert(0, _BlockHiMTM())
    try:
        import himtm_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("himtm_hf could still be imported")
    """
)


def tiny_config(**overrides) -> HiMTMConfig:
    values = dict(context_length=64, prediction_length=16, num_input_channels=7, patch_length=8, patch_stride=8,
                  num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                  csa_num_attention_heads=2)
    values.update(overrides)
    return HiMTMConfig(**values)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A trained output folder with the layout himtm_hf.training writes (random weights)."""
    folder = tmp_path_factory.mktemp("run") / "etth1-tiny"
    torch.manual_seed(0)
    HiMTMForPrediction(tiny_config()).save_pretrained(folder)
    SeriesScaler(mean=[10.0 + i for i in range(7)], std=[2.0 + i for i in range(7)], columns=COLUMNS).save(folder)
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "run_args.json").write_text(json.dumps(RUN_ARGS))
    (folder / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (folder / "forecast_plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "model.safetensors").write_bytes(b"x")
    return folder


@pytest.fixture(scope="module")
def reference(run_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A fixed input and the local folder's output for it (saved as .pt files for the child processes)."""
    folder = tmp_path_factory.mktemp("ref")
    torch.manual_seed(1)
    x = torch.randn(2, 64, 7) * 3 + 10
    model = HiMTMForPrediction.from_pretrained(run_dir).eval()
    with torch.no_grad():
        y = model(past_values=x).prediction_outputs
    torch.save(x, folder / "x.pt")
    torch.save(y, folder / "y.pt")
    return folder / "x.pt", folder / "y.pt"


@pytest.fixture(scope="module")
def published_run(run_dir, tmp_path_factory) -> tuple[Path, str]:
    """`scripts/push_to_hub.py --dry_run` in a child process without network: (folder, printed output)."""
    dest = tmp_path_factory.mktemp("publish") / "dry"
    result = _push_script(["--output_dir", str(run_dir), "--repo_id", REPO_ID, "--dry_run", "--dry_run_dir", str(dest)])
    assert result.returncode == 0, result.stderr
    return dest, result.stdout


@pytest.fixture(scope="module")
def published(published_run) -> Path:
    return published_run[0]


def _offline_env(tmp: Path, pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf_home"),
        HF_HUB_CACHE=str(tmp / "hub_cache"),
        HF_MODULES_CACHE=str(tmp / "modules"),
        HF_ENDPOINT="http://127.0.0.1:9",  # anything that tries the network fails fast
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",  # tiny models; keeps the children quick when the CPU cores are shared
    )
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _push_script(argv: list[str]) -> subprocess.CompletedProcess:
    env = _offline_env(Path(os.environ.get("TMPDIR", "/tmp")))
    return subprocess.run([sys.executable, str(PROJECT / "scripts" / "push_to_hub.py"), *argv], capture_output=True,
                          text=True, env=env, cwd=PROJECT, timeout=180)


def _run_child(code: str, tmp: Path, block_himtm: bool) -> subprocess.CompletedProcess:
    script = tmp / "child.py"
    script.write_text((BLOCKER if block_himtm else "") + textwrap.dedent(code))
    # cwd and PYTHONPATH outside the project, so only site-packages could provide himtm_hf.
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp,
                          env=_offline_env(tmp), timeout=180)


# ---------------------------------------------------------------------------------------------------- dry run


def test_dry_run_writes_exactly_the_published_files(run_dir, published):
    files = sorted(p.relative_to(published).as_posix() for p in published.rglob("*")
                   if p.is_file() and p.name != ".himtm-run.json")
    assert (published / ".himtm-run.json").is_file()  # the dry-run folder's marker (never uploaded: a dotfile)
    assert files == sorted([
        "README.md", "config.json", "model.safetensors", "configuration_himtm.py", "modeling_himtm.py",
        "scaler.json", "metrics.json", "run_args.json", "forecast_plot.png",
    ])
    # checkpoints, logs and pickles stay behind
    keep, skipped = select_files(run_dir)
    assert {"log.jsonl", "training_args.bin", "checkpoints/step-10/model.safetensors"} <= set(skipped)
    assert (published / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    config = json.loads((published / "config.json").read_text())
    assert config["auto_map"]["AutoModelForTimeSeriesPrediction"] == "modeling_himtm.HiMTMForPrediction"


def test_dry_run_prints_file_list_and_needs_no_network(published_run):
    folder, stdout = published_run  # the child ran with HF_HUB_OFFLINE=1 and an unreachable HF_ENDPOINT
    assert f"Dry run: wrote {folder}" in stdout
    for name in ("README.md", "model.safetensors", "scaler.json", "metrics.json", "modeling_himtm.py"):
        assert f"  {name}  (" in stdout
    assert "Left out" in stdout and "log.jsonl" in stdout


def test_dry_run_never_overwrites_without_flag(run_dir, tmp_path):
    dest = tmp_path / "stage"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    args = PublishArguments(output_dir=str(run_dir), repo_id=REPO_ID, dry_run=True, dry_run_dir=str(dest),
                            verify=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish(args)
    assert (dest / "keep.txt").read_text() == "mine"
    # a folder an earlier dry run did not make is never cleaned, not even with --overwrite
    args.overwrite = True
    with pytest.raises(FileExistsError, match="carries no .himtm-run.json marker"):
        publish(args)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    # an earlier dry run's folder is replaced with --overwrite (its own files only)
    staged = tmp_path / "staged"
    args.dry_run_dir, args.overwrite = str(staged), False
    publish(args)
    (staged / "README.md").write_text("stale card")
    (staged / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish(args)
    args.overwrite = True
    result = publish(args)
    assert (staged / "README.md").read_text() != "stale card" and (staged / "keep.txt").read_text() == "mine"
    assert result.files == sorted(result.files) and "README.md" in result.files and "keep.txt" not in result.files
    # a dry-run folder inside (or equal to) the run folder is refused even with --overwrite
    with pytest.raises(ValueError, match="overlaps"):
        publish(PublishArguments(output_dir=str(run_dir), dry_run=True, dry_run_dir=str(run_dir), overwrite=True))


def test_optional_includes(run_dir, tmp_path):
    result = publish(PublishArguments(output_dir=str(run_dir), repo_id=REPO_ID, dry_run=True, verify=False,
                                      dry_run_dir=str(tmp_path / "s"), include_logs=True, include_checkpoints=True,
                                      include_plots=False))
    assert "log.jsonl" in result.files and "checkpoints/step-10/model.safetensors" in result.files
    assert "forecast_plot.png" not in result.files and "training_args.bin" not in result.files


def test_missing_code_and_auto_map_are_added(run_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    for name in ("configuration_himtm.py", "modeling_himtm.py"):
        (bare / name).unlink()
    config = json.loads((bare / "config.json").read_text())
    config.pop("auto_map")
    (bare / "config.json").write_text(json.dumps(config))
    result = publish(PublishArguments(output_dir=str(bare), dry_run=True, dry_run_dir=str(tmp_path / "s")))
    staged = json.loads((result.folder / "config.json").read_text())
    assert staged["auto_map"] == {"AutoConfig": "configuration_himtm.HiMTMConfig",
                                  "AutoModel": "modeling_himtm.HiMTMModel",
                                  "AutoModelForPreTraining": "modeling_himtm.HiMTMForPretraining",
                                  "AutoModelForTimeSeriesPrediction": "modeling_himtm.HiMTMForPrediction"}
    assert (result.folder / "modeling_himtm.py").is_file() and any("auto_map" in n for n in result.notes)


def test_folder_without_safetensors_is_refused(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        publish(PublishArguments(output_dir=str(bad), dry_run=True, dry_run_dir=str(tmp_path / "s")))


def test_upload_uses_create_repo_and_upload_folder(run_dir, monkeypatch):
    import huggingface_hub

    calls = {}

    def fake_create_repo(repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        calls["upload_folder"] = kwargs
        calls["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        return None

    monkeypatch.setattr(huggingface_hub, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload_folder)
    result = publish(PublishArguments(output_dir=str(run_dir), repo_id=REPO_ID, private=True, verify=False))
    assert calls["create_repo"] == (REPO_ID, {"private": True, "exist_ok": True, "repo_type": "model", "token": None})
    assert calls["upload_folder"]["repo_id"] == REPO_ID
    assert "README.md" in calls["files"] and "model.safetensors" in calls["files"]
    assert not any(f.startswith("checkpoints/") or f == "log.jsonl" for f in calls["files"])
    assert result.repo_id == REPO_ID
    with pytest.raises(ValueError, match="repo_id"):
        publish(PublishArguments(output_dir=str(run_dir)))


# ---------------------------------------------------------------------------------------------------- model card


def test_card_metadata_parses_and_carries_the_metrics(published):
    from huggingface_hub import ModelCard

    card = ModelCard.load(published / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "time-series-forecasting"
    assert data.license == "apache-2.0"
    assert {"himtm", "time-series", "custom_code"} <= set(data.tags)
    assert data.datasets == ["ETTh1"]
    results = {(r.dataset_name, r.dataset_args["prediction_length"], r.metric_type): r for r in data.eval_results}
    assert results[("ETTh1", 16, "mse")].metric_value == pytest.approx(METRICS["test"]["mse"], abs=1e-6)
    assert results[("ETTh1", 16, "mae")].metric_value == pytest.approx(METRICS["test"]["mae"], abs=1e-6)
    assert all(r.task_type == "time-series-forecasting" and r.dataset_split == "test" for r in data.eval_results)
    assert data.to_dict()["model-index"][0]["name"] == "etth1-tiny"
    text = card.text
    assert f'AutoModelForTimeSeriesPrediction.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert "import himtm_hf" in text and "HiMTMForecastPipeline" in text
    assert "2401.05012" in text and "CIKM" in text
    for author in ("Zhao", "Jin", "Hou", "Yang", "Li", "Wen", "Wang"):
        assert author in text
    assert "0.4123" in text and "Limitations" in text and "learning_rate" in text


def test_card_model_index_has_one_entry_per_dataset_and_horizon(run_dir, tmp_path):
    from huggingface_hub import ModelCard

    folder = tmp_path / "multi"
    shutil.copytree(run_dir, folder)
    records = [dict(METRICS), dict(METRICS, prediction_length=96, test=dict(METRICS["test"], mse=0.5, mae=0.55)),
               dict(METRICS, dataset="ETTh2", test=dict(METRICS["test"], mse=0.3, mae=0.35))]
    (folder / "metrics.json").write_text(json.dumps({"results": records}))
    assert [r.prediction_length for r in load_run_results(folder)] == [16, 96, 16]
    card = render_model_card(folder, repo_id=REPO_ID)
    card.save(tmp_path / "README.md")
    index = ModelCard.load(tmp_path / "README.md").data.to_dict()["model-index"][0]["results"]
    seen = {(r["dataset"]["name"], r["dataset"]["args"]["prediction_length"]): {m["type"]: m["value"]
                                                                                for m in r["metrics"]}
            for r in index}
    assert seen == {("ETTh1", 16): {"mse": 0.412346, "mae": 0.4321}, ("ETTh1", 96): {"mse": 0.5, "mae": 0.55},
                    ("ETTh2", 16): {"mse": 0.3, "mae": 0.35}}


def test_bad_metrics_file_gives_a_clear_error(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"dataset": "ETTh1", "prediction_length": 96}))
    with pytest.raises(ValueError, match="'test' entry"):
        load_run_results(tmp_path)


# ---------------------------------------------------------------------------------------------------- loading


def test_dry_run_folder_loads_with_remote_code_without_himtm_hf(published, reference, tmp_path):
    x_path, y_path = reference
    result = _run_child(
        f"""
        import sys, torch
        from transformers import AutoModelForTimeSeriesPrediction
        model = AutoModelForTimeSeriesPrediction.from_pretrained({str(published)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "HiMTMForPrediction"
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert not any(m == "himtm_hf" or m.startswith("himtm_hf.") for m in sys.modules)
        with torch.no_grad():
            y = model(past_values=torch.load({str(x_path)!r})).prediction_outputs
        torch.testing.assert_close(y, torch.load({str(y_path)!r}))
        print("OK")
        """,
        tmp_path, block_himtm=True,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_blocker_really_blocks_himtm_hf(tmp_path):
    result = _run_child("import himtm_hf\n", tmp_path, block_himtm=True)
    assert result.returncode != 0 and "blocked" in result.stderr


def test_repo_id_loads_offline_from_the_hub_cache(published, reference, tmp_path):
    snapshot = populate_hf_cache(published, REPO_ID, cache_dir=tmp_path / "hub_cache")
    repo_folder = tmp_path / "hub_cache" / "models--himtm-test--etth1-tiny"
    assert (repo_folder / "refs" / "main").read_text() == snapshot.name
    assert (snapshot / "model.safetensors").is_symlink()
    assert (snapshot / "model.safetensors").resolve().parent == (repo_folder / "blobs").resolve()
    x_path, y_path = reference

    with_package = _run_child(
        f"""
        import torch
        from huggingface_hub import constants
        assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == {str(tmp_path / "hub_cache")!r}
        import himtm_hf
        from himtm_hf import HiMTMForPrediction
        from himtm_hf.pipeline import HiMTMForecastPipeline
        model = HiMTMForPrediction.from_pretrained({REPO_ID!r}).eval()
        with torch.no_grad():
            y = model(past_values=torch.load({str(x_path)!r})).prediction_outputs
        torch.testing.assert_close(y, torch.load({str(y_path)!r}))
        pipe = HiMTMForecastPipeline.from_pretrained({REPO_ID!r})
        assert pipe.columns == {COLUMNS!r}
        print("OK")
        """,
        tmp_path, block_himtm=False,
    )
    assert with_package.returncode == 0 and "OK" in with_package.stdout, with_package.stderr[-3000:]

    remote_code = _run_child(
        f"""
        import sys, torch
        from transformers import AutoModelForTimeSeriesPrediction
        model = AutoModelForTimeSeriesPrediction.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert not any(m == "himtm_hf" or m.startswith("himtm_hf.") for m in sys.modules)
        with torch.no_grad():
            y = model(past_values=torch.load({str(x_path)!r})).prediction_outputs
        torch.testing.assert_close(y, torch.load({str(y_path)!r}))
        print("OK")
        """,
        tmp_path, block_himtm=True,
    )
    assert remote_code.returncode == 0 and "OK" in remote_code.stdout, remote_code.stderr[-3000:]


def test_unknown_repo_id_fails_offline(tmp_path):
    result = _run_child(
        """
        import himtm_hf
        from himtm_hf import HiMTMForPrediction
        try:
            HiMTMForPrediction.from_pretrained("himtm-test/not-in-cache")
        except OSError as error:
            print("OSError", error)
        """,
        tmp_path, block_himtm=False,
    )
    assert "OSError" in result.stdout, result.stderr[-2000:]
