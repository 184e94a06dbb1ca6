"""Accuracy benchmark: HiMTM vs HF PatchTST (supervised and self-supervised), same protocol and budget.

    python scripts/benchmark_accuracy.py --budget cpu --datasets ETTh1 ETTh2        # ~1 h on 2 CPU cores
    python scripts/benchmark_accuracy.py --budget full                              # GPU, all five datasets
    python scripts/benchmark_accuracy.py --budget quick --datasets ETTh1 --horizons 96   # CI smoke run

One JSON record per (dataset, horizon, model, seed) under `docs/results/accuracy/`; `docs/results.md` is rebuilt
from every record at the end. Cells that already have a record are kept and skipped unless `--overwrite`. The
closed-form baselines of each (dataset, horizon) are written first (`scripts/benchmark_baselines.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from himtm_hf.benchmarks import (
    ALL_MODELS,
    BUDGETS,
    MODELS,
    RESULTS_DIR,
    budget_by_name,
    regenerate_results_md,
    run_accuracy,
)


@dataclass
class AccuracyArguments:
    """Settings of the accuracy benchmark."""

    budget: str = field(default="cpu", metadata={"help": " | ".join(BUDGETS) + " (himtm_hf.benchmarks.BUDGETS)."})
    datasets: list[str] = field(default_factory=lambda: ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather"])
    horizons: list[int] = field(default_factory=lambda: [96, 192, 336, 720], metadata={
        "help": "Forecast horizons. The pre-training uses the windows of the shortest one given, so a run of fewer "
                "horizons pre-trains on other windows than the four-horizon run (ETTh1: 7409 train windows for "
                "`--horizons 720`, 8033 with 96) unless its shortest horizon is the same."})
    models: list[str] = field(default_factory=lambda: list(MODELS), metadata={
        "help": f"Models to run (default {' '.join(MODELS)}; also {' '.join(sorted(set(ALL_MODELS) - set(MODELS)))}, "
                "self-supervised PatchTST fine-tuned head first from the same pre-training)."})
    seeds: list[int] = field(default_factory=lambda: [2021])
    context_length: int = 512
    data_dir: str | None = field(default=None, metadata={"help": "Benchmark files (default: $HIMTM_DATA_DIR)."})
    results_dir: str = field(default=str(RESULTS_DIR), metadata={"help": "Where the JSON records go."})
    work_dir: str = field(default="outputs/benchmark", metadata={"help": "Checkpoints of the runs."})
    max_test_windows: int | None = field(default=None, metadata={"help": "Override the budget's test cap."})
    himtm_variant: str = field(default="full", metadata={
        "help": "Run HiMTM as this variant of scripts/ablate.py (e.g. patch_8); tables show it as himtm@<variant>."})
    baselines: bool = field(default=True, metadata={
        "help": "Write the closed-form baseline records (naive, linear ridge) of the cells run, under "
                "--results_dir/baselines/ (kept when up to date; --no_baselines: skip)."})
    overwrite: bool = field(default=False, metadata={
        "help": "Re-run cells that already have a record under --results_dir and replace it. Default: keep the record "
                "and skip the cell, so re-running a command resumes it. A cell is (dataset, horizon, model, variant, "
                "budget, seed, defaults set, device kind); --max_test_windows is not part of it."})


def main(args: AccuracyArguments) -> None:
    unknown = sorted(set(args.models) - set(ALL_MODELS))
    if unknown:
        raise ValueError(f"Unknown models {unknown}; choose from {list(ALL_MODELS)}.")
    changes = {"max_test_windows": args.max_test_windows} if args.max_test_windows else {}
    budget = budget_by_name(args.budget, **changes)
    run_accuracy(args.datasets, args.horizons, args.models, budget, args.seeds, Path(args.work_dir),
                 Path(args.results_dir), args.data_dir, args.context_length, args.himtm_variant, args.overwrite,
                 args.baselines)
    print(f"wrote {regenerate_results_md(Path(args.results_dir))}")


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(AccuracyArguments).parse_args_into_dataclasses()
    main(parsed)
