"""DVC stage 'prepare': make the embedded default dataset, or convert VisA to MVTec layout.

MVTec AD, VAD and folder datasets are used in place from ``dataset.root`` (a folder that
``dvc add`` versions, e.g. ``data`` with ``data.dvc``); the stage records where the
benchmark reads them in ``prepared/dataset.json`` together with the data version (the md5
in data.dvc). The stage depends on ``dataset.root`` (dvc.yaml), so a new version of the
data re-runs it; for the default dataset the root is the code that makes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from skrd4ad.atomic import atomic_write_text, make_dir
from skrd4ad.data import list_categories, make_default_dataset, prepare_visa
from skrd4ad.errors import UserError

from .data_source import source_record
from .params import load_params, stage_parser


def data_version(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 that data.dvc records for the dataset root ('' when there is none)."""
    try:
        outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
        return str(outs[0].get("md5", "")) if outs else ""
    except (OSError, AttributeError, yaml.YAMLError):
        return ""


def prepare(params: dict, out: Path) -> dict:
    """Write ``out`` (prepared/): built in a new folder beside it, which replaces the old
    one only when everything succeeded, so a failure keeps the last good output."""
    ds = params["dataset"]
    if ds["name"] not in ("default", "visa") and not Path(ds["root"]).is_dir():
        raise UserError(
            f"dataset.root {ds['root']} does not exist: dvc pull data.dvc, or dvc add / "
            "dvc import-url the dataset there (see README)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = make_dir(out.parent, f".{out.name}.new-")
    try:
        info = _prepare_into(ds, params, new)
        built = Path(info["root"])
        # Paths inside point at the new folder; they name the final one.
        info["root"] = info["root"].replace(str(new), str(out), 1)
        info["source"] = _source(ds["name"], info, built, params.get("default_dataset", {}))
        atomic_write_text(new / "dataset.json", json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        new.rename(out)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return info


def _source(name: str, info: dict, built: Path, default: dict) -> dict:
    """Where a worker on any node gets the data (pipelines/data_source.py): the default
    dataset is made there; a dataset inside this DVC project with a version (data.dvc,
    or a DVC stage output such as converted VisA) comes from the DVC remote; anything
    else must be at the same path on every node."""
    cats, version = info["categories"], info["data_version"]
    if name == "default":
        return source_record("default", built, cats, version=version, settings=default)
    repo, final = Path.cwd().resolve(), Path(info["root"]).resolve()
    if version and (repo / ".dvc").is_dir() and final.is_relative_to(repo):
        path = final.relative_to(repo).as_posix()
        return source_record("dvc", built, cats, version=version, repo=repo, path=path)
    return source_record("local", built, cats, version=version)


def _check_categories(categories: Any, root: Path) -> list[str]:
    available = list_categories(root)
    if categories == "all":
        return available
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise UserError(f"dataset.categories must be 'all' or a list of names, got {categories!r}")
    if not available:
        raise UserError(
            f"dataset.root {root} holds no categories (folders with train/good): set "
            "dataset.root to the dataset folder, e.g. data"
        )
    missing = [c for c in categories if c not in available]
    if missing:
        raise UserError(
            f"dataset.categories: {', '.join(missing)} not found under {root} "
            f"(available: {', '.join(available) or 'none'})"
        )
    return categories


def _prepare_into(ds: dict, params: dict, out: Path) -> dict:
    name = ds["name"]
    if name == "default":
        root = out / "default"
        manifest = make_default_dataset(root, **params.get("default_dataset", {}))
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        version = f"default-manifest-sha256:{digest[:16]}"
        layout = "mvtec"
    elif name == "visa":
        root = out / "visa"
        prepare_visa(Path(ds["root"]), root)
        version, layout = data_version(), "mvtec"
    else:
        root = Path(ds["root"])
        if not root.is_dir():
            raise UserError(
                f"dataset.root {root} does not exist: dvc pull data.dvc, or dvc add / "
                "dvc import-url the dataset there (see README)"
            )
        version, layout = data_version(), ds.get("layout", "auto")
    categories = ds.get("categories", "all")
    if name == "folder":  # the folder layout is one category: the folder itself
        categories, root = [root.name], root.parent
    else:
        categories = _check_categories(categories, root)
    return {
        "name": name,
        "root": str(root),
        "layout": layout,
        "categories": categories,
        "data_version": version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("prepare", __doc__)
    parser.add_argument("--out", type=Path, required=True, help="the prepared dataset folder")
    args = parser.parse_args(argv)
    try:
        info = prepare(load_params(args.params), args.out)
    except UserError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    cats = info["categories"]
    print(f"prepare: {info['name']}, {len(cats)} categories ({', '.join(cats)}), data version "
          f"{info['data_version']}: {args.out / 'dataset.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
