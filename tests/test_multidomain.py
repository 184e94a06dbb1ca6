"""Look-back-only pre-training windows, multi-domain (channel-independent) pre-training corpora and the himtm-base
script, at tiny sizes: small synthetic CSVs in tmp_path or slices of the real benchmarks, tiny models, a few steps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from script_loading import load_script

from himtm_hf import HiMTMForPrediction
from himtm_hf.base_checkpoint import base_model_card_text, default_base_output_dir, diagnostics_rows
from himtm_hf.data import (
    LookbackWindowDataset,
    PretrainingCorpus,
    load_pretraining_corpus,
    load_splits,
    select_datasets,
)
from himtm_hf.output_folders import UnsafeOutputError, read_marker
from himtm_hf.training import (
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    PretrainArguments,
    finetune,
    load_prediction_model,
    pretrain,
)
from himtm_hf.training import runs as training_runs

L, H = 32, 8
TINY = dict(patch_length=8, num_hierarchies=2, d_model="16", num_attention_heads=2, ffn_dim="32",
            decoder_num_attention_heads=2, csa_num_attention_heads=2)
TINY_FLAGS = ["--patch_length", "8", "--num_hierarchies", "2", "--d_model", "16", "--num_attention_heads", "2",
              "--ffn_dim", "32", "--decoder_num_attention_heads", "2", "--csa_num_attention_heads", "2"]
QUICK = dict(max_steps=2, per_device_train_batch_size=8, max_eval_windows=16, per_device_eval_batch_size=16,
             eval_every_steps=2, disable_tqdm=True, use_cpu=True, logging_steps=1)
# The pre-training diagnostics (tested elsewhere) would take most of these tests' time: off where the field exists.
QUICK_PRE = {**QUICK, **({"diagnostics_windows": 0} if "diagnostics_windows" in {
    f.name for f in dataclasses.fields(PretrainArguments)} else {})}


def write_csv(path: Path, rows: int, channels: int, seed: int, loc: float, scale: float) -> np.ndarray:
    """A random-walk CSV (date + `channels` columns, channel c around `loc + c` with step size `scale * (c + 1)`);
    returns the values."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((rows, channels)) * scale * (np.arange(channels) + 1)
    values = loc + np.arange(channels) + steps.cumsum(axis=0)
    frame = pd.DataFrame(values, columns=[f"{path.stem}_{c}" for c in range(channels)])
    frame.insert(0, "date", pd.date_range("2021-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return values


def train_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std (ddof=0) of the default protocol's train rows (the first int(0.7 n))."""
    train = values[: int(0.7 * len(values))]
    return train.mean(axis=0), train.std(axis=0)


# ----------------------------------------------------------------------------------------------------------------------
# Item 1: look-back-only windows
# ----------------------------------------------------------------------------------------------------------------------


def test_pretraining_windows_are_lookback_only(tmp_path, monkeypatch):
    path = tmp_path / "series.csv"
    write_csv(path, rows=200, channels=3, seed=0, loc=5.0, scale=0.5)
    forecast = load_splits(path, context_length=L, prediction_length=H)
    lookback = load_splits(path, context_length=L, prediction_length=0)
    assert lookback.borders == forecast.borders  # the same split rows, windowed differently
    for split, (start, end) in lookback.borders.items():
        assert isinstance(lookback[split], LookbackWindowDataset)
        assert len(lookback[split]) == (end - start) - L + 1
        assert len(forecast[split]) == (end - start) - L - H + 1
    item = lookback.train[-1]
    assert set(item) == {"past_values", "past_observed_mask"} and item["past_values"].shape == (L, 3)
    assert torch.equal(item["past_values"], lookback.train.values[-L:])  # the last window reaches the split's end
    assert torch.equal(lookback.val[0]["past_values"], forecast.val[0]["past_values"])

    # pretrain() trains and validates on exactly these windows (the data it hands to the loop is captured).
    seen = {}

    def capture(model, train, val, *args, **kwargs):
        seen.update(train=train, val=val)
        raise RuntimeError("captured")

    monkeypatch.setattr(training_runs, "train_model", capture)
    with pytest.raises(RuntimeError, match="captured"):
        pretrain(ModelArguments(**TINY), DataArguments(dataset=str(path), context_length=L, prediction_length=H),
                 PretrainArguments(output_dir=str(tmp_path / "run"), **QUICK_PRE))
    assert len(seen["train"]) == len(lookback.train) and len(seen["val"]) == len(lookback.val)
    assert "future_values" not in seen["val"][0]


def test_short_val_split_keeps_lookback_windows(tmp_path):
    """A val split shorter than L + H has no forecasting window but still L-row pre-training windows."""
    path = tmp_path / "short.csv"
    write_csv(path, rows=200, channels=2, seed=1, loc=0.0, scale=1.0)
    # val: 10 rows + the L = 32 rows before it = 42 rows < L + H = 48: no forecasting window, 11 look-back windows.
    data = DataArguments(dataset=str(path), context_length=L, prediction_length=16, split_fractions="0.7,0.05,0.25")
    with pytest.warns(UserWarning, match="has no windows"):
        forecast = data.load()
    pre = data.load_pretraining()
    val_rows = pre.borders["val"][1] - pre.borders["val"][0]
    assert val_rows == 42 and len(forecast.val) == 0 and len(pre.val) == 11


# ----------------------------------------------------------------------------------------------------------------------
# Item 2: the corpus
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_csvs(tmp_path):
    a = write_csv(tmp_path / "a" / "alpha.csv", rows=160, channels=2, seed=2, loc=100.0, scale=3.0)
    b = write_csv(tmp_path / "b" / "beta.csv", rows=240, channels=3, seed=3, loc=-7.0, scale=0.05)
    return (tmp_path / "a" / "alpha.csv", a), (tmp_path / "b" / "beta.csv", b)


def test_corpus_is_univariate_and_each_dataset_uses_its_own_train_statistics(two_csvs):
    (path_a, raw_a), (path_b, raw_b) = two_csvs
    corpus = load_pretraining_corpus(f"{path_a},{path_b}", context_length=L)
    assert isinstance(corpus, PretrainingCorpus) and corpus.num_channels == 1
    assert corpus.names == ["alpha", "beta"]
    windows = {"alpha": int(0.7 * 160) - L + 1, "beta": int(0.7 * 240) - L + 1}
    assert [len(m.train) for m in corpus.members] == [windows["alpha"] * 2, windows["beta"] * 3]
    assert len(corpus.train) == windows["alpha"] * 2 + windows["beta"] * 3
    for member, raw in zip(corpus.members, (raw_a, raw_b)):
        mean, std = train_stats(raw)
        np.testing.assert_allclose(member.splits.scaler.mean, mean, rtol=1e-9)
        np.testing.assert_allclose(member.splits.scaler.std, std, rtol=1e-9)
        n = member.train.num_windows
        for k in (0, n - 1, n + 5, len(member.train) - 1):  # channel-major: item k = channel k // n, window k % n
            channel, window = divmod(k, n)
            item = member.train[k]
            assert item["past_values"].shape == item["past_observed_mask"].shape == (L, 1)
            expected = (raw[window : window + L, channel] - mean[channel]) / std[channel]
            np.testing.assert_allclose(item["past_values"][:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # The concatenation: beta's first univariate window follows every alpha window, standardised by beta's stats.
    first_beta = corpus.train[len(corpus.members[0].train)]["past_values"][:, 0].numpy()
    mean_b, std_b = train_stats(raw_b)
    np.testing.assert_allclose(first_beta, (raw_b[:L, 0] - mean_b[0]) / std_b[0], rtol=1e-5, atol=1e-5)
    assert abs(float(first_beta.mean())) < 5  # with alpha's (or pooled) statistics it would be far off
    # Validation windows come from the val splits (rows before int(0.7 n) - L are never in them).
    val_rows = corpus.members[1].splits.borders["val"]
    assert corpus.members[1].val.num_windows == val_rows[1] - val_rows[0] - L + 1


def test_cap_leave_out_and_argument_errors(two_csvs):
    (path_a, _), (path_b, _) = two_csvs
    both = f"{path_a},{path_b}"
    capped = load_pretraining_corpus(both, context_length=L, max_windows_per_dataset=100)
    assert [len(m.train) for m in capped.members] == [100, 100]  # 162 and 411 available
    assert [len(m.val) for m in capped.members] == [min(100, m.val.available) for m in capped.members]
    beta = capped.members[1].train
    channels = [divmod(int(k), beta.num_windows)[0] for k in beta.indices]
    assert set(channels) == {0, 1, 2}  # an evenly strided cap keeps every channel
    assert capped.to_dict()["sampling"]["rule"] == "evenly_strided_cap_per_dataset"

    left = load_pretraining_corpus(both, context_length=L, leave_out="alpha")
    assert left.names == ["beta"] and left.left_out == [str(path_a)]
    assert select_datasets("ETTh1,ETTh2,weather", "etth2") == ["ETTh1", "weather"]
    with pytest.raises(ValueError, match="'ETTh3' is not among the datasets"):
        select_datasets("ETTh1,ETTh2", "ETTh3")
    with pytest.raises(ValueError, match="removes every dataset"):
        select_datasets("ETTh1,ETTh2", "ETTh1,ETTh2")
    with pytest.raises(ValueError, match="twice"):
        select_datasets("ETTh1,etth1")
    with pytest.raises(ValueError, match="empty entry"):
        select_datasets("ETTh1,,ETTh2")
    with pytest.raises(ValueError, match="is not among"):
        DataArguments(dataset=both, context_length=L, leave_out="gamma").load_pretraining()
    with pytest.raises(ValueError, match="only pre-training"):
        DataArguments(dataset=both, context_length=L).load()
    with pytest.raises(ValueError, match="--target_columns"):
        DataArguments(dataset=both, context_length=L, target_columns="alpha_0").load_pretraining()
    with pytest.raises(ValueError, match="--max_windows_per_dataset applies"):
        DataArguments(dataset=str(path_a), context_length=L, max_windows_per_dataset=10).load_pretraining()
    with pytest.raises(ValueError, match=">= 1"):
        load_pretraining_corpus(both, context_length=L, max_windows_per_dataset=0)


def test_multidomain_pretrain_writes_corpus_and_finetunes_on_c_channels(tmp_path, two_csvs):
    (path_a, _), (path_b, _) = two_csvs
    data = DataArguments(dataset="ETTh1,weather", context_length=L, prediction_length=H, max_windows_per_dataset=64)
    run = pretrain(ModelArguments(**TINY), data, PretrainArguments(output_dir=str(tmp_path / "pt"), **QUICK_PRE))
    corpus = json.loads((run / "corpus.json").read_text())
    assert [d["name"] for d in corpus["datasets"]] == ["ETTh1", "weather"]
    assert [d["num_channels"] for d in corpus["datasets"]] == [7, 21]
    assert [d["windows"]["train"]["used"] for d in corpus["datasets"]] == [64, 64]
    assert corpus["datasets"][0]["windows"]["train"]["lookback_windows"] == 12 * 30 * 24 - L + 1
    assert corpus["total_windows"] == {"train": 128, "val": 128}
    etth1 = load_splits("ETTh1", context_length=L, prediction_length=H)
    np.testing.assert_allclose(corpus["datasets"][0]["scaler"]["mean"], etth1.scaler.mean)
    assert corpus["datasets"][0]["scaler"]["columns"] == etth1.columns
    assert not (run / "scaler.json").exists()  # one scaler per dataset, in corpus.json
    assert json.loads((run / "config.json").read_text())["num_input_channels"] == 1
    assert "corpus.json" in read_marker(run)["written"]
    assert json.loads((run / "run_args.json").read_text())["data_args"]["dataset"] == "ETTh1,weather"

    # The 1-channel encoder becomes a 7-channel forecaster with the same encoder weights.
    ft_data = DataArguments(dataset="ETTh1", context_length=L, prediction_length=H)
    model = load_prediction_model(run, ModelArguments(), ft_data, num_channels=7)
    assert model.config.num_input_channels == 7 and model.config.prediction_length == H
    pre = HiMTMForPrediction.from_pretrained(str(run), num_input_channels=7, prediction_length=H).state_dict()
    encoder = [k for k in pre if "encoder" in k]
    assert encoder and all(torch.equal(pre[k], model.state_dict()[k]) for k in encoder)
    metrics = finetune(ModelArguments(), ft_data, FinetuneArguments(
        output_dir=str(tmp_path / "ft"), pretrained_model_path=str(run), max_train_windows=16, max_test_windows=16,
        plot_windows=0, **{**QUICK, "max_steps": 1}))
    assert metrics["num_channels"] == 7 and np.isfinite(metrics["test"]["mse"])
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["num_input_channels"] == 7

    # Every input is protected: an output folder holding the *second* CSV is refused before anything is written.
    before = sorted(p.name for p in path_b.parent.iterdir())
    with pytest.raises(UnsafeOutputError, match=f"contains the data file {path_b}"):
        pretrain(ModelArguments(**TINY), DataArguments(dataset=f"{path_a},{path_b}", context_length=L),
                 PretrainArguments(output_dir=str(path_b.parent), overwrite_output_dir=True, **QUICK_PRE))
    assert sorted(p.name for p in path_b.parent.iterdir()) == before
    assert [role for role, _ in training_runs.data_inputs(DataArguments(dataset=f"{path_a},{path_b}"))] == [
        "data file", "data file"]

    # A single-dataset run over the multi-domain one: corpus.json goes (the marker lists it), scaler.json comes.
    single = DataArguments(dataset=str(path_a), context_length=L, prediction_length=H)
    pretrain(ModelArguments(**TINY), single, PretrainArguments(output_dir=str(run), overwrite_output_dir=True,
                                                               **QUICK_PRE))
    assert not (run / "corpus.json").exists() and (run / "scaler.json").is_file()
    assert json.loads((run / "config.json").read_text())["num_input_channels"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# Item 3: the base checkpoint script
# ----------------------------------------------------------------------------------------------------------------------


def test_pretrain_base_script_writes_card_and_dry_run(tmp_path):
    script = load_script("pretrain_base")
    out = tmp_path / "base"
    result = script.main([
        "--datasets", "ETTh1,ETTh2,weather", "--leave_out", "ETTh2", "--output_dir", str(out),
        "--context_length", str(L), "--prediction_length", str(H), "--max_windows_per_dataset", "48",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_eval_windows", "16",
        "--per_device_eval_batch_size", "16", "--eval_every_steps", "2", "--save_steps", "0", "--logging_steps", "1",
        "--use_cpu", "--disable_tqdm", "--repo_id", "my-org/himtm-base-test", *TINY_FLAGS,
    ])
    card = (out / "README.md").read_text()
    for text in ("# himtm-base-test", "## Pre-training data", "| ETTh1 | 7 | 48 / ", "| weather | 21 | 48 / ",
                 "Left out (leave-one-out checkpoint): **ETTh2**", "## Budget", "2 of max_steps 2", "commit `",
                 "Machine: ", "## Pre-training diagnostics", "num_input_channels=7",
                 "model.forecast(history, prediction_length=96)", "the 32-step window less those units"):
        assert text in card, text
    assert str(tmp_path) not in card  # nothing of this machine's layout is published
    assert "README.md" in read_marker(out)["written"]
    hub = tmp_path / "base-hub"
    assert result.dry_run.folder == hub
    assert {"README.md", "config.json", "model.safetensors", "corpus.json", "modeling_himtm.py"} <= {
        p.name for p in hub.iterdir()}
    staged, written = ModelCard.load(hub / "README.md"), ModelCard.load(out / "README.md")
    assert staged.text.strip() == written.text.strip()  # the dry run publishes this card, not the generic one
    assert staged.data.datasets == ["ETTh1", "weather"]
    assert json.loads((hub / "config.json").read_text())["num_input_channels"] == 1
    assert default_base_output_dir("ETTh1") == Path("outputs/himtm-base-without-ETTh1")
    assert default_base_output_dir(None) == Path("outputs/himtm-base")

    # The card reads metrics.json defensively: diagnostics summarised, a broken file only noted.
    (out / "metrics.json").write_text(json.dumps({"kind": "pretraining", "history": [{"step": 1}], "diagnostics": {
        "skill": 0.125, "hierarchy": [{"reconstruction": 0.5, "skill": 0.125}], "linear_probe_mse": 0.75}}))
    text = base_model_card_text(out)
    assert "| `skill` | 0.125 |" in text and "| `linear_probe_mse` | 0.75 |" in text
    assert "| `hierarchy[0]` | reconstruction 0.5, skill 0.125 |" in text and "`history`" not in text
    (out / "metrics.json").write_text("{not json")
    assert "holds no readable diagnostics" in base_model_card_text(out)
    assert diagnostics_rows([1, 2]) == [] and diagnostics_rows({"diagnostics": None}) == []
    with pytest.raises(ValueError, match="names one dataset"):
        script.main(["--datasets", "ETTh1", "--output_dir", str(tmp_path / "one")])


# ----------------------------------------------------------------------------------------------------------------------
# The shipped himtm-base checkpoint (checkpoints/himtm-base, written by scripts/pretrain_base.py)
# ----------------------------------------------------------------------------------------------------------------------

SHIPPED_BASE = Path(__file__).resolve().parents[1] / "checkpoints" / "himtm-base"


def test_shipped_himtm_base_loads_for_any_channel_count_and_fine_tunes_on_a_csv(tmp_path):
    """The committed himtm-base: a one-channel encoder pre-trained on the five benchmarks' train splits. Loaded with
    `from_pretrained(prediction_length=H, num_input_channels=C)` it keeps every pre-trained encoder tensor and gets a
    new head; `scripts/finetune.py` fine-tunes it on a user's CSV without touching the checkpoint; its card names
    the corpus, the budget and the diagnostics."""
    from safetensors.torch import load_file

    config = json.loads((SHIPPED_BASE / "config.json").read_text())
    assert config["num_input_channels"] == 1 and config["context_length"] == 512
    assert config["architectures"] == ["HiMTMForPretraining"]
    weights = load_file(str(SHIPPED_BASE / "model.safetensors"))
    model = HiMTMForPrediction.from_pretrained(str(SHIPPED_BASE), prediction_length=24, num_input_channels=3)
    state = model.state_dict()
    encoder = [k for k in weights if k.startswith("model.")]
    assert encoder and all(torch.equal(state[k], weights[k]) for k in encoder)
    with torch.no_grad():
        assert model(past_values=torch.randn(2, 512, 3)).prediction_outputs.shape == (2, 24, 3)

    csv = tmp_path / "mine.csv"
    write_csv(csv, rows=1200, channels=3, seed=0, loc=10.0, scale=0.5)
    files = {p.name: p.stat().st_mtime_ns for p in SHIPPED_BASE.iterdir()}
    load_script("finetune").main([
        "--dataset", str(csv), "--prediction_length", "24", "--pretrained_model_path", str(SHIPPED_BASE),
        "--output_dir", str(tmp_path / "ft"), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--max_train_windows", "32", "--max_eval_windows", "16", "--max_test_windows", "16", "--plot_windows", "0",
        "--use_cpu", "--disable_tqdm"])
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["num_channels"] == 3 and metrics["steps"] == 2 and np.isfinite(metrics["test"]["mse"])
    assert {p.name: p.stat().st_mtime_ns for p in SHIPPED_BASE.iterdir()} == files  # the checkpoint is untouched

    card = (SHIPPED_BASE / "README.md").read_text()
    for text in ("## Pre-training data", "| ETTh1 | 7 |", "| weather | 21 |", "## Budget", "## Pre-training diagnostics",
                 "skill", "model.forecast(history, prediction_length=96)"):
        assert text in card, text
    corpus = json.loads((SHIPPED_BASE / "corpus.json").read_text())
    assert [d["name"] for d in corpus["datasets"]] == ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather"]
