"""Cached teacher features: the same training as recomputing them, and off when augmenting."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_config

from skrd4ad.errors import UserError
from skrd4ad.feature_cache import build_cache
from skrd4ad.models import build_model
from skrd4ad.runtime import Runtime
from skrd4ad.train import fit


def _history(path):
    return json.loads((path / "train_history.json").read_text())


def test_cached_and_uncached_training_give_the_same_loss(small_dataset, tmp_path):
    runs = {}
    for mode in ("on", "off"):
        cfg = tiny_config(small_dataset, tmp_path / mode, epochs=3, cache_features=mode)
        fit(cfg)
        runs[mode] = _history(tmp_path / mode)
    assert "teacher_cache_s" in runs["on"][0] and "teacher_cache_s" not in runs["off"][0]
    for cached, plain in zip(runs["on"], runs["off"], strict=True):
        for key in ("loss", "cosine", "consistency"):
            assert cached[key] == pytest.approx(plain[key], abs=1e-5), (key, cached["epoch"])
    a = torch.load(tmp_path / "on" / "model.pt", weights_only=False)["decoder"]
    b = torch.load(tmp_path / "off" / "model.pt", weights_only=False)["decoder"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4)


def test_cache_holds_the_teachers_features(small_dataset):
    torch.manual_seed(0)
    model = build_model("resnet18", "none", "sk").eval()
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    plain = Runtime.create("cpu", "fp32", channels_last=False)
    cache = build_cache(model, images, plain, batch_size=2)
    assert cache.where == "cpu-float32"
    idx = torch.tensor([4, 0, 2])
    with torch.no_grad():
        direct = model.teacher(plain.to_input(images[idx]))
    for got, want in zip(cache.batch(idx), direct, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not any(t.requires_grad for t in cache.levels)
    bf16 = build_cache(model, images, Runtime.create("cpu", "bf16", channels_last=True))
    assert bf16.where == "cpu-bfloat16"
    assert bf16.batch(idx)[0].is_contiguous(memory_format=torch.channels_last)


def test_augmentation_turns_the_cache_off(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset, tmp_path / "aug", epochs=2, augment="hflip")
    fit(cfg)
    history = _history(tmp_path / "aug")
    assert "teacher_cache_s" not in history[0]
    plain = tiny_config(small_dataset, tmp_path / "plain", epochs=2, cache_features="off")
    fit(plain)
    # The flips reach training: the losses differ from the unaugmented run's.
    assert history[0]["loss"] != pytest.approx(_history(tmp_path / "plain")[0]["loss"], abs=1e-6)
    with pytest.raises(UserError, match="--cache-features on needs --augment none"):
        fit(tiny_config(small_dataset, tmp_path / "bad", cache_features="on", augment="hflip"))


def test_compiled_student_trains_like_eager(small_dataset, tmp_path):
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        cfg = tiny_config(small_dataset, tmp_path / name, epochs=1, compile=compiled)
        fit(cfg)
        runs[name] = _history(tmp_path / name)
    # Inductor fuses and reorders float32 reductions: after a few Adam steps the losses
    # drift apart by a few 1e-4 (relative), far below any difference in what is computed.
    for a, b in zip(runs["compiled"], runs["eager"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3)
    # The checkpoint holds plain module weights, loadable without torch.compile.
    state = torch.load(tmp_path / "compiled" / "model.pt", weights_only=False)
    assert not any("_orig_mod" in k for k in state["decoder"])


def test_channels_last_computes_what_contiguous_computes(small_dataset, tmp_path):
    from skrd4ad.models.reverse_distillation.loss import SKRD4ADLoss

    torch.manual_seed(0)
    model = build_model("resnet18", "none", "sk").train()
    x = torch.randn(4, 3, 64, 64)
    loss = SKRD4ADLoss(alpha=0.0, beta=1.0, gamma=0.05)
    out = {}
    for name, layout in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
        m = copy.deepcopy(model).to(memory_format=layout)
        total, terms = loss(*m(x.contiguous(memory_format=layout)))
        total.backward()
        grads = [p.grad for p in m.decoder.parameters()]
        out[name] = (total.detach(), {k: float(v.detach()) for k, v in terms.items()}, grads)
    # Same weights, same batch: one step computes the same loss terms and gradients to
    # float32 rounding (other kernels sum in another order).
    torch.testing.assert_close(out["nhwc"][0], out["nchw"][0], rtol=1e-5, atol=1e-6)
    for key, value in out["nchw"][1].items():
        assert out["nhwc"][1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for a, b in zip(out["nhwc"][2], out["nchw"][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # Over epochs Adam divides by the root of tiny second moments, which magnifies those
    # rounding differences (as for torch.compile): the training losses agree to 2e-3.
    runs = {}
    for name, layout in (("nhwc", True), ("nchw", False)):
        fit(tiny_config(small_dataset, tmp_path / name, epochs=2, channels_last=layout))
        runs[name] = _history(tmp_path / name)
    for a, b in zip(runs["nhwc"], runs["nchw"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3), a["epoch"]


def test_a_cache_that_does_not_fit_in_host_memory_falls_back(small_dataset, tmp_path, monkeypatch):
    """The cache checks host memory before it allocates: when it would not fit, a warning
    says how much it needs, and training recomputes the features."""
    import skrd4ad.feature_cache as fc

    monkeypatch.setattr(fc, "host_available", lambda: 1 << 20)  # 1 MiB
    with pytest.warns(ResourceWarning, match=r"needs \d+ MiB of host memory, but 1 MiB"):
        result = fit(tiny_config(small_dataset, tmp_path, epochs=1, val_fraction=0))
    assert "teacher_cache_s" not in result.history[0]  # no cache was built


def test_concurrent_caches_count_against_the_same_memory(small_dataset, monkeypatch, tmp_path):
    """Another process's cache being built holds a reservation: the same request that fits
    alone does not fit beside it."""
    import subprocess
    import sys

    import skrd4ad.feature_cache as fc

    monkeypatch.setattr(fc, "RESERVATIONS", tmp_path / "reservations.json")
    monkeypatch.setattr(fc, "host_available", lambda: 100 << 20)
    with fc.host_reservation(60 << 20) as problem:
        assert problem is None
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "reservations.json").write_text(f'{{"{other.pid}": {40 << 20}}}')
        with fc.host_reservation(60 << 20) as problem:
            assert problem and "40 MiB is reserved by other caches" in problem
    finally:
        other.kill()
        other.wait()
    with fc.host_reservation(60 << 20) as problem:  # a dead process's reservation is dropped
        assert problem is None
