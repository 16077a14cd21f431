"""skrd4ad computes what the authors' published code computes (recorded numbers)."""

from __future__ import annotations

import pytest
import torch

from skrd4ad import build_model
from skrd4ad.models import load_published_state
from skrd4ad.models.reverse_distillation.anomaly_map import anomaly_map, image_score
from skrd4ad.models.reverse_distillation.loss import (
    SKRD4ADLoss,
    consistency_loss,
    cosine_loss,
    l2_loss,
)

RTOL = ATOL = 1e-4


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # "within 1e-4, relative or absolute, whichever is larger"
    err = (actual - expected).abs()
    allowed = torch.maximum(torch.full_like(err, ATOL), RTOL * expected.abs())
    assert actual.shape == expected.shape
    assert bool((err <= allowed).all()), f"max error {float(err.max()):.3g}"


@pytest.fixture(scope="module")
def outputs(reference):
    out = {}
    for skip in ("sk", "none"):
        model = build_model("resnet18", teacher_weights="none", skip=skip).eval()
        load_published_state(
            model,
            reference["bottleneck_state"],
            reference["decoder_state"],
            reference["encoder_state"],
        )
        with torch.no_grad():
            teacher, student = model(reference["input"])
            out[skip] = (teacher, student, model.bottleneck(teacher))
    return out


def test_teacher_features(outputs, reference):
    for ours, theirs in zip(outputs["sk"][0], reference["teacher_features"], strict=True):
        close(ours, theirs)


def test_bottleneck_output(outputs, reference):
    close(outputs["sk"][2], reference["bottleneck_output"])


@pytest.mark.parametrize(
    "skip,key", [("sk", "student_features_skip"), ("none", "student_features_noskip")]
)
def test_student_features(outputs, reference, skip, key):
    for ours, theirs in zip(outputs[skip][1], reference[key], strict=True):
        close(ours, theirs)


def test_skip_changes_student(outputs):
    # The two wirings must differ, or the equivalence above would prove nothing about skips.
    assert not torch.allclose(outputs["sk"][1][0], outputs["none"][1][0])


def test_losses(outputs, reference):
    teacher, student, _ = outputs["sk"]
    close(cosine_loss(teacher, student), reference["loss_cosine_skip"])
    close(l2_loss(teacher, student), reference["loss_l2_skip"])
    close(consistency_loss(teacher, student), reference["loss_consistency_skip"])
    total, terms = SKRD4ADLoss(alpha=0.5, beta=1.0, gamma=0.05)(teacher, student)
    expected = (
        0.5 * reference["loss_l2_skip"]
        + reference["loss_cosine_skip"]
        + 0.05 * reference["loss_consistency_skip"]
    )
    close(total, expected)
    assert set(terms) == {"l2", "cosine", "consistency"}


@pytest.mark.parametrize("skip,key", [("sk", "anomaly_map_skip"), ("none", "anomaly_map_noskip")])
def test_anomaly_maps(outputs, reference, skip, key):
    teacher, student, _ = outputs[skip]
    close(anomaly_map(teacher, student, 256), reference[key])


def test_image_scores(outputs, reference):
    teacher, student, _ = outputs["sk"]
    close(image_score(anomaly_map(teacher, student, 256)), reference["image_score_skip"])
