"""Strict input checks (issue items 10-12): training timestamps, numeric time columns, overflowing statistics, empty
look-backs, config field types, malformed files, empty / other-precision batches and model-loading errors.

Each test builds its own tiny file or model; nothing here needs the benchmark data.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from himtm_hf import HiMTMConfig, HiMTMForPrediction, HiMTMForPretraining, HiMTMModel
from himtm_hf.data import SeriesScaler, load_series, load_splits
from himtm_hf.modeling_himtm import _check_values

TINY = dict(context_length=32, prediction_length=8, num_input_channels=3, patch_length=8, patch_stride=8,
            num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
            csa_num_attention_heads=2)
MODEL_CLASSES = (HiMTMForPrediction, HiMTMForPretraining, HiMTMModel)


@pytest.fixture(scope="module", autouse=True)
def _isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the Arrow cache written by datasets.load_dataset out of ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "date": pd.date_range("2021-03-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
        "a": rng.normal(size=n),
        "b": rng.normal(loc=3.0, size=n),
    })


def write(tmp_path: Path, df: pd.DataFrame, name: str = "series.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def load(path: Path, **kwargs):
    return load_splits(path, context_length=8, prediction_length=4, **kwargs)


def tiny(cls=HiMTMForPrediction, **overrides):
    return cls(HiMTMConfig(**{**TINY, **overrides})).eval()


# ---------------------------------------------------------------------------------------------------- item 10


def test_duplicated_timestamps_are_refused_with_the_rows_and_the_fix(tmp_path):
    df = frame()
    df.loc[11, "date"] = df.loc[10, "date"]
    path = write(tmp_path, df, "dup.csv")
    for sort in (False, True):  # sorting cannot resolve a duplicate
        with pytest.raises(ValueError, match="duplicated timestamps") as info:
            load(path, sort_timestamps=sort)
        message = str(info.value)
        assert "dup.csv" in message and "data row 10 (line 12)" in message and "data row 11 (line 13)" in message
        assert "drop_duplicates" in message


@pytest.mark.parametrize("reorder", ["reversed", "shuffled"])
def test_rows_out_of_time_order_are_refused_or_sorted_on_request(tmp_path, reorder):
    df = frame()
    bad = df.iloc[::-1] if reorder == "reversed" else df.sample(frac=1.0, random_state=1)
    path = write(tmp_path, bad, f"{reorder}.csv")
    with pytest.raises(ValueError, match="not in increasing order") as info:
        load(path)
    assert f"{reorder}.csv" in str(info.value) and "sort_timestamps=True" in str(info.value)

    fixed = load(path, sort_timestamps=True)
    reference = load(write(tmp_path, df, "sorted.csv"))
    assert (fixed.timestamps == reference.timestamps).all()
    np.testing.assert_array_equal(fixed.mean, reference.mean)
    torch.testing.assert_close(fixed.train.values, reference.train.values, rtol=0, atol=0)


def test_the_scripts_take_sort_timestamps_as_a_flag(tmp_path):
    from himtm_hf.training.arguments import DataArguments, EvaluateArguments, PretrainArguments, parse_args

    path = write(tmp_path, frame().iloc[::-1], "reversed.csv")
    flags = ["--dataset", str(path), "--context_length", "8", "--prediction_length", "4"]
    data_args, _ = parse_args((DataArguments, PretrainArguments), [*flags, "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="not in increasing order"):
        data_args.load()
    data_args, _ = parse_args((DataArguments, PretrainArguments),
                              [*flags, "--output_dir", str(tmp_path / "o"), "--sort_timestamps"])
    assert data_args.load().timestamps.is_monotonic_increasing
    (evaluate_args,) = parse_args((EvaluateArguments,), ["--model_dir", "m", "--sort_timestamps"])
    assert evaluate_args.sort_timestamps is True


def test_a_missing_timestamp_is_refused(tmp_path):
    df = frame()
    df.loc[5, "date"] = None
    with pytest.raises(ValueError, match=r"no value at data row 5 \(line 7\)"):
        load(write(tmp_path, df))


@pytest.mark.parametrize("name", ["time", "timestamp", "ts", "Unnamed: 0"])
def test_a_numeric_time_column_is_the_time_axis_not_a_channel(tmp_path, name):
    df = frame().drop(columns="date")
    df.insert(0, name, 1_600_000_000 + 3600 * np.arange(len(df)))
    splits = load(write(tmp_path, df), split_dates=(1_600_000_000 + 3600 * 80, 1_600_000_000 + 3600 * 100))
    assert splits.columns == ["a", "b"]
    assert splits.timestamps is not None and splits.timestamps.name == name
    assert splits.timestamps[0] == 1_600_000_000
    assert splits.borders["train"] == (0, 80)


def test_a_numeric_time_column_is_checked_for_order_too(tmp_path):
    df = frame().drop(columns="date")
    df.insert(0, "time", np.arange(len(df))[::-1])
    with pytest.raises(ValueError, match="'time'.*not in increasing order"):
        load(write(tmp_path, df))


@pytest.mark.parametrize("name", ["step", "index", "Unnamed: 0", "epoch"])
def test_a_time_like_numeric_column_next_to_the_date_column_is_not_silently_a_channel(tmp_path, name):
    df = frame()
    df.insert(1, name, np.arange(len(df)))
    path = write(tmp_path, df)
    with pytest.raises(ValueError, match=f"Column '{name}'.*named like a time axis.*target_columns=") as info:
        load(path)
    assert "series.csv" in str(info.value)
    assert load(path, target_columns=["a", "b"]).columns == ["a", "b"]
    assert load(path, target_columns=[name, "a"]).columns == [name, "a"]  # explicitly asked for: a channel


def test_an_increasing_integer_channel_with_an_ordinary_name_stays_a_channel(tmp_path):
    """Only names decide: a counter or trend channel is data (the rule is documented in load_series). Fails on the
    old code because the numeric 'ts' column there was a channel too."""
    df = frame().assign(counter=np.arange(120))
    df.insert(0, "ts", np.arange(120))
    splits = load(write(tmp_path, df.drop(columns="date")))
    assert splits.columns == ["a", "b", "counter"]


# ---------------------------------------------------------------------------------------------------- item 11


def test_overflowing_values_are_refused_before_a_scaler_is_fitted_or_saved(tmp_path):
    df = frame()
    df.loc[5, "a"] = 1e300
    with pytest.raises(ValueError, match=r"'a' \(mean=.*std=inf\).*float32"):
        load(write(tmp_path, df))


def test_values_beyond_float32_are_refused(tmp_path):
    df = frame()
    df["a"] = df["a"] * 1e100  # finite std in float64, but no float32 forecast can hold it
    with pytest.raises(ValueError, match="'a'.*float32"):
        load(write(tmp_path, df))


def test_a_test_value_that_overflows_after_standardising_names_its_row(tmp_path):
    df = frame()
    df.loc[115, "b"] = 1e200  # test rows only: the train statistics stay small
    with pytest.raises(ValueError, match="value 1e\\+200 of column 'b' at row 115.*overflows float32"):
        load(write(tmp_path, df))


def test_scaler_refuses_non_finite_statistics_and_names_a_bad_file(tmp_path):
    with pytest.raises(ValueError, match="'x'"):
        SeriesScaler(mean=[0.0], std=[math.inf], columns=["x"])
    with pytest.raises(ValueError, match="'x'"):
        SeriesScaler().fit(np.array([[1e300], [-1e300], [0.0]]), ["x"])
    (tmp_path / "scaler.json").write_text('{"columns": ["x"], "mean": [0.0], "std": [Infinity]}')
    with pytest.raises(ValueError, match="scaler.json.*'x'"):
        SeriesScaler.load(tmp_path)


def test_forecasts_of_huge_values_raise_instead_of_returning_nan():
    x = torch.randn(2, 32, 3)
    for cls in MODEL_CLASSES:
        model = tiny(cls)
        with torch.no_grad():
            model(x * 1e15)  # large but representable: still runs
            with pytest.raises(ValueError, match="too large.*batch row 0, channel 0.*Standardise"):
                model(x * 1e30)
    with torch.no_grad():
        assert torch.isfinite(tiny()(x * 1e15).prediction_outputs).all()


def test_an_all_missing_look_back_row_raises_but_a_single_missing_channel_does_not():
    model = tiny()
    x = torch.randn(3, 32, 3)
    mask = torch.ones_like(x)
    mask[1] = 0.0
    for cls in MODEL_CLASSES:
        with pytest.raises(ValueError, match=r"0 everywhere in batch row\(s\) 1"):
            tiny(cls)(x, past_observed_mask=mask)
    with pytest.raises(ValueError, match="nothing to forecast from"):
        model(x, past_observed_mask=torch.zeros_like(x))
    mask = torch.ones_like(x)
    mask[1, :, 2] = 0.0  # one channel of one row unobserved: allowed (long gaps in one column of real data)
    with torch.no_grad():
        out = model(x, past_observed_mask=mask).prediction_outputs
    assert torch.isfinite(out).all()


def test_training_data_with_a_fully_missing_look_back_is_refused_at_loading(tmp_path):
    df = frame()
    df.loc[30:45, ["a", "b"]] = np.nan  # 16 rows missing in every column, longer than context_length 8
    with pytest.raises(ValueError, match="rows 30 to 37 have no observed value in any column"):
        load(write(tmp_path, df))
    df = frame()
    df.loc[30:45, "a"] = np.nan  # one column only: fine
    assert load(write(tmp_path, df)).columns == ["a", "b"]


@pytest.mark.parametrize(
    "field,value",
    [("d_model", "64"), ("d_model", 64.0), ("d_model", [16, "16"]), ("d_model", []), ("num_layers", "1"),
     ("context_length", 32.0), ("csa_num_layers", "1"), ("dropout", "0.1"), ("mask_ratio", None),
     ("minimum_scale", "1e-5"), ("initializer_range", "x"), ("teacher_momentum", math.nan), ("use_hsd", "no"),
     ("freeze_encoder", 1), ("hierarchy_loss_weights", "12"), ("decoder_d_model", "16"), ("scaling", 1)],
)
def test_config_fields_of_the_wrong_type_raise_a_clear_error(field, value):
    with pytest.raises(ValueError, match=rf"`{field}` must be .*\({type(value).__name__}\)"):
        HiMTMConfig(**{**TINY, field: value})


def test_config_type_checks_cover_overrides_at_loading_and_keep_numpy_ints(tmp_path):
    config = HiMTMConfig(**{**TINY, "d_model": np.int64(16), "context_length": np.int64(32)})
    assert config.d_model == 16 and type(config.d_model) is int  # saved as a plain JSON number
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["d_model"] == 16
    with pytest.raises(ValueError, match="`num_input_channels` must be a positive int"):
        HiMTMConfig.from_pretrained(tmp_path, num_input_channels="3")


# ---------------------------------------------------------------------------------------------------- item 12


def _gzip_truncated(path: Path, text: bytes, keep: float) -> None:
    data = gzip.compress(text)
    path.write_bytes(data[: int(len(data) * keep)])


MALFORMED = {
    "empty.csv": (lambda p: p.write_bytes(b""), "is empty"),
    "blank.csv": (lambda p: p.write_text("\n\n"), "is empty"),
    "header.csv": (lambda p: p.write_text("date,a,b\n"), "header line .* but no data rows"),
    "binary.csv": (lambda p: p.write_bytes(bytes(range(256)) * 8), "binary file"),
    "latin1.csv": (lambda p: p.write_bytes("date,temp \xb0C\n2020-01-01,1\n".encode("latin-1")), "not UTF-8"),
    "more_fields.csv": (lambda p: p.write_text("date,a,b\n2020-01-01,1,2\n2020-01-02,1,2,3,4\n"),
                        "wrong number of fields: line 3 has 5 fields but the header .* has 3"),
    "fewer_fields.csv": (lambda p: p.write_text("date,a,b\n2020-01-01,1,2\n2020-01-02,1\n2020-01-03,1,2\n"),
                         "wrong number of fields: line 3 has 2 fields"),
    "shifted.csv": (lambda p: p.write_text("date,a,b\n2020-01-01,1,2,3\n2020-01-02,1,2,3\n"),
                    "wrong number of fields: line 2 has 4 fields"),
    "small_truncated.csv.gz": (lambda p: _gzip_truncated(p, frame().to_csv(index=False).encode(), 0.5),
                               "truncated"),
    "large_truncated.csv.gz": (lambda p: _gzip_truncated(p, frame(20000).to_csv(index=False).encode(), 0.9),
                               "truncated"),
    "not_gzip.csv.gz": (lambda p: p.write_text("date,a\n2020-01-01,1\n"), "not a gzip file"),
    "corrupt.parquet": (lambda p: p.write_bytes(b"PAR1" + bytes(200)), "could not be read as a parquet file"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_files_raise_a_value_error_naming_the_file(tmp_path, name):
    make, match = MALFORMED[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(ValueError, match=match) as info:
        load_series(path)
    assert name in str(info.value)


def test_an_empty_batch_raises_a_value_error():
    for cls in MODEL_CLASSES:
        with pytest.raises(ValueError, match="empty batch"):
            tiny(cls)(torch.randn(0, 32, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_precisions_are_cast_to_the_model_dtype(dtype):
    model = tiny()
    x = torch.randn(2, 32, 3).to(dtype)
    with torch.no_grad():
        out = model(x, future_values=torch.randn(2, 8, 3))
        reference = model(x.float())
    assert out.prediction_outputs.dtype == torch.float32
    torch.testing.assert_close(out.prediction_outputs, reference.prediction_outputs, rtol=0, atol=0)


def test_a_cast_that_overflows_the_model_dtype_is_an_error():
    x = torch.full((1, 32, 3), 1e5)
    with pytest.raises(ValueError, match="beyond the range of the model's dtype torch.float16"):
        _check_values("past_values", x, None, "past_observed_mask", 32, 3, "context_length", dtype=torch.float16)


def test_a_corrupt_weights_file_is_named(tmp_path):
    tiny().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    for cls in MODEL_CLASSES:
        with pytest.raises(OSError, match="model.safetensors.*truncated or corrupt") as info:
            cls.from_pretrained(tmp_path)
        assert str(weights) in str(info.value)


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "outputs-x/run/final", "~/no-such-model"])
def test_a_missing_local_folder_says_no_such_folder(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No such folder") as info:
        HiMTMForPrediction.from_pretrained(path)
    assert "Repo id" not in str(info.value)


def test_a_typo_under_an_existing_local_folder_says_no_such_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "etth1-96").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="(?s)No such folder: outputs/etth1-69.*holds: etth1-96"):
        HiMTMForPrediction.from_pretrained("outputs/etth1-69", local_files_only=True)


def test_the_forecast_pipeline_says_no_such_folder_for_a_missing_local_folder(tmp_path, monkeypatch):
    from himtm_hf.pipeline import HiMTMForecastPipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such folder: ./nope"):
        HiMTMForecastPipeline.from_pretrained("./nope")


def test_a_home_relative_folder_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    model = tiny()
    model.save_pretrained(tmp_path / "model")
    loaded = HiMTMForPrediction.from_pretrained("~/model")
    assert torch.equal(loaded.head.projection.weight, model.head.projection.weight)
