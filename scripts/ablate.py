"""HiMTM ablation: the paper's components (HMT, DED, HSD, CSA-FT), hierarchy count 1-4, mask ratio 0.3-0.7.

Those are the default `--variants`; the diagnostics and recipe candidates of `ABLATION_VARIANTS` run by name.

    python scripts/ablate.py --datasets ETTh1 --budget cpu --seeds 1 2
    python scripts/ablate.py --budget cpu_long --datasets ETTh1 --variants full no_pretrain --horizons 96 720
    python scripts/ablate.py --budget quick --datasets ETTh1 --variants full no_hsd   # CI smoke run

One JSON record per (dataset, variant, seed, horizon) under `docs/results/ablation/`; `docs/results.md` is rebuilt at the end
with mean ± std over seeds. Cells that already have a record are kept and skipped unless `--overwrite`. The
closed-form baselines of each dataset at the horizon are written first (`scripts/benchmark_baselines.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from himtm_hf.benchmarks import (
    ABLATION_VARIANTS,
    BUDGETS,
    PAPER_ABLATION_VARIANTS,
    RESULTS_DIR,
    budget_by_name,
    regenerate_results_md,
    run_ablation,
)


@dataclass
class AblationArguments:
    """Settings of the ablation."""

    budget: str = field(default="cpu", metadata={"help": " | ".join(BUDGETS) + " (himtm_hf.benchmarks.BUDGETS)."})
    datasets: list[str] = field(default_factory=lambda: ["ETTh1", "ETTh2"])
    variants: list[str] = field(
        default_factory=lambda: list(PAPER_ABLATION_VARIANTS),
        metadata={"help": "Keys of himtm_hf.benchmarks.ABLATION_VARIANTS; default: the paper's table and sweeps."},
    )
    horizons: list[int] = field(default_factory=lambda: [96], metadata={
        "help": "Forecast horizons; each (dataset, variant, seed) pre-trains once (look-back-only windows) and "
                "fine-tunes every horizon from it."})
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    context_length: int = 512
    data_dir: str | None = None
    results_dir: str = str(RESULTS_DIR)
    work_dir: str = "outputs/ablation"
    baselines: bool = field(default=True, metadata={
        "help": "Write the closed-form baseline records (naive, linear ridge) of the cells run, under "
                "--results_dir/baselines/ (kept when up to date; --no_baselines: skip)."})
    overwrite: bool = field(default=False, metadata={
        "help": "Re-run (dataset, variant, seed) cells that already have a record under --results_dir and replace it. "
                "Default: keep the record and skip the cell, so re-running a command resumes it."})


def main(args: AblationArguments) -> None:
    unknown = sorted(set(args.variants) - set(ABLATION_VARIANTS))
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; choose from {list(ABLATION_VARIANTS)}.")
    run_ablation(args.datasets, args.variants, args.horizons, budget_by_name(args.budget), args.seeds,
                 Path(args.work_dir), Path(args.results_dir), args.data_dir, args.context_length, args.overwrite,
                 args.baselines)
    print(f"wrote {regenerate_results_md(Path(args.results_dir))}")


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(AblationArguments).parse_args_into_dataclasses()
    main(parsed)
