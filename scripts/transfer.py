#!/usr/bin/env python
"""Cross-dataset transfer matrix: pre-train on a source dataset, fine-tune on a target, for HiMTM and PatchTST.

    # the full CPU matrix for one pair (21 -> 7 channels), both models, both protocols, 5/10/100 % of the target:
    python scripts/transfer.py --pairs weather:ETTh1 --budget cpu
    # a smoke run (seconds):
    python scripts/transfer.py --pairs weather:ETTh1 --budget quick --fractions 0.05 --results_dir /tmp/transfer
    # list the planned runs:
    python scripts/transfer.py --pairs weather:ETTh1 ETTm1:ETTh2 --list_only

Writes one JSON record per run to ``<results_dir>/<budget>/<source>-to-<target>/L<look-back>-H<horizon>/...json`` (default
``docs/results/transfer``) and a ``summary.md`` table; existing records are skipped unless ``--overwrite``.
A finished pre-training in ``--work_dir`` of the same model, source, seed, budget and commit is reused (so an
interrupted or extended matrix does not pre-train again); ``--repretrain`` forces a new one.
All options: ``--help`` (``himtm_hf.benchmarks.transfer.TransferArguments``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.benchmarks.transfer import main  # noqa: E402

if __name__ == "__main__":
    main()
