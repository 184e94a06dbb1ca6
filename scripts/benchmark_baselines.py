"""Closed-form baselines beside every benchmark table: naive last value and NLinear-style ridge
(`himtm_hf.benchmarks.baselines`).

    python scripts/benchmark_baselines.py                                       # ETT x 4 horizons at L = 512
    python scripts/benchmark_baselines.py --datasets ETTh1 --horizons 96 --context_lengths 336 512

One JSON record per (dataset, look-back, horizon) under `docs/results/baselines/` (both baselines' test metrics on
every test window, the ridge strength chosen on val, the settings that fix the numbers, command, commit, machine);
`docs/results.md` is rebuilt at the end. A record whose settings are those this code would use is kept unless
`--overwrite`. Deterministic, no seeds; seconds per cell on a CPU. `scripts/benchmark_accuracy.py` and
`scripts/ablate.py` write the records of the cells they run themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from himtm_hf.benchmarks import RESULTS_DIR, regenerate_results_md, run_baselines


@dataclass
class BaselineArguments:
    """Settings of the baseline records."""

    datasets: list[str] = field(default_factory=lambda: ["ETTh1", "ETTh2", "ETTm1", "ETTm2"])
    horizons: list[int] = field(default_factory=lambda: [96, 192, 336, 720])
    context_lengths: list[int] = field(default_factory=lambda: [512], metadata={"help": "Look-back lengths L."})
    data_dir: str | None = field(default=None, metadata={"help": "Benchmark files (default: $HIMTM_DATA_DIR)."})
    results_dir: str = field(default=str(RESULTS_DIR), metadata={"help": "Where the JSON records go."})
    overwrite: bool = field(default=False, metadata={
        "help": "Recompute cells whose record is up to date (default: keep them; a record with other settings is "
                "always recomputed)."})
    regenerate: bool = field(default=True, metadata={"help": "Rebuild results.md next to --results_dir at the end."})


def main(args: BaselineArguments) -> None:
    bad = [h for h in [*args.horizons, *args.context_lengths] if h < 1]
    if bad:
        raise ValueError(f"Horizons and context lengths must be >= 1, got {bad}.")
    run_baselines(args.datasets, args.horizons, args.context_lengths, Path(args.results_dir), args.data_dir,
                  args.overwrite)
    if args.regenerate:
        print(f"wrote {regenerate_results_md(Path(args.results_dir))}")


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(BaselineArguments).parse_args_into_dataclasses()
    main(parsed)
