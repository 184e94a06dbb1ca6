"""Shared fixtures (`one_thread`) and the test-session report: the pass / skip / fail counts of transformers' own model
test suite (`test_transformers_suite.py`), with every skip's reason and the HiMTM models those tests built and ran."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

SUITE = "test_transformers_suite.py"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (and do not stall when the CPU cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter) -> None:
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for outcome in ("passed", "skipped", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if SUITE not in getattr(report, "nodeid", "") or (outcome == "passed" and report.when != "call"):
                continue
            outcomes[outcome] += 1
            if outcome == "skipped" and isinstance(report.longrepr, tuple):
                reasons[report.longrepr[2].removeprefix("Skipped: ")] += 1
    if not outcomes:
        return
    import transformers
    from test_transformers_suite import CLASS_LEVEL, MODEL_USE

    built = sum(use["built"] for use in MODEL_USE.values())
    forwards = sum(use["forwards"] for use in MODEL_USE.values())
    write = terminalreporter.write_line
    terminalreporter.section(f"transformers {transformers.__version__} model test suite on HiMTM")
    write(f"{outcomes['passed']} passed, {outcomes['skipped']} skipped, {outcomes['failed'] + outcomes['error']} failed")
    write(f"HiMTM models built: {built}, forward passes: {forwards}; passed without a model (class-level checks): "
          f"{', '.join(sorted(CLASS_LEVEL))}")
    write("skipped, by reason:")
    for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
        write(f"  {count:3d}  {reason}")
