"""A category's data on the node that trains it, with no shared filesystem.

The prepare stage records where the data comes from (``source``) and a manifest hash per
category (``manifests``) in ``prepared/dataset.json``. A Train worker then finds its
category, in this order:

1. ``local``: the recorded root holds the category with the same manifest (one machine,
   or a shared mount); used as it is.
2. ``node-cache``: the node-local cache already holds it (another category's or an
   earlier attempt's download), under the data version and the category's manifest.
3. ``remote`` (a DVC-tracked dataset): downloaded with DVC's own API (``DVCFileSystem``
   on the driver's checkout where the node has it, else on the DVC project Ray ships as
   the run's working directory) from the DVC remote, at the version data.dvc / dvc.lock
   records.
4. ``generated`` (the embedded default dataset): made on the node, which is deterministic;
   the manifest proves the bytes are the ones the driver prepared.

Whatever is used, its manifest must match the recorded one, or the worker stops with an
error that names the category: a model is never trained on other data than recorded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from skrd4ad.errors import UserError

# The node-local cache root: SKRD4AD_DATA_CACHE, else ~/.cache/skrd4ad/data.
CACHE_ENV = "SKRD4AD_DATA_CACHE"
# Inside a cached category folder: written last, so a half-done download is never used.
COMPLETE = ".complete"


def manifest(folder: Path) -> str:
    """A digest of every file under ``folder``: relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:32]


def source_record(
    kind: str, built: Path, categories: list[str], *, version: str = "",
    repo: Path | None = None, path: str | None = None, settings: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What the prepare stage records of a dataset: its kind (``dvc``, ``default`` or
    ``local``), its version, and the manifest of each category (as built under
    ``built``). ``dvc``: its ``path`` inside the DVC project ``repo``, where
    DVCFileSystem finds it."""
    record: dict[str, Any] = {"kind": kind, "version": version}
    record["manifests"] = {cat: manifest(built / cat) for cat in categories}
    if kind == "dvc":
        record.update(repo=str(repo), path=path)
    if settings is not None:
        record["settings"] = settings
    return record


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "skrd4ad" / "data")


def locate(source: dict[str, Any], root: str, category: str) -> tuple[str, str]:
    """``(root, how)``: a dataset root on this node that holds ``category`` as recorded,
    and how it got there (local, node-cache, remote or generated)."""
    if category not in source["manifests"]:
        raise UserError(
            f"category {category}: not found in the prepared dataset (prepared: "
            f"{', '.join(source['manifests']) or 'none'}): add it to dataset.categories and "
            "run the prepare stage"
        )
    want = source["manifests"][category]
    if (Path(root) / category).is_dir() and manifest(Path(root) / category) == want:
        return root, "local"
    key = hashlib.sha256(f"{source['version']}\0{want}".encode()).hexdigest()[:24]
    cached = cache_root() / key
    if (cached / category / COMPLETE).is_file():
        return str(cached), "node-cache"
    if source["kind"] == "dvc":
        how = "remote"
    elif source["kind"] == "default":
        how = "generated"
    else:
        raise UserError(
            f"category {category}: {root}/{category} is not on this node (or holds other "
            "data than prepared): version the dataset with DVC (dvc add, dvc push) or "
            "mount it at the same path on every node"
        )
    _fill(cached, category, source, how)
    if manifest(cached / category) != want:
        shutil.rmtree(cached / category, ignore_errors=True)
        raise UserError(
            f"category {category}: the data {how} on this node differs from what the "
            f"prepare stage recorded (manifest {want}): if the data changed, `dvc add` "
            "and `dvc push` it and run dvc repro again; else `dvc checkout` it"
        )
    (cached / category / COMPLETE).write_text(want + "\n")
    return str(cached), how


def _fill(cached: Path, category: str, source: dict[str, Any], how: str) -> None:
    """Download or make ``category`` into a new folder beside ``cached/category``, which
    replaces it only when complete (another worker on the node may race for it)."""
    cached.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached, prefix=f".{category}."))
    try:
        if how == "remote":
            _download(source, category, tmp / category)
        else:
            _generate(source, category, tmp)
        dest = cached / category
        if dest.exists() and not (dest / COMPLETE).is_file():
            shutil.rmtree(dest, ignore_errors=True)  # an earlier attempt's leftovers
        try:
            (tmp / category).rename(dest)
        except OSError:  # another worker on this node finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(source: dict[str, Any], category: str, dest: Path) -> None:
    from dvc.api import DVCFileSystem

    repo = _project(source)
    try:
        fs = DVCFileSystem(str(repo))
        fs.get(f"{source['path']}/{category}", str(dest), recursive=True)
    except Exception as exc:  # noqa: BLE001 - DVC's errors name a remote or a path
        raise UserError(
            f"category {category}: could not fetch {source['path']}/{category} from the DVC "
            f"remote of {repo} ({type(exc).__name__}: {str(exc)[:300]}): check `dvc remote "
            "list` and that `dvc push` ran"
        ) from exc


def _project(source: dict[str, Any]) -> Path:
    """The DVC project: the driver's checkout when this node has it (one machine), else
    the working folder when it is one, else the project this code was loaded from (what
    Ray ships to every node as the run's working directory). The manifest check proves
    the version either way."""
    shipped = Path(__file__).resolve().parents[1]
    for candidate in (Path(source.get("repo") or "/nonexistent"), Path.cwd(), shipped):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise UserError(
        "no DVC project on this node: run the driver from the project with ray.address "
        "set (it ships the project, with .dvc/config and data.dvc, to every node), or "
        "submit the job with --working-dir set to the project"
    )


def _generate(source: dict[str, Any], category: str, out: Path) -> None:
    """Make the embedded default dataset into ``out`` (all categories: one call makes
    them together, and they are small)."""
    from skrd4ad.data import make_default_dataset

    make_default_dataset(out, **(source.get("settings") or {}))
    if not (out / category).is_dir():
        raise UserError(f"category {category} is not one of the default dataset's")
