"""transformers' own model test suite (`ModelTesterMixin`, `ConfigTester`) for the installed transformers version.

The two files every model inside transformers is tested with, `tests/test_modeling_common.py` and
`tests/test_configuration_common.py`, ship in transformers' source distribution on PyPI but not in its wheel. This
module fetches that sdist for exactly `transformers.__version__` (with `pip download`, so whatever package index the
machine uses), keeps the two files in a cache folder and imports them as a package. A cached copy of another version
is never used: the suite always matches the installed library, and a fetch that fails raises (no silent skip).

The sdist lacks three helper modules those files import; this project provides them (`SHIMS` below), each saying
why it is faithful for HiMTM.

Environment:
    HIMTM_TRANSFORMERS_TESTS_DIR: cache folder (default `~/.cache/himtm-hf/transformers-tests`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

import transformers

PACKAGE = "transformers_upstream_tests"
UPSTREAM_FILES = ("test_modeling_common.py", "test_configuration_common.py")

# The modules `test_modeling_common.py` / `test_configuration_common.py` import relatively that the sdist does not
# contain (they live in transformers' git tree only).
SHIMS = {
    "exporters/test_export.py": '''
        """Stand-in for transformers' `tests/exporters/test_export.py`, which the sdist lacks.

        Its `ExportTesterMixin` drives transformers' exporter back-ends (dynamo, ONNX, ExecuTorch, OpenVINO, AOTI,
        TensorRT) and needs their optional packages; HiMTM's own `torch.export` check is
        `test_transformers_suite.HiMTMModelTest.test_torch_export_matches_eager`.
        """


        class ExportTesterMixin:
            pass
        ''',
    "generation/test_utils.py": '''
        """Stand-in for transformers' `tests/generation/test_utils.py`, which the sdist lacks.

        `ModelTesterMixin` only checks `issubclass(tester, GenerationTesterMixin)` against `model.can_generate()`;
        HiMTM models cannot generate and the HiMTM tester does not inherit it, so an empty class is exact.
        """


        class GenerationTesterMixin:
            pass
        ''',
    "utils/test_configuration_utils.py": '''
        """Stand-in for the `config_common_kwargs` of transformers' `tests/utils/test_configuration_utils.py`.

        `ConfigTester.check_config_arguments_init` builds a config from these and checks each value sticks. Built
        here from `PreTrainedConfig.__init__`'s own signature (a non-default value for each argument), so a new
        common argument in a later transformers fails loudly instead of going untested.
        """

        import inspect

        from transformers import PreTrainedConfig

        _NON_DEFAULT = {
            "transformers_version": None,  # written by save_pretrained, not a user setting: left out
            "architectures": ["BertModel"],
            "output_hidden_states": True,
            "return_dict": False,
            "dtype": "float16",
            "chunk_size_feed_forward": 5,
            "is_encoder_decoder": True,
            "id2label": {0: "label_a", 1: "label_b"},
            "label2id": {"label_a": 0, "label_b": 1},
            "problem_type": "regression",
        }
        _unknown = set(inspect.signature(PreTrainedConfig.__init__).parameters) - {"self", "kwargs"} - set(_NON_DEFAULT)
        if _unknown:
            raise RuntimeError(f"PreTrainedConfig has new arguments {sorted(_unknown)}: add non-default values here.")
        config_common_kwargs = {k: v for k, v in _NON_DEFAULT.items() if v is not None}
        ''',
}


def cache_root() -> Path:
    default = Path.home() / ".cache" / "himtm-hf" / "transformers-tests"
    return Path(os.environ.get("HIMTM_TRANSFORMERS_TESTS_DIR", default))


def _download_sdist(version: str, into: Path) -> Path:
    """`pip download` of transformers' sdist for `version`; returns the archive's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "--dest", str(into), f"transformers=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(into.glob("transformers-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise RuntimeError(
            f"Could not fetch transformers {version}'s source distribution (needed for its model test suite): "
            f"`{' '.join(command)}` exited {done.returncode}:\n{done.stderr[-2000:]}\nOn a machine without access "
            f"to a package index, extract tests/{UPSTREAM_FILES[0]} and tests/{UPSTREAM_FILES[1]} of that sdist into "
            f"$HIMTM_TRANSFORMERS_TESTS_DIR/{version}/{PACKAGE}/."
        )
    return archives[0]


def fetch(version: str) -> Path:
    """Makes `<cache>/<version>/<PACKAGE>/` with the two upstream files and the shims; returns `<cache>/<version>`."""
    target = cache_root() / version
    package = target / PACKAGE
    if all((package / name).is_file() for name in UPSTREAM_FILES):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download_sdist(version, Path(tmp))
        staging = Path(tmp) / PACKAGE
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for name in UPSTREAM_FILES:
                try:
                    member = tar.getmember(f"transformers-{version}/tests/{name}")
                except KeyError:
                    raise RuntimeError(f"{archive.name} has no tests/{name}: transformers {version} ships its model "
                                       "test suite differently; adapt tests/upstream_suite.py.") from None
                (staging / name).write_bytes(tar.extractfile(member).read())
        for relative, source in SHIMS.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source).lstrip())
            (path.parent / "__init__.py").touch()
        (staging / "__init__.py").write_text(f'"""transformers {version} tests/ files (Apache-2.0)."""\n')
        package.parent.mkdir(parents=True, exist_ok=True)
        if package.exists():  # a partial earlier fetch of this cache folder (ours): replace it
            shutil.rmtree(package)
        shutil.move(str(staging), str(package))
    return target


def load() -> tuple[ModuleType, ModuleType]:
    """Imports (`test_modeling_common`, `test_configuration_common`) of the installed transformers version."""
    version = transformers.__version__
    root = fetch(version)
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and Path(loaded.__file__).parent != root / PACKAGE:
        raise RuntimeError(f"{PACKAGE} is already imported from {loaded.__file__}, not for transformers {version}.")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration


if __name__ == "__main__":  # `.ci/run` fetches ahead of pytest so a download problem shows as its own step
    print(f"transformers {transformers.__version__} test suite in {fetch(transformers.__version__)}")
