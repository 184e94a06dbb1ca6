"""Small datasets laid out the way a Hugging Face Hub dataset repository is, and a populated offline cache.

`write_dataset_repo` writes parquet (or arrow) data files under ``data/`` and a ``README.md`` dataset card whose YAML
``configs`` name them per split, as the Hub's own repositories do. `cache_as_hub_dataset` puts such a folder into the
``datasets`` cache exactly where ``datasets.load_dataset("owner/name")`` writes a Hub dataset after downloading it
(``<cache>/owner___name/<config>/0.0.0/<hash>``), so that with ``HF_HUB_OFFLINE=1`` the real
``load_dataset(repo_id)`` finds it there: no network and no mock of ``load_dataset``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_dataset_repo(
    folder: Path, configs: dict[str, dict[str, pa.Table]], file_format: str = "parquet"
) -> Path:
    """Writes ``{config: {split: table}}`` as data files plus a dataset card; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card.append(f"- config_name: {config}")
        card.append("  data_files:")
        for split, table in splits.items():
            relative = f"data/{config}/{split}-00000-of-00001.{file_format}"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            if file_format == "parquet":
                pq.write_table(table, folder / relative)
            else:  # the Arrow IPC stream files `datasets` itself writes
                with pa.OSFile(str(folder / relative), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
            card += [f"  - split: {split}", f"    path: {relative}"]
    card += ["---", "", f"# {folder.name}", "", "A test dataset in the target-sequence schema.", ""]
    (folder / "README.md").write_text("\n".join(card), encoding="utf-8")
    return folder


def cache_as_hub_dataset(folder: Path, repo_id: str, cache_dir: Path, configs: list[str]) -> None:
    """Prepares every config of the repository folder into ``cache_dir`` under the Hub id ``repo_id``."""
    owner, name = repo_id.split("/")
    staging = cache_dir / f"_staging_{name}"
    for config in configs:
        builder = datasets.load_dataset_builder(str(folder), name=config, cache_dir=str(staging))
        builder.download_and_prepare()
    assert folder.name == name, "the arrow files are named after the dataset: give the folder the repo's name"
    (prepared,) = [path for path in staging.iterdir() if path.is_dir()]  # <cache>/<name in snake case>
    target = cache_dir / f"{owner}___{prepared.name}"
    target.mkdir(parents=True, exist_ok=True)
    for config_dir in prepared.iterdir():
        shutil.move(str(config_dir), str(target / config_dir.name))
    shutil.rmtree(staging)


def wide_to_target_table(frame: pd.DataFrame, item_id: str, freq: str, timestamp_column: str = "date") -> pa.Table:
    """One multivariate series (a wide frame) as one row of the GluonTS schema: 2-D ``target`` (channels, steps)."""
    values = frame.drop(columns=[timestamp_column])
    return pa.table({
        "item_id": [item_id],
        "start": [pd.Timestamp(frame[timestamp_column].iloc[0])],
        "freq": [freq],
        "target": [values.to_numpy(dtype="float64").T.tolist()],
    })


__all__ = ["cache_as_hub_dataset", "wide_to_target_table", "write_dataset_repo"]
