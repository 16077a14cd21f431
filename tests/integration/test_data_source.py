"""A category's data on a node without the driver's disk (pipelines/data_source.py): used
in place when it is the recorded version, else from the node cache, the DVC remote or, for
the default dataset, made on the node; never other bytes than the prepare stage recorded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.data_source import COMPLETE, locate, manifest, source_record
from skrd4ad.data import make_default_dataset
from skrd4ad.errors import UserError

SMALL = dict(image_size=32, crop_size=64, n_train=2, n_test_good=1, n_test_defect=1)


def dvc(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKRD4AD_DATA_CACHE", str(tmp_path / "node-cache"))
    return tmp_path / "node-cache"


@pytest.fixture()
def dvc_project(tmp_path):
    """A DVC project with a dataset pushed to a local remote; returns (project, record)."""
    project = tmp_path / "project"
    project.mkdir()
    make_default_dataset(project / "data", **SMALL)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc("init", "-q", cwd=project)
    dvc("add", "-q", "data", cwd=project)
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=project)
    dvc("push", "-q", cwd=project)
    record = source_record(
        "dvc", project / "data", ["brick", "grass"], version="v1", repo=project, path="data"
    )
    return project, record


def test_the_recorded_version_in_place_is_used_as_it_is(dvc_project, cache):
    project, record = dvc_project
    assert locate(record, str(project / "data"), "brick") == (str(project / "data"), "local")
    assert not cache.exists()  # nothing copied


def test_without_the_data_a_node_downloads_it_from_the_dvc_remote_once(
    dvc_project, cache, tmp_path, monkeypatch
):
    project, record = dvc_project
    # The node: no data, no DVC cache, only the project files Ray ships (.dvc/config, data.dvc).
    node = tmp_path / "node"
    node.mkdir()
    shutil.copytree(project / ".dvc", node / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    shutil.copy(project / "data.dvc", node / "data.dvc")
    shutil.rmtree(project)
    monkeypatch.chdir(node)  # the job's working directory
    root, how = locate(record, str(project / "data"), "brick")
    assert how == "remote" and Path(root).is_relative_to(cache)
    assert manifest(Path(root) / "brick") == record["manifests"]["brick"]
    assert not (Path(root) / "grass").exists()  # one category, not the dataset
    # A second worker (a resumed one, another run of the category) downloads nothing.
    shutil.rmtree(node / ".dvc")  # no remote any more: a download would fail
    assert locate(record, str(project / "data"), "brick") == (root, "node-cache")


def test_other_bytes_at_the_recorded_path_are_never_trained_on(dvc_project, cache):
    """A changed file in the DVC project's workspace (edited, not `dvc add`-ed): DVC reads
    the workspace, and the manifest stops the worker with what to do."""
    project, record = dvc_project
    image = next((project / "data" / "brick" / "train" / "good").iterdir())
    image.write_bytes(image.read_bytes()[:-1] + b"\0")  # one byte differs
    with pytest.raises(UserError, match="differs from what the prepare stage recorded"):
        locate(record, str(project / "data"), "brick")
    assert not (cache.exists() and any(cache.rglob(COMPLETE)))


def test_a_half_done_download_is_never_used(dvc_project, cache):
    project, record = dvc_project
    root, _ = locate(record, "/nonexistent", "brick")
    (Path(root) / "brick" / COMPLETE).unlink()  # as if the worker died before the end
    next((Path(root) / "brick" / "train" / "good").iterdir()).unlink()
    root, how = locate(record, "/nonexistent", "brick")
    assert how == "remote"
    assert manifest(Path(root) / "brick") == record["manifests"]["brick"]


def test_the_default_dataset_is_made_on_the_node_byte_for_byte(tmp_path, cache):
    make_default_dataset(tmp_path / "driver", **SMALL)
    record = source_record("default", tmp_path / "driver", ["brick"], version="d1", settings=SMALL)
    root, how = locate(record, str(tmp_path / "elsewhere"), "brick")
    assert how == "generated"
    assert manifest(Path(root) / "brick") == record["manifests"]["brick"]
    # Other settings make other bytes: the manifest catches it, nothing is trained on them.
    wrong = {**record, "settings": {**SMALL, "n_train": 3}, "version": "d2"}
    with pytest.raises(UserError, match="differs from what the prepare stage recorded"):
        locate(wrong, str(tmp_path / "elsewhere"), "brick")


def test_data_on_no_node_and_in_no_remote_is_a_clear_error(tmp_path, cache):
    make_default_dataset(tmp_path / "data", **SMALL)
    record = source_record("local", tmp_path / "data", ["brick"], version="")
    with pytest.raises(UserError, match="version the dataset with DVC"):
        locate(record, str(tmp_path / "gone"), "brick")


def test_a_category_that_was_not_prepared_is_named(tmp_path, cache):
    make_default_dataset(tmp_path / "data", **SMALL)
    record = source_record("local", tmp_path / "data", ["brick"], version="")
    with pytest.raises(UserError, match="category tile: not found in the prepared dataset"):
        locate(record, str(tmp_path / "data"), "tile")
