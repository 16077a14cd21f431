"""predict and evaluate through ONNX Runtime: the model exported beside a checkpoint
scores within 1e-4 of PyTorch, is used only for the checkpoint it was exported from, and
an impossible request says why."""

from __future__ import annotations

import csv
import json
import shlex

import pytest
import torch
from conftest import SKRD4AD, model_with_batchnorm_statistics, one_line_error

from skrd4ad.checkpoint import save_checkpoint
from skrd4ad.cli import run
from skrd4ad.config import Config
from skrd4ad.errors import UserError
from skrd4ad.evaluate import evaluate
from skrd4ad.export import export
from skrd4ad.inference import Predictor
from skrd4ad.onnx_predictor import (
    OnnxPredictor,
    export_command,
    exported_beside,
    load_predictor,
)
from skrd4ad.predict import predict

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
SIZE = 64


def _save(path, threshold: float) -> None:
    """A model with random weights and non-trivial BatchNorm statistics, as train saves
    it (so the folded PyTorch path and the export are both exercised)."""
    model = model_with_batchnorm_statistics()
    config = Config().with_values(
        {
            "model.backbone": "resnet18",
            "train.image_size": SIZE,
            "data.category": "brick",
        }
    )
    save_checkpoint(path, model, epoch=3, config=config.to_dict(), threshold=threshold,
                    threshold_precision="fp32")  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.pt"
    _save(path, threshold=1.25)
    assert export(path, "onnx") == exported_beside(path)  # export's own default place
    return path


def test_auto_scores_with_the_export_beside_within_1e4(exported, small_dataset):
    images = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    onnx = load_predictor(exported, device="cpu", batch_size=2)  # auto
    torch_path = load_predictor(exported, backend="torch", device="cpu", batch_size=2)
    assert isinstance(onnx, OnnxPredictor) and isinstance(torch_path, Predictor)
    assert onnx.state["threshold"] == 1.25 and onnx.image_size == SIZE
    maps, scores = onnx(images)  # batches of 2, 2 and 1
    expected_maps, expected_scores = torch_path(images)
    torch.testing.assert_close(maps, expected_maps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)


def test_evaluate_and_predict_say_and_agree(exported, small_dataset, tmp_path, capsys):
    by = {b: evaluate(exported, small_dataset, "brick", tmp_path / b, device="cpu", backend=b)
          for b in ("auto", "torch")}  # fmt: skip
    assert by["auto"]["backend"] == "onnxruntime" and by["torch"]["backend"] == "torch"
    for key in ("pixel_auroc", "aupro"):
        assert by["auto"][key] == pytest.approx(by["torch"][key], abs=1e-4)
    test_images = sorted((small_dataset / "brick" / "test").rglob("*.png"))[:3]
    scores = {}
    for b in ("onnxruntime", "torch"):
        done = predict(exported, test_images, tmp_path / f"p-{b}", overlays=False,
                       device="cpu", backend=b)  # fmt: skip
        assert done.backend == b and len(done.rows) == 3
        rows = csv.DictReader((tmp_path / f"p-{b}" / "predictions.csv").open())
        scores[b] = [float(r["score"]) for r in rows]
    assert scores["onnxruntime"] == pytest.approx(scores["torch"], abs=1e-4)
    # The command's summary says which backend auto chose.
    capsys.readouterr()
    argv = ["predict", str(exported), *map(str, test_images), "--out", str(tmp_path / "cli")]
    assert run([*argv, "--no-overlays", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "onnxruntime" and summary["images"] == 3


def test_an_export_of_another_checkpoint_is_never_used(exported, tmp_path, capsys):
    """The checkpoint changed after its export (trained again, same place): auto scores
    with PyTorch and says why; asked for by name, it is an error with the fix."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(exported.read_bytes())
    exported_beside(checkpoint).write_bytes(exported_beside(exported).read_bytes())
    assert isinstance(load_predictor(checkpoint, device="cpu"), OnnxPredictor)
    _save(checkpoint, threshold=2.5)  # the same weights, another threshold: other bytes
    predictor = load_predictor(checkpoint, device="cpu")
    assert isinstance(predictor, Predictor) and predictor.state["threshold"] == 2.5
    assert "exported from another checkpoint" in capsys.readouterr().err
    with pytest.raises(UserError, match="export it again: skrd4ad export --checkpoint"):
        load_predictor(checkpoint, backend="onnxruntime", device="cpu")


def test_onnxruntime_by_name_says_what_is_missing(tmp_path, exported):
    checkpoint = tmp_path / "model.pt"
    _save(checkpoint, threshold=1.0)
    with pytest.raises(UserError, match="does not exist"):
        load_predictor(checkpoint, backend="onnxruntime", device="cpu")
    assert isinstance(load_predictor(checkpoint, device="cpu"), Predictor)  # auto: torch
    with pytest.raises(UserError, match="bf16"):
        load_predictor(exported, backend="onnxruntime", device="cpu", precision="bf16")
    line = one_line_error([*SKRD4AD, "predict", str(checkpoint), str(tmp_path), "--out",
                           str(tmp_path / "p"), "--backend", "onnxruntime", "--device", "cpu"],
                          tmp_path)  # fmt: skip
    # The command the error names is the fix: after it, ONNX Runtime scores.
    fix = export_command(checkpoint)
    assert shlex.join(fix) in line
    assert run(fix[1:]) == 0
    assert isinstance(
        load_predictor(checkpoint, backend="onnxruntime", device="cpu"), OnnxPredictor
    )


def test_the_export_names_its_checkpoint(exported):
    import onnx

    from skrd4ad.onnx_predictor import checkpoint_sha256

    meta = {
        p.key: json.loads(p.value) for p in onnx.load(str(exported_beside(exported))).metadata_props
    }
    assert meta["skrd4ad.checkpoint_sha256"] == checkpoint_sha256(exported)
    assert meta["skrd4ad.threshold_precision"] == "fp32"
