from __future__ import annotations

import json

import pytest
import torch

from skrd4ad import build_model
from skrd4ad.models import SKIP_TOPOLOGIES, TeacherWeightsError, build_teacher, imagenet_cache_file
from skrd4ad.models.reverse_distillation.components.skip import resolve_skip
from skrd4ad.models.reverse_distillation.published_weights import UNUSED_BOTTLENECK_PREFIXES

UNUSED_PARAMS = 4096 * 2048 + 2 * 2048  # conv4 (1x1, 4096 -> 2048) and bn4 weight/bias


def test_wide_resnet50_2_matches_published_structure(shapes_file):
    ref = json.loads(shapes_file.read_text())
    model = build_model("wide_resnet50_2", teacher_weights="none")
    for name, module in (("bottleneck", model.bottleneck), ("decoder", model.decoder)):
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        theirs = {
            k: v
            for k, v in ref["state_dict_shapes"][name].items()
            if not k.startswith(UNUSED_BOTTLENECK_PREFIXES)
        }
        assert ours == theirs
    n_bottleneck = sum(p.numel() for p in model.bottleneck.parameters())
    n_decoder = sum(p.numel() for p in model.decoder.parameters())
    assert n_bottleneck == ref["parameter_counts"]["bottleneck"] - UNUSED_PARAMS
    assert n_decoder == ref["parameter_counts"]["decoder"]
    # width_per_group 128 in the bottleneck's residual blocks
    assert model.bottleneck.bn_layer[0].conv1.weight.shape[0] == 1024


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_every_backbone_runs(backbone):
    model = build_model(backbone, teacher_weights="none").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        teacher, student = model(x)
    assert [t.shape for t in teacher] == [s.shape for s in student]


def test_teacher_is_frozen_and_cut_after_layer3():
    model = build_model("resnet18", teacher_weights="none")
    model.train()
    assert not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert not hasattr(model.teacher, "layer4") and not hasattr(model.teacher, "fc")
    teacher, student = model(torch.randn(2, 3, 64, 64))
    assert all(t.grad_fn is None and not t.requires_grad for t in teacher)
    assert all(s.requires_grad for s in student)


def test_missing_imagenet_weights_error_names_cache_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = imagenet_cache_file("resnet18")
    assert str(expected).startswith(str(tmp_path))
    with pytest.raises(TeacherWeightsError) as err:
        build_teacher("resnet18", "imagenet")
    message = str(err.value)
    assert str(expected) in message and expected.name in message
    assert "--teacher-weights PATH" in message


def test_imagenet_weights_read_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    donor = torchvision.models.resnet18(weights=None)
    cache = imagenet_cache_file("resnet18")
    cache.parent.mkdir(parents=True)
    torch.save(donor.state_dict(), cache)
    teacher = build_teacher("resnet18", "imagenet")
    assert torch.equal(teacher.layer3[0].conv1.weight, donor.layer3[0].conv1.weight)


def test_teacher_weights_from_file_and_bad_file(tmp_path):
    import torchvision

    donor = torchvision.models.resnet18(weights=None)
    path = tmp_path / "teacher.pth"
    torch.save(donor.state_dict(), path)
    teacher = build_teacher("resnet18", path)
    assert torch.equal(teacher.conv1.weight, donor.conv1.weight)
    with pytest.raises(TeacherWeightsError, match="do not fit resnet34"):
        build_teacher("resnet34", path)
    with pytest.raises(TeacherWeightsError, match="does not exist"):
        build_teacher("resnet18", tmp_path / "missing.pth")


def test_skip_topologies_are_data():
    assert resolve_skip("sk") == {1: 2, 2: 1}
    assert resolve_skip("none") == {}
    assert set(SKIP_TOPOLOGIES) >= {"none", "sk"}
    with pytest.raises(ValueError, match="no matching shape"):
        resolve_skip({0: 0})
    with pytest.raises(ValueError, match="unknown skip topology"):
        resolve_skip("bogus")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("vgg16", teacher_weights="none")


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_batchnorm_folding_keeps_outputs(backbone):
    from skrd4ad.models.reverse_distillation.anomaly_map import anomaly_map
    from skrd4ad.models.reverse_distillation.components.fuse import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(backbone, teacher_weights="none").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = anomaly_map(*model(x), 64)
        actual = anomaly_map(*folded(x), 64)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
