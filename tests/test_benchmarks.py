"""The benchmark scripts run end to end at the `quick` budget on a slice of real ETTh1 (so they cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from record_checks import absolute_paths
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
RECORD_FIELDS = {"dataset", "prediction_length", "model", "mse", "mae", "budget", "seed", "finetune_epochs",
                 "wall_time_s", "device", "git_commit", "command"}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_accuracy_and_ablation_quick_budget_write_records_and_tables(tmp_path):
    results = tmp_path / "results"
    _run("benchmark_accuracy.py", "--budget", "quick", "--datasets", "ETTh1", "--horizons", "96",
         "--results_dir", str(results), "--work_dir", str(tmp_path / "work"))
    records = [json.loads(p.read_text()) for p in (results / "accuracy").glob("*.json")]
    assert sorted(r["model"] for r in records) == ["himtm", "patchtst_selfsupervised", "patchtst_supervised"]
    for r in records:
        assert RECORD_FIELDS <= r.keys()
        assert r["dataset"] == "ETTh1" and r["prediction_length"] == 96 and r["budget"] == "quick"
        assert 0 < r["mse"] < 10 and 0 < r["mae"] < 10
        assert r["num_test_windows"] == 64  # the quick budget caps the test windows (and says so)
    assert any(r.get("pretrain_final_train_loss") is not None for r in records)
    # the closed-form baselines of the cell, on every test window (not the budget's 64)
    baseline = json.loads((results / "baselines" / "ETTh1-L512-H96.json").read_text())
    assert baseline["naive"]["num_windows"] == baseline["linear_ridge"]["num_windows"] == 2785
    assert baseline["linear_ridge"]["mse"] < baseline["naive"]["mse"] and "benchmark_accuracy.py" in baseline["command"]
    for record in [*records, baseline]:  # --results_dir and --work_dir are absolute tmp paths here
        assert not absolute_paths(record), absolute_paths(record)

    # the same command again keeps the three records and trains nothing (it resumes, it does not replace)
    written = {p: p.read_text() for p in (results / "accuracy").glob("*.json")}
    again = _run("benchmark_accuracy.py", "--budget", "quick", "--datasets", "ETTh1", "--horizons", "96",
                 "--results_dir", str(results), "--work_dir", str(tmp_path / "work_again")).stdout
    assert again.count("kept ") == 3 and "MSE" not in again and not (tmp_path / "work_again").exists()
    assert {p: p.read_text() for p in (results / "accuracy").glob("*.json")} == written
    assert "baselines up to date" in again and len(list((results / "baselines").glob("*.json"))) == 1

    # a HiMTM variant runs beside the default records (own file, own column) instead of replacing them
    _run("benchmark_accuracy.py", "--budget", "quick", "--datasets", "ETTh1", "--horizons", "96", "--models", "himtm",
         "--himtm_variant", "no_pretrain", "--results_dir", str(results), "--work_dir", str(tmp_path / "work"))
    records = [json.loads(p.read_text()) for p in (results / "accuracy").glob("*.json")]
    (variant,) = [r for r in records if r.get("variant")]
    assert len(records) == 4 and variant["variant"] == "no_pretrain" and variant["pretrain_steps"] == 0
    assert "himtm@no_pretrain MSE / MAE" in (tmp_path / "results.md").read_text()

    _run("ablate.py", "--budget", "quick", "--datasets", "ETTh1", "--variants", "full", "no_hsd", "no_pretrain",
         "select_by_total_loss", "--seeds", "1", "--results_dir", str(results),
         "--work_dir", str(tmp_path / "ablation"))
    ablation = {r["variant"]: r for r in (json.loads(p.read_text()) for p in (results / "ablation").glob("*.json"))}
    assert sorted(ablation) == ["full", "no_hsd", "no_pretrain", "select_by_total_loss"]
    assert not [hit for record in ablation.values() for hit in absolute_paths(record)]
    assert ablation["no_pretrain"]["pretrain_steps"] == 0 and ablation["full"]["pretrain_steps"] > 0
    # every pre-training records the diagnostics of its kept weights (the table's skill column); none without one
    diagnostics = ablation["full"]["pretrain_diagnostics"]
    assert len(diagnostics["skill_by_hierarchy"]) == 3 and diagnostics["skill"] == diagnostics["skill_by_hierarchy"][0]
    assert diagnostics["linear_probe_mse"] > 0 and "pretrain_diagnostics" not in ablation["no_pretrain"]
    # the defaults keep the pre-training checkpoint with the lowest validation reconstruction loss (the distillation
    # part's target moves with the weights); select_by_total_loss keeps the lowest total, and each records which
    for variant, metric in (("full", "reconstruction_loss"), ("select_by_total_loss", "loss")):
        log = tmp_path / "ablation" / "ETTh1" / variant / "seed1" / "himtm-pretrain" / "log.jsonl"
        val = [r for r in map(json.loads, log.read_text().splitlines()) if r["split"] == "val"]
        assert val and all(r["distillation_loss"] > 0 for r in val)  # so the two metrics differ
        assert ablation[variant]["pretrain_metric_for_best_model"] == metric
        assert ablation[variant]["pretrain_best_val_loss"] == pytest.approx(min(r[metric] for r in val))

    # re-running keeps every cell; --overwrite re-runs (and replaces) exactly the cells it names
    written = {p: p.read_text() for p in (results / "ablation").glob("*.json")}
    again = _run("ablate.py", "--budget", "quick", "--datasets", "ETTh1", "--variants", "full", "no_pretrain",
                 "--seeds", "1", "--results_dir", str(results), "--work_dir", str(tmp_path / "ablation")).stdout
    assert again.count("kept ") == 2 and "MSE" not in again
    _run("ablate.py", "--budget", "quick", "--datasets", "ETTh1", "--variants", "no_pretrain", "--seeds", "1",
         "--overwrite", "--results_dir", str(results), "--work_dir", str(tmp_path / "ablation"))
    changed = [json.loads(p.read_text())["variant"] for p in written if p.read_text() != written[p]]
    assert changed == ["no_pretrain"], changed

    table = (tmp_path / "results.md").read_text()
    assert "| ETTh1 | 96 |" in table and "| no_hsd |" in table and "× from scratch" in table
    full_row = next(line for line in table.splitlines() if line.startswith("| full |"))
    assert f"{diagnostics['skill']:.4f}" in full_row
    # the baselines beside the networks, marked: the quick budget scored the networks on 64 of the test windows
    assert "| naive (last value) MSE / MAE | linear (ridge) MSE / MAE |" in table
    assert f"| naive (last value) | closed form, no training | – | – | {baseline['naive']['mse']:.4f} |" in table
    assert f"{baseline['linear_ridge']['mse']:.4f} / {baseline['linear_ridge']['mae']:.4f} †" in table
    assert "benchmark_accuracy.py --budget quick" in table and "ablate.py --budget quick" in table


def test_speed_quick_budget_writes_ratio_table(tmp_path):
    result = _run("benchmark_speed.py", "--budget", "quick", "--output_dir", str(tmp_path))
    (path,) = tmp_path.glob("cpu-quick-*.json")
    data = json.loads(path.read_text())
    assert {r["model"] for r in data["rows"]} == {"himtm_prediction", "patchtst_prediction", "himtm_pretraining",
                                                   "patchtst_pretraining"}
    assert all(r["train"]["windows_per_s"] > 0 and r["inference"]["windows_per_s"] > 0 for r in data["rows"])
    assert len(data["summary"]["ratios"]) == 4 and "train throughput" in result.stdout
    # --output_dir outside the checkout: the record names the folder alone, not this machine's path to it
    assert data["arguments"]["output_dir"] == tmp_path.name and not absolute_paths(data), absolute_paths(data)


def test_portable_path_names_no_machine_folder(tmp_path):
    from himtm_hf.benchmarks import ROOT, portable_path

    assert portable_path(tmp_path / "work" / "quick" / "run", tmp_path / "work") == "quick/run"
    assert portable_path("outputs/transfer/cpu/run", "outputs/transfer") == "cpu/run"  # relative stays relative
    assert portable_path(ROOT / "docs" / "results" / "speed", ROOT) == "docs/results/speed"
    assert portable_path(tmp_path / "elsewhere", ROOT / "docs") == "elsewhere"  # outside the base: the name alone
    assert portable_path("ETTh1", ROOT) == "ETTh1" and portable_path("user/repo", ROOT) == "user/repo"
    assert portable_path(None, ROOT) is None


def test_runs_with_an_older_himtm_defaults_set_keep_their_own_files_and_leave_the_page(tmp_path):
    """A HiMTM record written before the defaults changed (no `himtm_defaults` field) is neither overwritten by nor
    averaged with a run of the current defaults: it keeps its own file, and results.md, which shows the current
    model only, leaves it out (PatchTST records, which have no defaults set, stay)."""
    from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION, regenerate_results_md, write_record

    results = tmp_path / "results"
    common = {"dataset": "ETTh1", "prediction_length": 96, "budget": "cpu", "budget_detail": {"name": "cpu"},
              "seed": 1, "device": "CPU", "device_kind": "cpu", "git_commit": "abc", "command": "cmd"}
    old = {**common, "model": "himtm", "mse": 0.5123, "mae": 0.5}
    new = {**common, "model": "himtm", "himtm_defaults": HIMTM_DEFAULTS_VERSION, "mse": 0.30, "mae": 0.3}
    baseline = {**common, "model": "patchtst_supervised", "mse": 0.40, "mae": 0.4}
    paths = {write_record(results, "accuracy", r) for r in (old, new, baseline)}
    assert len(paths) == 3
    for record in (old, new):
        write_record(results, "ablation", {**record, "variant": "full", "overrides": {}})

    text = regenerate_results_md(results, tmp_path / "results.md").read_text()
    assert "| ETTh1 | 96 | 0.3000 / 0.3000 | 0.4000 / 0.4000 |" in text
    assert "- ETTh1: patchtst_supervised: 0.750 (met)" in text
    assert "| full | `{}` | 1 | – | 0.3000 | – |" in text
    assert "0.5123" not in text and "[v0]" not in text


def test_scoreboard_averages_seeds_per_horizon_and_counts_only_complete_current_default_runs(tmp_path):
    """The table at the top of results.md: per horizon the seeds are averaged first, then the horizons; a model that
    misses a horizon of the dataset, a HiMTM variant and a run of an older defaults set stay out of it. The table of
    the best HiMTM below it takes the lowest complete run of the current set, variants included."""
    from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION, regenerate_results_md, write_record

    results = tmp_path / "results"
    common = {"budget": "cpu", "budget_detail": {"name": "cpu"}, "device": "CPU", "device_kind": "cpu",
              "git_commit": "abc", "command": "cmd", "mae": 0.5}
    current = {"model": "himtm", "himtm_defaults": HIMTM_DEFAULTS_VERSION}
    runs = [  # (dataset, horizon, seed, model fields, mse)
        ("ETTh1", 96, 1, current, 0.30), ("ETTh1", 96, 2, current, 0.34), ("ETTh1", 192, 1, current, 0.40),
        ("ETTh1", 96, 1, {"model": "patchtst_supervised"}, 0.40), ("ETTh1", 192, 1, {"model": "patchtst_supervised"},
                                                                    0.40),
        ("ETTh1", 96, 1, {"model": "patchtst_selfsupervised"}, 0.30),  # no H = 192: not complete
        ("ETTh1", 96, 3, {**current, "variant": "no_hsd"}, 0.01), ("ETTh1", 192, 3, {**current, "variant": "no_hsd"},
                                                                  0.01),
        ("ETTh1", 96, 4, {"model": "himtm"}, 0.001), ("ETTh1", 192, 4, {"model": "himtm"}, 0.001),  # defaults set v0
        ("ETTh1", 96, 5, {**current, "variant": "mask_0.7"}, 0.001),  # no H = 192: not complete
        ("ETTh2", 96, 1, {"model": "patchtst_supervised"}, 0.20),  # no HiMTM run: no row
    ]
    for dataset, horizon, seed, fields, mse in runs:
        write_record(results, "accuracy", {**common, "dataset": dataset, "prediction_length": horizon, "seed": seed,
                                           **fields, "mse": mse})
    text = regenerate_results_md(results, tmp_path / "results.md").read_text()
    head = text[: text.index("## Accuracy")]
    # HiMTM: H=96 mean(0.30, 0.34) = 0.32, H=192 0.40 -> 0.36 over seeds {1, 2}; supervised 0.40; ratio 0.9
    assert "| `cpu` | CPU | ETTh1 | 96/192 | 0.3600 (2) | 0.4000 (1) | – | 0.900 (met) | – |" in head
    assert "## At a glance" in head and "ETTh2" not in head
    # best of the current set: no_hsd (0.01 at both horizons), not the older set's 0.001 nor the incomplete mask_0.7
    assert "| `cpu` | CPU | ETTh1 | `no_hsd` | 0.0100 (1) | 0.4000 (1) | – | 0.025 (met) | – |" in head
    assert text.count("| `cpu` | CPU |") == 2


def test_a_head_first_baseline_gets_a_ratio_but_never_a_target_verdict(tmp_path):
    from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION, regenerate_results_md, write_record

    common = {"budget": "cpu", "budget_detail": {"name": "cpu"}, "device": "CPU", "device_kind": "cpu",
              "git_commit": "abc", "command": "cmd", "mae": 0.5, "dataset": "ETTh1", "prediction_length": 96,
              "seed": 1}
    for fields, mse in (({"model": "himtm", "himtm_defaults": HIMTM_DEFAULTS_VERSION}, 0.30),
                        ({"model": "patchtst_selfsupervised"}, 0.30), ({"model": "patchtst_selfsupervised_lp_ft"}, 0.40)):
        write_record(tmp_path / "results", "accuracy", {**common, **fields, "mse": mse})
    text = regenerate_results_md(tmp_path / "results", tmp_path / "results.md").read_text()
    assert ("- ETTh1: patchtst_selfsupervised: 1.000 (missed), patchtst_selfsupervised_lp_ft: 0.750 (protocol variant, "
            "no verdict)") in text


def test_ablate_runs_the_papers_table_and_sweeps_by_default():
    """Without `--variants`, ablate.py runs the paper's ablation (each part removed) and the two sweeps, and none of
    the diagnostics or recipe candidates (those would multiply a default run's cost)."""
    from himtm_hf.benchmarks import ABLATION_VARIANTS

    variants = load_script("ablate").AblationArguments().variants
    assert set(variants) <= set(ABLATION_VARIANTS) and len(set(variants)) == len(variants)
    assert {"full", "no_hmt", "no_ded", "no_hsd", "no_csa"} <= set(variants)
    assert {v for v in variants if v.startswith("hierarchies_")} == {"hierarchies_1", "hierarchies_2", "hierarchies_4"}
    assert {v for v in variants if v.startswith("mask_")} == {"mask_0.3", "mask_0.4", "mask_0.6", "mask_0.7"}
    assert not {"no_pretrain", "width_128", "select_by_reconstruction", "hsd_instance_norm"} & set(variants)


def test_cpu_peak_memory_is_measured_reproducibly_in_a_child():
    """The CPU memory child (fixed mmap threshold) gives the same numbers twice and sees a training step (activations,
    gradients, optimiser state) use more than an inference pass."""
    speed = load_script("benchmark_speed")
    args = speed.SpeedArguments(batch_size=8, d_model=32, num_heads=4, ffn_dim=64)
    first, second = (speed._run_child("--_memory_child", "himtm_prediction", 512, args, speed.MEMORY_CHILD_ENV)
                     for _ in range(2))
    assert first["train"] > first["inference"] > 0
    assert abs(first["train"] - second["train"]) <= 0.05 * first["train"] + 1.0


def test_cpu_lr_budget_differs_from_cpu_only_in_the_fine_tuning_learning_rate():
    from dataclasses import asdict

    from himtm_hf.benchmarks import budget_by_name

    cpu, high = asdict(budget_by_name("cpu")), asdict(budget_by_name("cpu_lr1e-3"))
    changed = {k for k in cpu if cpu[k] != high[k]}
    assert changed == {"name", "finetune_learning_rate"}
    assert high["finetune_learning_rate"] == 1e-3 > cpu["finetune_learning_rate"]


def test_cpu_long_budget_differs_from_cpu_lr_budget_only_in_pretraining_epochs():
    from dataclasses import asdict

    from himtm_hf.benchmarks import budget_by_name

    short, long = asdict(budget_by_name("cpu_lr1e-3")), asdict(budget_by_name("cpu_long"))
    assert {k for k in short if short[k] != long[k]} == {"name", "pretrain_epochs"}
    assert long["pretrain_epochs"] == 4 * short["pretrain_epochs"]


def test_head_first_variant_splits_the_budgets_fine_tuning_epochs(tmp_path):
    """The LP-FT variant spends 0.3 of the budget's fine-tuning epochs on the head alone (the record says how many),
    and a step-counted budget, which has no epochs to split, is refused with a message saying so."""
    from himtm_hf.benchmarks import (
        ABLATION_VARIANTS,
        ALL_MODELS,
        HEAD_FIRST_VARIANTS,
        Budget,
        budget_by_name,
        run_accuracy,
    )
    from himtm_hf.benchmarks.variants import head_only_epochs

    variant = "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_lp_ft"
    assert variant in HEAD_FIRST_VARIANTS
    assert head_only_epochs(variant, budget_by_name("full")) == pytest.approx(3.0)
    assert head_only_epochs("width_32_dropout_0.3_hsd_instance_norm_head_init_zeros", budget_by_name("full")) == 0
    # One lookup serves HiMTM variants and benchmark models, so the two name spaces must stay apart.
    assert set(HEAD_FIRST_VARIANTS) <= set(ABLATION_VARIANTS) and not set(ABLATION_VARIANTS) & set(ALL_MODELS)
    assert head_only_epochs("patchtst_selfsupervised_lp_ft", budget_by_name("full")) == pytest.approx(3.0)
    assert head_only_epochs("patchtst_selfsupervised", budget_by_name("full")) == 0
    with pytest.raises(ValueError, match="counts steps"):
        head_only_epochs(variant, budget_by_name("quick"))
    tiny = Budget("tiny_epochs", 1, 2, batch_size=8, max_train_windows=64, max_eval_windows=32, max_test_windows=64,
                  tiny_models=True)
    (record,) = run_accuracy(["ETTh1"], [96], ["himtm"], tiny, [1], tmp_path / "work", tmp_path / "results",
                             himtm_variant=variant, baselines=False)
    assert record["finetune_head_only_epochs"] == pytest.approx(0.6) and record["variant"] == variant
    head_log = tmp_path / "work" / "ETTh1" / "seed1" / variant / "himtm-H96" / "head_only" / "log.jsonl"
    assert head_log.is_file() and record["finetune_steps"] == 5 + 12  # 8 steps an epoch: ceil(4.8) + ceil(11.2)


def test_self_supervised_patchtst_head_first_shares_the_pretraining_and_trains_the_head_alone_first(tmp_path):
    """`patchtst_selfsupervised_lp_ft` is fine-tuned from the very pre-training `patchtst_selfsupervised` uses (one
    pre-training run, both records carry its loss), head first for 0.3 of the epochs, and gets its own column."""
    from himtm_hf.benchmarks import Budget, regenerate_results_md, run_accuracy

    tiny = Budget("tiny_epochs", 1, 2, batch_size=8, max_train_windows=64, max_eval_windows=32, max_test_windows=64,
                  tiny_models=True)
    records = run_accuracy(["ETTh1"], [96], ["patchtst_selfsupervised", "patchtst_selfsupervised_lp_ft"], tiny, [1],
                           tmp_path / "work", tmp_path / "results", baselines=False)
    end_to_end, head_first = records
    assert (end_to_end["model"], head_first["model"]) == ("patchtst_selfsupervised", "patchtst_selfsupervised_lp_ft")
    run_dir = tmp_path / "work" / "ETTh1" / "seed1" / "full"
    assert sorted(p.name for p in run_dir.glob("*-pretrain")) == ["patchtst_selfsupervised-pretrain"]
    assert head_first["pretrain_best_val_loss"] == end_to_end["pretrain_best_val_loss"]
    assert head_first["finetune_head_only_epochs"] == pytest.approx(0.6) and "finetune_head_only_epochs" not in end_to_end
    assert (run_dir / "patchtst_selfsupervised_lp_ft-H96" / "head_only" / "log.jsonl").is_file()
    assert head_first["finetune_steps"] == 5 + 12 and end_to_end["finetune_steps"] == 16
    assert head_first["mse"] != end_to_end["mse"]
    table = regenerate_results_md(tmp_path / "results", tmp_path / "results.md").read_text()
    assert "| patchtst_selfsupervised MSE / MAE | patchtst_selfsupervised_lp_ft MSE / MAE |" in table


def test_unknown_benchmark_model_is_refused_with_the_choices(tmp_path):
    from himtm_hf.benchmarks import budget_by_name, build_forecaster
    from himtm_hf.data import load_splits

    splits = load_splits("ETTh1", context_length=64, prediction_length=8)
    with pytest.raises(ValueError, match="patchtst_selfsupervised_lp_ft"):
        build_forecaster("patchtst_selfsupervise", splits, budget_by_name("quick"), None)


def test_git_commit_is_dirty_for_code_changes_but_not_for_the_benchmarks_own_outputs(tmp_path, monkeypatch):
    from himtm_hf.benchmarks import git_commit

    monkeypatch.delenv("HIMTM_GIT_COMMIT", raising=False)
    (tmp_path / "docs" / "results" / "accuracy").mkdir(parents=True)
    (tmp_path / "docs" / "results.md").write_text("# Results\n")
    (tmp_path / "docs" / "results" / "accuracy" / "r.json").write_text("{}")
    (tmp_path / "model.py").write_text("x = 1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit = git("rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path) == commit
    (tmp_path / "docs" / "results.md").write_text("# Results, regenerated\n")
    (tmp_path / "docs" / "results" / "accuracy" / "r.json").write_text('{"mse": 1}')
    assert git_commit(tmp_path) == commit  # a benchmark's own records and tables
    (tmp_path / "model.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == commit + "-dirty"


@pytest.mark.parametrize(("field", "value", "allowed"), [("compile", "fast", "reduce-overhead"),
                                                         ("dtype", "float16", "bfloat16"), ("device", "gpu", "cuda")])
def test_speed_arguments_are_checked_before_any_model_is_built(field, value, allowed):
    speed = load_script("benchmark_speed")
    with pytest.raises(ValueError, match=f"{value}.*{allowed}"):
        speed.check_arguments(speed.SpeedArguments(**{field: value}))


def test_committed_results_md_is_regenerated_from_the_committed_records(tmp_path):
    """docs/results.md is generated from docs/results/ (the records); a hand edit of either that was not
    followed by `regenerate_results_md()` would leave the committed tables or reading out of date."""
    from himtm_hf.benchmarks import regenerate_results_md

    committed = ROOT / "docs" / "results.md"
    fresh = regenerate_results_md(ROOT / "docs" / "results", tmp_path / "results.md").read_text()
    assert fresh == committed.read_text(), (
        "docs/results.md is out of date: run `python -c \"from himtm_hf.benchmarks import regenerate_results_md; "
        "regenerate_results_md()\"` and commit it.")


def test_ablation_ratio_to_scratch_uses_each_variants_own_reference(tmp_path):
    """"× from scratch": a pre-trained variant over the random-start run of the same network (`width_128` over
    `width_128_no_pretrain`, everything else over `no_pretrain`), within one defaults set; the skill column reads the
    recorded diagnostics, and a row without any shows a dash."""
    from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION, regenerate_results_md, write_record

    common = {"dataset": "ETTh1", "prediction_length": 96, "budget": "cpu_long", "budget_detail": {"name": "cpu_long"},
              "seed": 1, "device": "CPU", "device_kind": "cpu", "git_commit": "abc", "command": "cmd",
              "model": "himtm", "himtm_defaults": HIMTM_DEFAULTS_VERSION, "overrides": {}, "mae": 0.4}
    for variant, mse, skill in (("full", 0.40, 0.2), ("no_pretrain", 0.50, None), ("width_128", 0.30, 0.3),
                                ("width_128_no_pretrain", 0.25, None)):
        extra = {"pretrain_diagnostics": {"skill": skill}} if skill is not None else {}
        write_record(tmp_path / "results", "ablation", {**common, "variant": variant, "mse": mse, **extra})
    text = regenerate_results_md(tmp_path / "results", tmp_path / "results.md").read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["full"][3:6] == ["0.2000", "0.4000", "0.800"]
    assert rows["width_128"][3:6] == ["0.3000", "0.3000", "1.200"]
    assert rows["no_pretrain"][3] == "–" and rows["no_pretrain"][5] == "–"

