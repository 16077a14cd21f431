"""A benchmarked category's model as an skrd4ad checkpoint (model.pt) again, for
``skrd4ad evaluate``, ``predict`` and ``export``.

    python -m pipelines.model_file results/benchmark/<category> --out model.pt

The benchmark stores each category's final weights once (``results/benchmark/<category>/
model.json`` names where): as its MLflow model, rebuilt here into a checkpoint with the
same weights and state, or, with tracking off, as model.pt in ``ray.storage_path``, copied
here.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from skrd4ad.errors import UserError

from .params import load_params, stage_parser

# In results/benchmark/<category> and the final checkpoint: where the final weights are
# stored once (an MLflow model, or with tracking off the run storage).
MODEL_POINTER = "model.json"


def model_file(results: Path, out: Path, params: dict) -> Path:
    """Write ``results``' (a category's folder, or its model.json) model to ``out``."""
    pointer = results / MODEL_POINTER if results.is_dir() else results
    try:
        where = json.loads(pointer.read_text())["model"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{pointer} names no model ({type(exc).__name__}); pass a category's folder "
            "under results/benchmark/ that the benchmark stage wrote"
        ) from exc
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a folder; name the model.pt file to write")
    if where.startswith(("models:/", "runs:/")):
        import mlflow

        from .mlflow_model import checkpoint_from_model
        from .params import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(params["mlflow"].get("tracking_uri")))
        return checkpoint_from_model(where, out)
    return _copy_from_storage(where, out, params["ray"].get("storage_endpoint"))


def _copy_from_storage(where: str, out: Path, endpoint: str | None) -> Path:
    from skrd4ad.atomic import atomic_output

    from .orchestrate import open_in_storage

    try:
        src = open_in_storage(where, endpoint)
    except FileNotFoundError as exc:
        raise UserError(
            f"{where} is not in the run storage any more; run the benchmark again"
        ) from exc
    with src, atomic_output(out) as tmp, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("model_file", __doc__)
    parser.add_argument(
        "results", type=Path, help="results/benchmark/<category> (or its model.json)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the model.pt to write")
    args = parser.parse_args(argv)
    try:
        path = model_file(args.results, args.out, load_params(args.params))
    except UserError as exc:
        print(f"model_file: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
