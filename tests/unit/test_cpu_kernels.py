"""A few images through an inference model's bottleneck on a CPU take PyTorch's plain
convolution kernel; everything else keeps oneDNN, and the process-wide switch always
comes back as it was found."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch

from skrd4ad import build_model
from skrd4ad.inference import AnomalyDetector, predict_maps
from skrd4ad.models.reverse_distillation.components.cpu_kernels import FEW_IMAGES, PLAIN
from skrd4ad.models.reverse_distillation.components.fuse import fold_batchnorm
from skrd4ad.runtime import Runtime


def inference_model(precision: str = "fp32"):
    torch.manual_seed(0)
    runtime = Runtime.create("cpu", precision)
    return runtime.setup(build_model("resnet18", "none", "sk"), inference_only=True), runtime


def onednn_seen_by_bottleneck(model, batch: int, grad: bool = False) -> bool:
    """torch.backends.mkldnn.enabled as the bottleneck's first convolution sees it."""
    seen = []
    handle = model.bottleneck.conv1.register_forward_pre_hook(
        lambda *_: seen.append(torch.backends.mkldnn.enabled)
    )
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    try:
        with torch.set_grad_enabled(grad):
            model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("batch", "grad", "onednn"),
    [
        (1, False, False),
        (FEW_IMAGES - 1, False, False),
        (FEW_IMAGES, False, True),
        (1, True, True),
    ],  # fmt: skip
)
def test_few_images_without_autograd_take_the_plain_kernel(batch, grad, onednn):
    model, _ = inference_model()
    assert onednn_seen_by_bottleneck(model, batch, grad) is onednn
    assert torch.backends.mkldnn.enabled  # back as found
    assert PLAIN.holders == 0


def test_only_the_bottleneck_and_only_fp32_on_a_cpu():
    model, _ = inference_model()
    seen = []
    model.teacher.conv1.register_forward_pre_hook(
        lambda *_: seen.append(torch.backends.mkldnn.enabled)
    )
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [True]
    bf16, runtime = inference_model("bf16")  # bf16 needs oneDNN's kernels on a CPU
    with runtime.autocast():
        assert onednn_seen_by_bottleneck(bf16, 1) is True


def test_the_switch_comes_back_after_an_exception_and_keeps_the_user_s_setting():
    model, _ = inference_model()
    with pytest.raises(ValueError, match="not enough values"):
        with torch.inference_mode():
            model.bottleneck([torch.randn(1, 64, 16, 16)])  # one level of three: fails inside
    assert torch.backends.mkldnn.enabled and PLAIN.holders == 0
    with pytest.raises(ValueError, match="not enough values"), torch.inference_mode():
        model.bottleneck([])  # no image at all: the hooks stay balanced
    assert torch.backends.mkldnn.enabled and PLAIN.holders == 0 and not PLAIN.local.taken
    with torch.backends.mkldnn.flags(enabled=False):
        assert onednn_seen_by_bottleneck(model, 1) is False
        assert torch.backends.mkldnn.enabled is False  # the user's own choice stays
    assert torch.backends.mkldnn.enabled


def test_overlapping_threads_restore_the_switch_only_when_the_last_leaves():
    """A leaves while B is still inside: the switch must stay off for B, and be back on
    once B leaves (a save-and-restore per call would leave it off for good)."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        PLAIN.enter(True)
        a_in.set()
        b_in.wait()
        PLAIN.leave()
        a_out.set()

    def b():
        a_in.wait()
        PLAIN.enter(True)
        b_in.set()
        a_out.wait()
        seen["b after a left"] = torch.backends.mkldnn.enabled
        PLAIN.leave()

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"b after a left": False}
    assert torch.backends.mkldnn.enabled and PLAIN.holders == 0


def test_maps_equal_oneDNN_s_and_the_model_pickles():
    model, runtime = inference_model()
    torch.manual_seed(0)  # the same weights, folded by hand, without the hooks
    onednn_model = fold_batchnorm(build_model("resnet18", "none", "sk"), inplace=True)
    onednn_model = onednn_model.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    seen = onednn_seen_by_bottleneck(onednn_model, 1)
    plain, _ = predict_maps(model, images, runtime)
    onednn, _ = predict_maps(onednn_model, images, runtime)
    assert seen is True and onednn_seen_by_bottleneck(model, 1) is False
    torch.testing.assert_close(plain, onednn, rtol=1e-5, atol=1e-5)
    pickle.loads(pickle.dumps(model))


def test_a_trace_records_no_kernel_choice_and_warns_nothing(recwarn):
    """Exports trace the detector at a few images: the hooks must not turn the traced
    batch size into a Python bool (torch's TracerWarning on the user's console)."""
    model, _ = inference_model()
    detector = AnomalyDetector(model, 64, channels_last=True)
    with torch.no_grad():
        images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
        traced = torch.jit.trace(detector, images, check_trace=False)
    assert not [w for w in recwarn if "Python boolean" in str(w.message)]
    assert torch.backends.mkldnn.enabled and PLAIN.holders == 0
    with torch.no_grad():
        images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
        torch.testing.assert_close(traced(images), detector(images), rtol=1e-4, atol=1e-5)
