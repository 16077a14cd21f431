from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from skrd4ad.checkpoint import load_model, read_checkpoint, save_checkpoint
from skrd4ad.errors import CheckpointError, TrainingDiverged
from skrd4ad.evaluate import evaluate
from skrd4ad.models import BACKBONES, SKIP_TOPOLOGIES, build_model
from skrd4ad.models.reverse_distillation.loss import SKRD4ADLoss
from skrd4ad.results import METRIC_KEYS, PIXEL_KEYS
from skrd4ad.train import OnEpochEnd, fit


def test_training_lowers_loss_checkpoints_and_evaluates(small_dataset, tmp_path):
    seen = []
    result = fit(
        tiny_config(small_dataset, tmp_path, epochs=6, lr=0.002),
        callbacks=[OnEpochEnd(seen.append)],
    )
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert [m["epoch"] for m in seen] == list(range(1, 7))
    assert {"loss", "cosine", "l2", "consistency", "images_per_s"} <= set(seen[0])
    assert "val_aupro" in seen[1] and "val_aupro" not in seen[0]
    for name in ("last.pt", "model.pt", "train_history.json"):
        assert (tmp_path / name).is_file()
    state = read_checkpoint(tmp_path / "model.pt")
    assert state["epoch"] == 6 and state["config"]["model"]["backbone"] == "resnet18"
    assert state["threshold"] is not None
    assert {"teacher", "bottleneck", "decoder"} <= set(state)
    metrics = evaluate(
        tmp_path / "model.pt", small_dataset, "brick", tmp_path / "eval", overlays=1, curves=True
    )
    written = strict_json(tmp_path / "eval" / "metrics.json")
    assert written["counts"] == {
        "test": 12,
        "normal": 4,
        "anomalous": 8,
        "by_defect": {"good": 4, "hole": 2, "patch": 2, "scratch": 2, "stain": 2},
    }
    for key in METRIC_KEYS:
        assert 0.0 <= written[key] <= 1.0 and written[key] == metrics[key]
    assert {"inference_s", "metrics_s", "decode_s", "total_s"} <= set(written["timings"])
    assert written["precision"] == "fp32"  # resolved, not "auto"
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 2
    assert (tmp_path / "eval" / "pro_curve.png").is_file()


def test_random_teacher_is_stored_so_evaluation_needs_only_the_checkpoint(small_dataset, tmp_path):
    fit(tiny_config(small_dataset, tmp_path, epochs=1, val_fraction=0))
    model, _ = load_model(tmp_path / "model.pt")
    x = torch.randn(1, 3, 64, 64)
    again, _ = load_model(tmp_path / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1][0], again(x)[1][0])


def test_a_loaded_model_holds_its_weights_once(tmp_path):
    """load_model assigns the tensors it read to the model (no second set), and what it
    returns beside the model holds none of them: BatchNorm folding can free what it
    replaces."""
    torch.manual_seed(0)
    built = build_model("resnet18", "none", "sk")
    optimizer = torch.optim.Adam(built.bottleneck.parameters()).state_dict()  # as last.pt
    save_checkpoint(tmp_path / "model.pt", built, threshold=1.0, optimizer=optimizer)
    state = read_checkpoint(tmp_path / "model.pt")
    read = {t.data_ptr() for part in ("teacher", "bottleneck", "decoder")
            for t in state[part].values()}  # fmt: skip
    model, rest = load_model(tmp_path / "model.pt", state=state)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cpu" for t in tensors)
    assert {t.data_ptr() for t in tensors} == read
    assert rest["threshold"] == 1.0
    assert not set(rest) & {"teacher", "bottleneck", "decoder", "optimizer"}
    assert not any(p.requires_grad for p in model.teacher.parameters())  # still frozen


def test_resume_continues_at_the_right_epoch_with_the_same_optimizer(small_dataset, tmp_path):
    straight = fit(tiny_config(small_dataset, tmp_path / "a", epochs=4, val_fraction=0))
    fit(tiny_config(small_dataset, tmp_path / "b", epochs=2, val_fraction=0))
    mid = read_checkpoint(tmp_path / "b" / "last.pt")
    assert mid["epoch"] == 2
    seen = []
    resumed = fit(
        tiny_config(small_dataset, tmp_path / "b", epochs=4, val_fraction=0, resume=True),
        callbacks=[OnEpochEnd(seen.append)],
    )
    assert [m["epoch"] for m in seen] == [3, 4]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    sa = read_checkpoint(tmp_path / "a" / "last.pt")
    sb = read_checkpoint(tmp_path / "b" / "last.pt")
    for key, value in sa["decoder"].items():
        torch.testing.assert_close(value, sb["decoder"][key], rtol=1e-5, atol=1e-6)
    exp_a = sa["optimizer"]["state"][0]["exp_avg"]
    torch.testing.assert_close(exp_a, sb["optimizer"]["state"][0]["exp_avg"], rtol=1e-4, atol=1e-7)
    assert sa["optimizer"]["state"][0]["step"] == sb["optimizer"]["state"][0]["step"]


def test_resume_with_other_backbone_is_refused(small_dataset, tmp_path):
    fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0))
    with pytest.raises(CheckpointError, match="backbone='resnet18'"):
        fit(
            tiny_config(
                small_dataset, tmp_path, epochs=3, val_fraction=0, resume=True, backbone="resnet34"
            )
        )


def test_nan_loss_stops_naming_the_epoch_and_keeps_last_good_checkpoint(
    small_dataset, tmp_path, monkeypatch
):
    calls = {"n": 0}
    original = SKRD4ADLoss.__call__

    def flaky(self, teacher, student):
        calls["n"] += 1
        total, terms = original(self, teacher, student)
        if calls["n"] > 3 * 3:  # 3 batches per epoch: epochs 1-3 are fine, epoch 4 is not
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(SKRD4ADLoss, "__call__", flaky)
    with pytest.raises(TrainingDiverged, match="epoch 4"):
        fit(tiny_config(small_dataset, tmp_path, epochs=6, val_fraction=0))
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["decoder"].values() if v.is_floating_point())


def test_best_val_selection_uses_validation_only(small_dataset, tmp_path):
    result = fit(tiny_config(small_dataset, tmp_path, epochs=4, select="best-val"))
    state = read_checkpoint(result.model_path)
    assert state["selected_from"] == "best.pt"
    best = state["best"]
    assert best["epoch"] in (2, 4)
    vals = {h["epoch"]: h["val_aupro"] for h in result.history if "val_aupro" in h}
    assert best["value"] == max(vals.values())


def test_bf16_on_cpu_only_when_named(small_dataset, tmp_path):
    from skrd4ad.inference import predict_maps
    from skrd4ad.runtime import Runtime

    with Runtime.create("cpu", "auto").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with Runtime.create("cpu", "bf16").autocast():
        assert torch.is_autocast_enabled("cpu")
    fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0))
    model, _ = load_model(tmp_path / "model.pt")
    runtime = Runtime.create("cpu", "fp32")
    model = runtime.setup(model, inference_only=True)
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    fp32, s32 = predict_maps(model, images, runtime)
    bf16, s16 = predict_maps(model, images, runtime.with_precision("bf16"))
    assert fp32.dtype == bf16.dtype == torch.float32
    # bf16 changes the numbers a little, not the picture
    assert float((fp32 - bf16).abs().mean()) < 0.05 * float(fp32.abs().mean())
    assert not torch.equal(fp32, bf16)


def test_image_level_dataset_reports_pixel_metrics_as_absent(small_dataset, tmp_path):
    import shutil

    root = tmp_path / "vad"
    src = small_dataset / "brick"
    shutil.copytree(src / "train", root / "cat" / "train")
    (root / "cat" / "test").mkdir(parents=True)
    shutil.copytree(src / "test" / "good", root / "cat" / "test" / "good")
    shutil.copytree(src / "test" / "hole", root / "cat" / "test" / "bad")
    shutil.copytree(src / "test" / "stain", root / "cat" / "test" / "bad_unseen_defects")
    fit(tiny_config(root, tmp_path / "run", category="cat", epochs=1, val_fraction=0))
    m = evaluate(tmp_path / "run" / "model.pt", root, "cat", tmp_path / "eval")
    written = strict_json(tmp_path / "eval" / "metrics.json")
    assert m["layout"] == written["layout"] == "vad"
    assert 0 <= written["image_auroc"] <= 1 and 0 <= written["image_f1_max"] <= 1
    for key in PIXEL_KEYS:
        assert written[key] is None and "no ground-truth masks" in written["absent"][key]


def strict_json(path):
    """A strict parser: bare NaN or Infinity, which json.dumps writes by default, fail."""

    def reject(name):
        raise ValueError(f"{path} holds a bare {name}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_undefined_metrics_are_null_with_the_reason():
    """A test set without a defective image: every metric but none of the file is NaN."""
    from skrd4ad.data import TensorSet
    from skrd4ad.results import json_text
    from skrd4ad.scoring import score_tensor_set

    ts = TensorSet(
        images=torch.zeros(3, 3, 8, 8, dtype=torch.uint8),
        masks=torch.zeros(3, 8, 8, dtype=torch.bool),
        labels=torch.zeros(3, dtype=torch.long),
        paths=["a", "b", "c"],
        defects=["good"] * 3,
    )
    with pytest.warns(UserWarning):
        out = score_tensor_set(torch.rand(3, 8, 8), torch.rand(3), ts)
    for key in METRIC_KEYS:
        assert out[key] is None
        assert "undefined" in out["absent"][key]
    assert "NaN" not in json_text({**out, "loss": float("nan")})


@pytest.mark.parametrize(
    ("backbone", "skip"),
    [(b, "sk") for b in BACKBONES] + [("resnet18", s) for s in SKIP_TOPOLOGIES if s != "sk"],
)
def test_load_model_restores_every_tensor(backbone, skip, tmp_path):
    """load_model builds on the meta device and fills the tensors from the checkpoint:
    every parameter and buffer must come back exactly, none left uninitialised."""
    torch.manual_seed(0)
    model = build_model(backbone, teacher_weights="none", skip=skip)
    for m in model.modules():  # running stats that differ from the fresh defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    save_checkpoint(tmp_path / "model.pt", model)
    loaded, _ = load_model(tmp_path / "model.pt")
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert got[name].device.type == "cpu", name
        assert torch.equal(got[name], tensor), name
    assert not loaded.training and loaded.skip == model.skip


def test_fp32_on_cuda_turns_tf32_off_and_restores_it():
    """The flags, not a device: CI has no GPU, and setting them needs none."""
    from skrd4ad.runtime import Runtime, resolve_precision

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    cuda = torch.device("cuda")
    with Runtime(cuda, "fp32").float32_numerics():
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    for device, precision in ((cuda, "bf16"), (torch.device("cpu"), "fp32")):
        with Runtime(device, precision).float32_numerics():
            assert (matmul.fp32_precision, conv.fp32_precision) == before
    assert resolve_precision(cuda, "auto") == "bf16"
    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert resolve_precision(torch.device("cpu"), "bf16") == "bf16"


def test_threshold_is_chosen_on_float32_scores_and_predict_uses_them(
    small_dataset, tmp_path, capsys
):
    """Trained in bf16: the recorded threshold is the F1-best one of the float32 scores,
    which predict computes by default; asking predict for bf16 says what that means."""
    from skrd4ad.data import category_tensors, load_category
    from skrd4ad.inference import Predictor, predict_maps
    from skrd4ad.predict import predict
    from skrd4ad.runtime import Runtime
    from skrd4ad.scoring import best_f1_threshold

    cfg = tiny_config(small_dataset, tmp_path / "run", epochs=1, precision="bf16")
    fit(cfg)
    state = read_checkpoint(tmp_path / "run" / "model.pt")
    assert state["threshold_precision"] == "fp32"
    _, val_set = category_tensors(
        load_category(small_dataset, "brick", "auto", seed=cfg.train.seed),
        cfg.train.image_size,
        cfg.train.val_fraction,
        cfg.train.seed,
    )
    model, _ = load_model(tmp_path / "run" / "model.pt")
    runtime = Runtime.create("cpu", "fp32", cfg.runtime.channels_last)
    model = runtime.setup(model)
    scores = {
        p: predict_maps(model, val_set.images, runtime.with_precision(p))[1]
        for p in ("fp32", "bf16")
    }
    assert not torch.allclose(scores["fp32"], scores["bf16"], atol=1e-4)
    assert state["threshold"] == pytest.approx(best_f1_threshold(scores["fp32"], val_set.labels))

    image = next((small_dataset / "brick" / "test" / "good").iterdir())
    predict(tmp_path / "run" / "model.pt", [image], tmp_path / "p", overlays=False)
    assert "warning" not in capsys.readouterr().err
    assert Predictor.from_checkpoint(tmp_path / "run" / "model.pt").precision == "bf16"
    predict(
        tmp_path / "run" / "model.pt", [image], tmp_path / "q", overlays=False, precision="bf16"
    )
    assert "threshold was chosen on fp32 scores" in capsys.readouterr().err


def test_resume_applies_a_changed_setting_and_records_it(small_dataset, tmp_path):
    """--lr on resume used to be ignored (the optimizer state held the old one) while the
    checkpoint recorded the new value."""
    fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0, lr=0.005))
    fit(tiny_config(small_dataset, tmp_path, epochs=4, val_fraction=0, lr=0.001, resume=True))
    state = read_checkpoint(tmp_path / "last.pt")
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.001]
    assert state["config"]["optim"]["lr"] == 0.001
    assert state["resumes"] == [{"epoch": 2, "changed": {"optim.lr": [0.005, 0.001]}}]
    assert read_checkpoint(tmp_path / "model.pt")["resumes"] == state["resumes"]


def test_resume_takes_this_run_s_optimizer_settings(small_dataset, tmp_path):
    """A last.pt written by an unfused Adam (before fused became the default) resumes
    fused: the loaded groups' implementation settings are replaced by this run's, as lr is."""
    fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0))
    state = read_checkpoint(tmp_path / "last.pt")
    assert [g["fused"] for g in state["optimizer"]["param_groups"]] == [True]
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None
    torch.save(state, tmp_path / "last.pt")
    fit(tiny_config(small_dataset, tmp_path, epochs=3, val_fraction=0, resume=True))
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 3
    assert [g["fused"] for g in state["optimizer"]["param_groups"]] == [True]


def test_resume_refuses_a_setting_that_changes_the_training_images(small_dataset, tmp_path):
    fit(tiny_config(small_dataset, tmp_path, epochs=2, val_fraction=0.25))
    with pytest.raises(CheckpointError, match="val_fraction=0.25, not 0.5"):
        fit(tiny_config(small_dataset, tmp_path, epochs=3, val_fraction=0.5, resume=True))


def test_a_run_folder_is_not_overwritten_without_overwrite(small_dataset, tmp_path):
    from skrd4ad.errors import UserError

    fit(tiny_config(small_dataset, tmp_path, epochs=2, select="best-val"))
    assert (tmp_path / "best.pt").is_file()
    before = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a training run.*--resume.*--overwrite"):
        fit(tiny_config(small_dataset, tmp_path, epochs=1, val_fraction=0))
    assert (tmp_path / "model.pt").read_bytes() == before
    fit(tiny_config(small_dataset, tmp_path, epochs=1, val_fraction=0, overwrite=True))
    assert not (tmp_path / "best.pt").exists()  # the old run's best.pt is gone with it
    assert read_checkpoint(tmp_path / "model.pt")["epoch"] == 1


def test_a_trailing_batch_of_one_image_trains(small_dataset, tmp_path):
    """9 training images in batches of 4 leave one: at 32 px its bottleneck features are
    1x1, on which BatchNorm cannot train; it joins the batch before."""
    from skrd4ad.train import batch_bounds

    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)] and batch_bounds(1, 4) == [(0, 1)]
    result = fit(tiny_config(small_dataset, tmp_path, image_size=32, batch_size=4, epochs=1))
    assert result.epochs_run == 1


def test_curve_images_name_their_area(tmp_path, monkeypatch):
    """The ROC and PRO curve figures are titled with the AUROC and AUPRO of metrics.json."""
    import numpy as np

    from skrd4ad import plots

    titles = {}

    def keep_title(fig, path):
        titles[path.name] = fig.axes[0].get_title()
        plots.plt.close(fig)

    monkeypatch.setattr(plots, "_save", keep_title)
    labels = np.array([0, 0, 1, 1])
    pro = (np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    plots.write_curves(tmp_path, np.array([0.1, 0.4, 0.35, 0.8]), labels, pro, 0.75, 0.123456)
    assert titles == {
        "roc_image.png": "image ROC: AUROC 0.7500",
        "pro_curve.png": "PRO curve: AUPRO (FPR <= 0.3) 0.1235",
    }
