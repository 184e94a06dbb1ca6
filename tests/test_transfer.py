"""Transfer driver (`himtm_hf.benchmarks.transfer`): weather (21 channels) -> ETTh1 (7 channels) end to end on real
data at the `quick` budget, for HiMTM and self-supervised PatchTST, full fine-tuning / linear probing / few-shot
fractions."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from record_checks import absolute_paths

from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION
from himtm_hf.benchmarks.transfer import (
    BUDGETS,
    TransferArguments,
    build_patchtst_config,
    main,
    parse_pair,
    plan_runs,
    run_transfer,
)
from himtm_hf.data import load_splits

PROJECT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR", PROJECT.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(
    not (DATA_DIR / "weather.csv.gz").is_file() or not (DATA_DIR / "ETTh1.csv.gz").is_file(),
    reason=f"weather/ETTh1 not in {DATA_DIR}",
)
QUICK = BUDGETS["quick"]
RECORD_KEYS = {
    "source_dataset", "target_dataset", "pair", "prediction_length", "model", "protocol", "fraction", "mse", "mae",
    "budget", "seed", "epochs", "wall_time_s", "device", "git_commit", "command", "train_windows",
    "source_channels", "target_channels", "pretrain_steps", "finetune_steps", "budget_config",
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("transfer")
    args = TransferArguments(pairs=["weather:ETTh1"], models=["himtm", "patchtst"],
                             protocols=["finetune", "linear_probe"], fractions=[0.05, 1.0], budget="quick", seed=3,
                             data_dir=str(DATA_DIR), results_dir=str(root / "results"), work_dir=str(root / "work"))
    records = run_transfer(args, command="pytest transfer", log=lambda *_: None)
    return args, records, root


def _networks(records):
    return [r for r in records if r["protocol"] != "closed_form"]


def test_matrix_runs_end_to_end_across_channel_counts(matrix):
    args, all_records, root = matrix
    records = _networks(all_records)
    assert len(records) == 8
    cells = {(r["model"], r["protocol"], r["fraction"]) for r in records}
    assert cells == {(m, p, f) for m in ("himtm", "patchtst") for p in ("finetune", "linear_probe") for f in (0.05, 1.0)}
    n_train = len(load_splits("ETTh1", data_dir=DATA_DIR, context_length=QUICK.context_length,
                              prediction_length=QUICK.prediction_length).train)
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["pair"] == "weather->ETTh1" and r["source_channels"] == 21 and r["target_channels"] == 7
        assert r["budget"] == "quick" and r["seed"] == 3 and r["command"] == "pytest transfer"
        assert math.isfinite(r["mse"]) and math.isfinite(r["mae"]) and 0 < r["mse"] < 10
        assert r["encoder_tensors_loaded"] > 0 and r["pretrain_steps"] == QUICK.pretrain_steps
        assert r["train_windows"] == (n_train if r["fraction"] == 1.0 else math.ceil(0.05 * n_train))
        assert r["test_windows"] == QUICK.max_test_windows and r["full_test_split"] is False
        assert r["finetune_steps"] == QUICK.finetune_steps
        assert r.get("himtm_defaults") == (HIMTM_DEFAULTS_VERSION if r["model"] == "himtm" else None)
        path = Path(args.results_dir) / "quick" / "weather-to-ETTh1" / f"L{QUICK.context_length}-H{QUICK.prediction_length}"
        fraction = f"{r['fraction']:g}".replace(".", "p")
        on_disk = json.loads((path / f"{r['model']}-{r['protocol']}-f{fraction}-seed3.json").read_text())
        assert on_disk == r
        assert not absolute_paths(on_disk), absolute_paths(on_disk)  # the work folders are absolute tmp paths here
    # both arms get the same budget; a linear probe trains fewer parameters than full fine-tuning
    assert len({json.dumps(r["budget_config"], sort_keys=True) for r in records}) == 1
    for model in ("himtm", "patchtst"):
        by = {(r["protocol"], r["fraction"]): r for r in records if r["model"] == model}
        assert by[("linear_probe", 1.0)]["trainable_parameters"] < by[("finetune", 1.0)]["trainable_parameters"]
    summary = (Path(args.results_dir) / "quick" / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| weather->ETTh1 | 16 | 0.05 | 3 |"))
    header = next(line for line in summary.splitlines() if line.startswith("| pair |"))
    assert "HiMTM linear_probe" in header and "PatchTST finetune" in header and "linear (ridge)" in header
    by_model = {(r["model"], r["protocol"]): r for r in all_records if r["fraction"] == 0.05}
    assert f"{by_model[('patchtst', 'linear_probe')]['mse']:.4f}" in row and f"{by_model[('naive', 'closed_form')]['mse']:.4f}" in row
    # the pre-trained encoders were saved once per model and source, next to the fine-tuning run folders
    assert sorted(p.name for p in (Path(args.work_dir) / "quick").iterdir()) == [
        "finetune", "himtm-pretrain-weather-L64-seed3", "patchtst-pretrain-weather-L64-seed3"]
    # relative to --work_dir, so that a record names no folder of the machine it ran on
    assert {r["pretrained_checkpoint"] for r in records} == {
        f"quick/{m}-pretrain-weather-L64-seed3" for m in ("himtm", "patchtst")}


def test_closed_form_rows_use_the_networks_windows(matrix):
    """Each fraction gets a naive and a ridge record on the same test windows as the networks; the ridge is fitted on
    the same few-shot train windows, and the naive forecast is what it says (the last look-back value)."""
    from himtm_hf.benchmarks.baselines import LastValueLinearForecaster
    from himtm_hf.training import forecast_metrics

    args, all_records, _ = matrix
    closed = [r for r in all_records if r["protocol"] == "closed_form"]
    assert sorted((r["model"], r["fraction"]) for r in closed) == [
        ("linear", 0.05), ("linear", 1.0), ("naive", 0.05), ("naive", 1.0)]
    networks = {(r["fraction"]): r for r in _networks(all_records) if r["model"] == "himtm"}
    for r in closed:
        assert r["test_windows"] == networks[r["fraction"]]["test_windows"] == QUICK.max_test_windows
        assert r["train_windows"] == networks[r["fraction"]]["train_windows"]
        assert r["fraction_selection"] == "last" and math.isfinite(r["mse"])
    assert {r["ridge_lambda"] is not None for r in closed if r["model"] == "linear"} == {True}
    splits = load_splits("ETTh1", data_dir=DATA_DIR, context_length=QUICK.context_length,
                         prediction_length=QUICK.prediction_length)
    naive = forecast_metrics(LastValueLinearForecaster.naive(QUICK.context_length, QUICK.prediction_length),
                             splits.test, splits.scaler, max_windows=QUICK.max_test_windows, disable_tqdm=True)
    assert next(r for r in closed if r["model"] == "naive")["mse"] == pytest.approx(naive["mse"], rel=1e-6)


def test_corpus_source_pretrains_one_channel_encoders_that_fine_tune_on_the_target(tmp_path, one_thread):
    """A source naming several datasets is a channel-independent corpus (its windows univariate): both models
    pre-train a 1-channel encoder on it and fine-tune it on the 7-channel target."""
    from safetensors.torch import load_file

    args = TransferArguments(pairs=["ETTh2,weather:ETTh1"], models=["himtm", "patchtst"], protocols=["finetune"],
                             fractions=[0.05], budget="quick", seed=1, data_dir=str(DATA_DIR),
                             results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"))
    records = _networks(run_transfer(args, command="pytest corpus", log=lambda *_: None))
    assert {r["model"] for r in records} == {"himtm", "patchtst"}
    for r in records:
        assert r["pair"] == "ETTh2+weather->ETTh1" and r["source_channels"] == 1 and r["target_channels"] == 7
        assert r["encoder_tensors_loaded"] > 0 and math.isfinite(r["mse"])
    work = tmp_path / "work" / "quick"
    for model in ("himtm", "patchtst"):
        pretrained = work / f"{model}-pretrain-ETTh2_weather-L64-seed1"
        corpus = json.loads((pretrained / "corpus.json").read_text())
        assert [d["name"] for d in corpus["datasets"]] == ["ETTh2", "weather"]
        assert all(d["windows"]["train"]["used"] <= QUICK.max_windows_per_dataset for d in corpus["datasets"])
        config = json.loads((pretrained / "config.json").read_text())
        assert config["num_input_channels"] == 1
        encoder = {k: v for k, v in load_file(pretrained / "model.safetensors").items() if k.startswith("model.")}
        folder = work / "finetune" / "ETTh2_weather-to-ETTh1" / "L64-H16" / f"{model}-finetune-f0p05-seed1"
        assert json.loads((folder / "config.json").read_text())["num_input_channels"] == 7
        assert set(encoder) <= set(load_file(folder / "model.safetensors"))


def test_results_page_shows_the_transfer_table_with_its_closed_form_rows(matrix, tmp_path):
    """docs/results.md's transfer section: the networks and the closed-form rows of a cell on one table row, also
    when some of them ran on the same CPU with another thread count (one table, both devices named)."""
    from himtm_hf.benchmarks.report import regenerate_results_md

    args, all_records, _ = matrix
    results = tmp_path / "results"
    (results / "transfer").mkdir(parents=True)
    for i, r in enumerate(all_records):
        r = {**r, "device": f"cpu:x86_64 x{1 + i % 2} threads"}
        (results / "transfer" / f"{r['model']}-{r['protocol']}-{r['fraction']}.json").write_text(json.dumps(r))
    page = regenerate_results_md(results, tmp_path / "results.md").read_text()
    section = page.split("## Transfer", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| weather->ETTh1 | 16 | 1 | 3 |"))
    for r in all_records:
        if r["fraction"] == 1.0:
            assert f"{r['mse']:.4f}" in row
    assert section.count("### Budget") == 1 and "pytest transfer" in section
    assert "### Budget `quick` on cpu:x86_64 x1 threads, cpu:x86_64 x2 threads" in section


def test_existing_records_are_skipped(matrix):
    args, records, _ = matrix
    again = run_transfer(args, command="pytest transfer", log=lambda *_: None)
    assert [r["created"] for r in again] == [r["created"] for r in records]


@pytest.mark.parametrize("model", ["himtm", "patchtst"])
def test_pretrained_encoder_is_loaded_and_linear_probe_keeps_it_frozen(matrix, model):
    """The saved forecasters: after linear probing the encoder equals the pre-trained one tensor for tensor (so it
    was loaded, and stayed frozen, batch-norm statistics included); full fine-tuning changed it."""
    from safetensors.torch import load_file

    args, records, _ = matrix
    work = Path(args.work_dir) / "quick"
    pretrained = load_file(work / f"{model}-pretrain-weather-L64-seed3" / "model.safetensors")
    encoder_keys = [k for k in pretrained if k.startswith("model.")]
    assert encoder_keys
    finetuned = {}
    for protocol in ("linear_probe", "finetune"):
        folder = work / "finetune" / "weather-to-ETTh1" / "L64-H16" / f"{model}-{protocol}-f1-seed3"
        finetuned[protocol] = load_file(folder / "model.safetensors")
        assert (folder / "scaler.json").is_file() and (folder / "metrics.json").is_file()
        assert any(k.startswith("head.") for k in finetuned[protocol])
    for key in encoder_keys:
        torch.testing.assert_close(finetuned["linear_probe"][key], pretrained[key], rtol=0, atol=0)
    assert any(not torch.equal(finetuned["finetune"][k], pretrained[k]) for k in encoder_keys)


def test_lp_ft_trains_the_head_alone_first_for_both_models(matrix):
    """`lp_ft`: the first `HEAD_ONLY_FRACTION` of the budget's steps train the head alone (phase 1, its own log), the
    rest train everything (that the encoder stays frozen in phase 1 is tested in test_training.py); the record says
    how many steps were head-only."""
    args, _, root = matrix
    lp_args = TransferArguments(pairs=["weather:ETTh1"], models=["himtm", "patchtst"], protocols=["lp_ft"],
                                fractions=[1.0], budget="quick", seed=3, data_dir=args.data_dir,
                                results_dir=str(root / "results-lpft"), work_dir=args.work_dir)
    records = _networks(run_transfer(lp_args, command="pytest transfer lp_ft", log=lambda *_: None))
    assert sorted(r["model"] for r in records) == ["himtm", "patchtst"]
    work = Path(args.work_dir) / "quick"
    for record in records:
        assert record["protocol"] == "lp_ft" and record["head_only_steps"] == 1 and record["finetune_steps"] == 3
        folder = work / "finetune" / "weather-to-ETTh1" / "L64-H16" / f"{record['model']}-lp_ft-f1-seed3"
        head_log = [json.loads(line) for line in (folder / "head_only" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in head_log if r["split"] == "train"] == [1]
        full_log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in full_log if r["split"] == "train"][-1] == 2  # phase 2: the other 2 steps
        assert json.loads((folder / "metrics.json").read_text())["head_only_steps"] == 1
    table = (root / "results-lpft" / "quick" / "summary.md").read_text()
    assert "HiMTM lp_ft" in table and "PatchTST lp_ft" in table


def test_a_finished_himtm_pretraining_is_a_source_fine_tuned_without_pretraining_again(matrix):
    """A source that names a HiMTM pre-training folder (`checkpoints/himtm-base:ETTh1`) is fine-tuned from as it is:
    no new pre-training, the record names the checkpoint and its steps; PatchTST and another look-back are refused."""
    args, _, root = matrix
    folder = Path(args.work_dir) / "quick" / "himtm-pretrain-weather-L64-seed3"
    before = sorted(p.name for p in Path(args.work_dir, "quick").iterdir())
    given = TransferArguments(pairs=[f"{folder}:ETTh1"], models=["himtm"], protocols=["finetune"], fractions=[1.0],
                              budget="quick", seed=3, data_dir=args.data_dir, results_dir=str(root / "results-given"),
                              work_dir=str(root / "work-given"))
    (record,) = _networks(run_transfer(given, command="pytest transfer checkpoint", log=lambda *_: None))
    assert record["source_dataset"] == folder.name and record["pretrain_steps"] == QUICK.pretrain_steps
    assert record["encoder_tensors_loaded"] > 0 and record["pretrained_checkpoint"] == folder.name
    assert not any("pretrain" in p.name for p in Path(root, "work-given", "quick").iterdir())
    assert sorted(p.name for p in Path(args.work_dir, "quick").iterdir()) == before
    with pytest.raises(ValueError, match="--models himtm"):
        plan_runs(TransferArguments(pairs=[f"{folder}:ETTh1"], models=["himtm", "patchtst"]))
    with pytest.raises(ValueError, match="--context_length 64"):
        run_transfer(TransferArguments(pairs=[f"{folder}:ETTh1"], models=["himtm"], protocols=["finetune"],
                                       fractions=[1.0], budget="quick", context_length=96, data_dir=args.data_dir,
                                       results_dir=str(root / "results-bad"), work_dir=str(root / "work-bad")),
                     command="pytest", log=lambda *_: None)


def test_zero_shot_scores_the_pretraining_model_as_it_is_on_the_networks_test_windows(matrix):
    """`zero_shot`: no training on the target; the HiMTM pre-training forecasts by masked reconstruction from the last
    look-back steps its window leaves (quick budget: 64-step window, 16-step units, H = 16 -> 48 steps), evaluated
    once and recorded in every fraction's row; PatchTST is not planned for it."""
    from himtm_hf.modeling_himtm import HiMTMForPretraining
    from himtm_hf.training.loop import cap_windows

    args, _, root = matrix
    zs_args = TransferArguments(pairs=["weather:ETTh1"], models=["himtm", "patchtst"], protocols=["zero_shot"],
                                fractions=[0.05, 1.0], budget="quick", seed=3, data_dir=args.data_dir,
                                results_dir=str(root / "results-zs"), work_dir=args.work_dir)
    assert {run.model for run in plan_runs(zs_args)} == {"himtm"}
    with pytest.raises(ValueError, match="zero_shot is HiMTM's only"):
        plan_runs(TransferArguments(pairs=["weather:ETTh1"], models=["patchtst"], protocols=["zero_shot"]))
    before = sorted(p.name for p in Path(args.work_dir, "quick", "finetune").rglob("*"))
    records = _networks(run_transfer(zs_args, command="pytest transfer zero_shot", log=lambda *_: None))
    assert sorted(r["fraction"] for r in records) == [0.05, 1.0]
    assert len({r["mse"] for r in records}) == 1
    for r in records:
        assert r["protocol"] == "zero_shot" and r["train_windows"] == 0 and r["finetune_steps"] == 0
        assert r["trainable_parameters"] == 0 and r["forecast_look_back"] == 48 and r["encoder_tensors_loaded"] > 0
        assert r["test_windows"] == QUICK.max_test_windows
    assert sorted(p.name for p in Path(args.work_dir, "quick", "finetune").rglob("*")) == before  # nothing trained

    splits = load_splits("ETTh1", data_dir=DATA_DIR, context_length=QUICK.context_length,
                         prediction_length=QUICK.prediction_length)
    model = HiMTMForPretraining.from_pretrained(Path(args.work_dir, "quick", "himtm-pretrain-weather-L64-seed3"),
                                                num_input_channels=7).eval()
    windows = list(cap_windows(splits.test, QUICK.max_test_windows))  # the evaluation's evenly strided windows
    past = torch.stack([w["past_values"] for w in windows])
    future = torch.stack([w["future_values"] for w in windows])
    with torch.no_grad():
        expected = ((model.forecast(past, QUICK.prediction_length).prediction_outputs - future) ** 2).mean().item()
    assert records[0]["mse"] == pytest.approx(expected, rel=1e-5)
    table = (root / "results-zs" / "quick" / "summary.md").read_text()
    assert "HiMTM zero_shot" in table and "linear (ridge)" in table


def test_a_matrix_at_another_look_back_never_reads_the_first_ones_records(matrix):
    """Records are kept per look-back: the same pair, model, protocol, fraction and seed at a second context length
    runs (and is recorded) instead of being answered with the first look-back's records."""
    args, _, root = matrix
    common = dict(pairs=["weather:ETTh1"], models=["himtm"], protocols=["zero_shot"], fractions=[1.0],
                  budget="quick", seed=3, data_dir=args.data_dir, results_dir=str(root / "results-look-back"),
                  work_dir=args.work_dir)
    short = run_transfer(TransferArguments(**common), command="pytest transfer L64", log=lambda *_: None)
    long = run_transfer(TransferArguments(**common, context_length=128), command="pytest transfer L128",
                        log=lambda *_: None)
    assert {r["context_length"] for r in short} == {64}
    assert {r["context_length"] for r in long} == {128}
    assert {r["protocol"] for r in long} == {"zero_shot", "closed_form"}
    assert {r["forecast_look_back"] for r in _networks(long)} == {128 - 16}
    folders = {p.parent.name for p in Path(root, "results-look-back", "quick").rglob("*.json")}
    assert folders == {"L64-H16", "L128-H16"}


def test_patchtst_baseline_is_configured_as_in_the_paper():
    config = build_patchtst_config(BUDGETS["cpu"], num_channels=7, pretraining=True)
    assert (config.patch_length, config.patch_stride, config.random_mask_ratio) == (12, 12, 0.4)
    assert config.pooling_type is None and config.scaling == "std" and config.do_mask_input
    assert (config.d_model, config.num_attention_heads, config.ffn_dim, config.num_hidden_layers) == (128, 16, 512, 3)
    forecaster = build_patchtst_config(BUDGETS["cpu"], num_channels=7)
    assert not forecaster.do_mask_input and forecaster.pooling_type is None


def test_plan_and_argument_errors(capsys):
    assert parse_pair("weather:ETTh1") == parse_pair("weather->ETTh1") == ("weather", "ETTh1")
    with pytest.raises(ValueError, match="source:target"):
        parse_pair("weather")
    args = TransferArguments(pairs=["weather:ETTh1", "ETTm1:ETTh2"], protocols=["finetune", "linear_probe", "scratch"])
    assert len(plan_runs(args)) == 2 * 2 * 3 * 3
    for bad, message in ((dict(models=["lstm"]), "Unknown model"), (dict(protocols=["lora"]), "Unknown protocol"),
                         (dict(fractions=[0.0]), r"Fractions must be in \(0, 1\]")):
        with pytest.raises(ValueError, match=message):
            plan_runs(TransferArguments(**bad))
    with pytest.raises(ValueError, match="Unknown budget"):
        run_transfer(TransferArguments(budget="huge"))
    assert main(["--pairs", "weather:ETTh1", "--models", "himtm", "--fractions", "0.1", "--list_only"]) == []
    assert "TransferRun(source='weather', target='ETTh1', model='himtm', protocol='finetune'" in capsys.readouterr().out


def test_finished_pretraining_is_reused_unless_asked_and_never_when_the_budget_differs(matrix):
    """Runs after the matrix tests (it re-writes one record): a re-run reuses the saved pre-training of the same
    model, source, seed, budget and commit instead of pre-training again."""
    args, records, _ = matrix
    original = next(r for r in records if r["model"] == "himtm" and r["protocol"] == "finetune" and r["fraction"] == 1)
    subset = dict(models=["himtm"], protocols=["finetune"], fractions=[1.0], overwrite=True)

    lines: list[str] = []
    (again,) = _networks(run_transfer(TransferArguments(**{**vars(args), **subset}), command="pytest transfer",
                                      log=lines.append))
    assert any("reusing the pre-training" in line for line in lines)
    assert again["pretrain_wall_time_s"] == original["pretrain_wall_time_s"]  # the facts of the first pre-training
    assert again["mse"] == pytest.approx(original["mse"], rel=1e-5)  # same encoder, same seed, same fine-tuning

    lines.clear()
    (fresh,) = _networks(run_transfer(TransferArguments(**{**vars(args), **subset, "repretrain": True}),
                                      command="pytest transfer", log=lines.append))
    assert not any("reusing" in line for line in lines)
    assert fresh["pretrain_wall_time_s"] != original["pretrain_wall_time_s"]

    marker = Path(args.work_dir) / "quick" / "himtm-pretrain-weather-L64-seed3" / "transfer_pretraining.json"
    saved = json.loads(marker.read_text())
    saved["budget"]["pretrain_steps"] += 1  # a folder made under another budget is pre-trained again
    marker.write_text(json.dumps(saved))
    lines.clear()
    run_transfer(TransferArguments(**{**vars(args), **subset}), command="pytest transfer", log=lines.append)
    assert not any("reusing" in line for line in lines)
