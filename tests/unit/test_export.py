"""`skrd4ad export`: TorchScript and ONNX models equal the PyTorch model within 1e-4."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import model_with_batchnorm_statistics

from skrd4ad.checkpoint import save_checkpoint
from skrd4ad.cli import run
from skrd4ad.config import Config
from skrd4ad.errors import UserError
from skrd4ad.export import build_detector, export
from skrd4ad.inference import Predictor

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A model with random weights and non-trivial BatchNorm statistics (so that the
    export's BatchNorm folding is exercised), saved as train would save it."""
    model = model_with_batchnorm_statistics()
    path = tmp_path_factory.mktemp("export") / "model.pt"
    config = Config().with_values(
        {"model.backbone": "resnet18", "train.image_size": SIZE, "data.category": "brick"}
    )
    save_checkpoint(path, model, epoch=3, config=config.to_dict(), threshold=1.25)
    return path


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)


@pytest.fixture(scope="module")
def expected(checkpoint, images):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    maps, scores = predictor(images)
    return maps.float(), scores.float()


def test_torchscript_matches_pytorch(checkpoint, images, expected, tmp_path):
    out = export(checkpoint, "torchscript", tmp_path / "model.ts")
    files = {"skrd4ad.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files["skrd4ad.json"])
    assert meta["image_size"] == SIZE and meta["threshold"] == 1.25
    with torch.no_grad():
        maps, scores = loaded(images)
        one_map, one_score = loaded(images[:1])  # another batch size than traced
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,)
    torch.testing.assert_close(maps, expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores, expected[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one_score, expected[1][:1], atol=1e-4, rtol=1e-4)


def test_onnx_matches_pytorch(checkpoint, images, expected, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = export(checkpoint, "onnx", tmp_path / "model.onnx")
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["skrd4ad.threshold"] == 1.25 and meta["skrd4ad.backbone"] == "resnet18"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    maps, scores = session.run(["anomaly_map", "score"], {"images": images.numpy()})
    torch.testing.assert_close(torch.from_numpy(maps), expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(scores), expected[1], atol=1e-4, rtol=1e-4)
    # Dynamic batch: one image at a time gives the same answers.
    one_map, _ = session.run(None, {"images": images[1:2].numpy()})
    torch.testing.assert_close(torch.from_numpy(one_map), expected[0][1:2], atol=1e-4, rtol=1e-4)


def test_detector_matches_unfused_model(checkpoint, images, expected):
    """The wrapper's own preprocessing (uint8 in, normalisation inside) is the pipeline's."""
    detector, meta = build_detector(checkpoint)
    with torch.no_grad():
        maps, scores = detector(images)
    torch.testing.assert_close(maps, expected[0], atol=1e-4, rtol=1e-4)
    assert meta["category"] == "brick"


def test_cli_export_and_errors(checkpoint, tmp_path, capsys):
    assert (
        run(
            [
                "export",
                "--checkpoint",
                str(checkpoint),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "m.ts"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "m.ts")
    assert (tmp_path / "m.ts").stat().st_size > 0
    with pytest.raises(UserError, match="would overwrite the checkpoint"):
        export(checkpoint, "onnx", checkpoint)
    with pytest.raises(UserError, match="--format must be one of"):
        export(checkpoint, "tflite")
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind
