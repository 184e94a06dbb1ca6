#!/usr/bin/env python
"""Forecast the rows that follow a CSV with a trained HiMTM model.

    python scripts/forecast.py history.csv --model outputs/etth1-96 [--horizon 192] [--output forecast.csv]
    python scripts/forecast.py sales.csv --model outputs/stores-96 --id_column item_id    # many series

The CSV needs a timestamp column (``--timestamp_column``, default ``date``) and exactly the value columns the model
was trained on (``scaler.json``). Writes the forecast CSV (future timestamps + one column per series, original
units) and a PNG plot of the recent history and the forecast (``--plot``, default: the output path with ``.png``).
``--model`` may also be a Hub repo id. Horizons beyond the model's ``prediction_length`` are rolled out
autoregressively (errors compound).

``--model`` may also be a pre-training folder such as ``checkpoints/himtm-base`` (saved from ``HiMTMForPretraining``):
it forecasts zero-shot, by masked reconstruction of the future, without any fine-tuning. It takes any value columns
(every column besides the timestamp and id columns), each forecast as its own series and standardised with the
statistics of its own history, unless the folder has a ``scaler.json``::

    python scripts/forecast.py my_series.csv --model checkpoints/himtm-base --horizon 96

With ``--id_column`` the CSV is a long table of many series told apart by that column (e.g. ``item_id,date,sales``;
each series' rows in time order, not necessarily contiguous). Every series is forecast on its own and the forecast
CSV holds the id column, the future timestamps and the value columns, ``horizon`` rows per series, ids in order of
first appearance. A model fine-tuned on a panel standardises a series with the statistics saved for its id, and a
series it did not hold with those of its own history (see ``himtm_hf.pipeline``). The plot shows the first
``--max_plot_series`` series (default 3).

An existing output (CSV or plot) is replaced only with ``--overwrite``; the input CSV, a file inside the model folder
or the other output is never written over. Both outputs are checked before the model is loaded, and each is written
to a temporary file that is renamed into place, so a failure leaves no half-written file.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.output_folders import UnsafeOutputError, check_output_file  # noqa: E402
from himtm_hf.pipeline import HiMTMForecastPipeline  # noqa: E402


@dataclass
class ForecastArguments:
    csv: str = field(metadata={"help": "History CSV (.csv or .csv.gz); may be given as the first positional argument."})
    model: str = field(metadata={"help": "Trained output folder (model + scaler.json), pre-training folder (zero-shot, "
                                         "e.g. checkpoints/himtm-base) or Hub repo id."})
    horizon: int | None = field(default=None, metadata={"help": "Steps to forecast (default: prediction_length)."})
    output: str | None = field(default=None, metadata={"help": "Output CSV (default: '<csv stem>_forecast.csv')."})
    plot: str | None = field(default=None, metadata={"help": "Output PNG (default: the output path with .png)."})
    no_plot: bool = field(default=False, metadata={"help": "Do not write the plot."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an existing output CSV / plot (never the input CSV)."}
    )
    timestamp_column: str = field(default="date", metadata={"help": "Name of the timestamp column."})
    id_column: str | None = field(
        default=None,
        metadata={"help": "Column that tells the series of a long CSV apart (default: the CSV is one series)."},
    )
    plot_history: int = field(default=336, metadata={"help": "History rows shown in the plot."})
    max_plot_columns: int = field(
        default=8, metadata={"help": "Plot at most this many value columns (one panel each)."}
    )
    max_plot_series: int = field(
        default=3, metadata={"help": "With --id_column: plot the first this many series (one column of panels each)."}
    )
    device: str | None = field(default=None, metadata={"help": "torch device, e.g. 'cuda' (default: cpu)."})


def _positional_csv(argv: list[str]) -> list[str]:
    """Accept ``forecast.py CSV --model ...`` by turning a leading positional argument into ``--csv CSV``."""
    if argv and not argv[0].startswith("-"):
        return ["--csv", argv[0], *argv[1:]]
    return argv


def plot_forecast(history: pd.DataFrame, forecast: pd.DataFrame, timestamp_column: str, path: str | Path,
                  history_rows: int = 336, max_columns: int = 8, id_column: str | None = None,
                  max_series: int = 3) -> Path:
    """One panel per value column: the last ``history_rows`` rows of history and the forecast. With ``id_column``,
    one column of panels per series, for the first ``max_series`` series of the forecast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in forecast.columns if c not in (timestamp_column, id_column)][:max_columns]
    if id_column is None:
        parts = [(None, history, forecast)]
    else:
        keys = list(pd.unique(forecast[id_column]))
        parts = [(key, history[history[id_column] == key], forecast[forecast[id_column] == key])
                 for key in keys[:max(1, max_series)]]
    width = 10 if id_column is None else max(10, 5 * len(parts))
    fig, axes = plt.subplots(len(columns), len(parts), figsize=(width, 2.2 * len(columns)), sharex="col",
                             squeeze=False)
    for j, (key, own_history, own_forecast) in enumerate(parts):
        past = own_history.tail(history_rows)
        past_time = pd.to_datetime(past[timestamp_column]) if not pd.api.types.is_numeric_dtype(
            past[timestamp_column]) else past[timestamp_column]
        for i, column in enumerate(columns):
            ax = axes[i, j]
            ax.plot(past_time, past[column], color="tab:blue", lw=1, label="history")
            ax.plot(own_forecast[timestamp_column], own_forecast[column], color="tab:orange", lw=1.2,
                    label="forecast")
            if j == 0:
                ax.set_ylabel(str(column), fontsize=8)
            ax.grid(alpha=0.3)
        if key is not None:
            axes[0, j].set_title(f"{id_column} = {key}", fontsize=9)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    steps = len(parts[0][2])
    if id_column is None:
        axes[0, 0].set_title(f"HiMTM forecast: {steps} steps")
    else:
        total = forecast[id_column].nunique()
        fig.suptitle(f"HiMTM forecast: {steps} steps, {len(parts)} of {total} series shown")
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


@contextlib.contextmanager
def _replaced_atomically(path: Path) -> Iterator[Path]:
    """Yields a temporary path next to ``path`` and renames it over ``path`` on success (removes it on failure), so
    that ``path`` is never left half-written."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the output private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_outputs(args: ForecastArguments) -> tuple[Path, Path | None]:
    """The output CSV and plot paths, checked before anything is computed or written (``himtm_hf.output_folders``):
    never the input CSV or a file inside the model folder, never each other, an existing one only with
    ``--overwrite``."""
    stem = Path(args.csv).name.removesuffix(".gz").removesuffix(".csv")
    inputs = [("input CSV", args.csv), ("model folder", args.model)]
    output = check_output_file(args.output or f"{stem}_forecast.csv", inputs, args.overwrite, "--output")
    if args.no_plot:
        return output, None
    plot = check_output_file(args.plot or output.with_suffix(".png"), inputs, args.overwrite, "--plot")
    if plot.resolve() == output.resolve():
        raise UnsafeOutputError(f"--plot {plot} is the same file as --output; give the plot another name.")
    return output, plot


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = HfArgumentParser(ForecastArguments)
    (args,) = parser.parse_args_into_dataclasses(args=_positional_csv(list(sys.argv[1:] if argv is None else argv)))
    output, plot = check_outputs(args)
    history = pd.read_csv(args.csv)
    pipe = HiMTMForecastPipeline.from_pretrained(args.model, device=args.device)
    if pipe.zero_shot:
        print(f"{args.model} is a pre-training checkpoint: forecasting zero-shot (no fine-tuning), "
              f"{pipe.prediction_length} steps per model call from the last {pipe.look_back} rows.")
    forecast = pipe(history, timestamp_column=args.timestamp_column, horizon=args.horizon, id_column=args.id_column)
    output.parent.mkdir(parents=True, exist_ok=True)
    with _replaced_atomically(output) as tmp:
        forecast.to_csv(tmp, index=False)
    series = "" if args.id_column is None else f" ({forecast[args.id_column].nunique()} series)"
    print(f"Wrote {len(forecast)} forecast rows{series} to {output}")
    if plot is not None:
        plot_forecast(history, forecast, args.timestamp_column, plot, args.plot_history, args.max_plot_columns,
                      args.id_column, args.max_plot_series)
        shown = ""
        if args.id_column is not None:
            total = forecast[args.id_column].nunique()
            shown = f" ({min(total, max(1, args.max_plot_series))} of {total} series shown)"
        print(f"Wrote the plot to {plot}{shown}")
    return forecast


if __name__ == "__main__":
    main()
