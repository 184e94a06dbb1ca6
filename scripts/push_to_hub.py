#!/usr/bin/env python
"""Publish a trained HiMTM output folder to the Hugging Face Hub.

    # see exactly what would be uploaded (no network):
    python scripts/push_to_hub.py --output_dir outputs/etth1-96 --repo_id my-org/himtm-etth1-96 --dry_run \
        [--dry_run_dir /tmp/himtm-etth1-96-hub] [--overwrite]
    # upload (needs `hf auth login` or HF_TOKEN):
    python scripts/push_to_hub.py --output_dir outputs/etth1-96 --repo_id my-org/himtm-etth1-96 [--private]

Uploads the safetensors weights, ``config.json`` (with ``auto_map``) and the model code for
``trust_remote_code=True``, ``scaler.json``, ``metrics.json``, ``run_args.json``, plots and a generated model card
(``README.md`` from ``model_cards/template.md``). ``checkpoints/`` and logs are left out unless
``--include_checkpoints`` / ``--include_logs``. All options: ``--help`` (``himtm_hf.hub.PublishArguments``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.hub import PublishArguments, PublishResult, publish  # noqa: E402


def main(argv: list[str] | None = None) -> PublishResult:
    parser = HfArgumentParser(PublishArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    result = publish(args)
    print(result.summary())
    return result


if __name__ == "__main__":
    main()
