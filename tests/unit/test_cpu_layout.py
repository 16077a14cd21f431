"""CPU training in float32 runs the bottleneck in NCHW and the rest channels_last; the
loss and gradients are the channels_last model's, and inference is left as it was."""

from __future__ import annotations

import pickle

import pytest
import torch

from skrd4ad import build_model
from skrd4ad.config import Config
from skrd4ad.models.reverse_distillation.components.cpu_layout import weights_layout
from skrd4ad.models.reverse_distillation.hooks import ReverseDistillation
from skrd4ad.runtime import Runtime

CL, NCHW = torch.channels_last, torch.contiguous_format


def training(precision: str = "fp32", channels_last: bool = True) -> ReverseDistillation:
    cfg = Config().with_values({
        "model.backbone": "resnet18", "model.teacher_weights": "none", "runtime.device": "cpu",
        "runtime.precision": precision, "runtime.channels_last": channels_last,
        "train.image_size": 64, "train.seed": 0,
    })  # fmt: skip
    module = ReverseDistillation(cfg, Runtime.create("cpu", precision, channels_last))
    module.train()
    return module


def layouts_seen(model, images: torch.Tensor) -> dict[str, bool]:
    """Whether the teacher's and the bottleneck's first convolutions got a channels_last
    input, and whether the bottleneck and the decoder's last convolution returned one."""
    seen: dict[str, bool] = {}

    def record(name):
        def hook(_m, args):
            seen.setdefault(name, args[0].is_contiguous(memory_format=CL))

        return hook

    def record_out(name):
        def hook(_m, _args, out):
            seen.setdefault(name, out.is_contiguous(memory_format=CL))

        return hook

    convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [
        model.teacher.conv1.register_forward_pre_hook(record("teacher")),
        model.bottleneck.conv1.register_forward_pre_hook(record("bottleneck")),
        model.bottleneck.register_forward_hook(record_out("bottleneck out")),
        convs[-1].register_forward_hook(record_out("decoder out")),
    ]
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_cpu_fp32_training_runs_the_bottleneck_in_nchw_and_the_rest_channels_last():
    module = training()
    model = module.model
    assert weights_layout(model.bottleneck) == NCHW and weights_layout(model.decoder) == CL
    x = module.runtime.to_input(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert layouts_seen(model, x) == {
        "teacher": True, "bottleneck": False, "bottleneck out": False, "decoder out": True,
    }  # fmt: skip
    # A cached feature (channels_last, as the feature cache stores it) is converted too.
    feats = [f.contiguous(memory_format=CL) for f in model.teacher(x)]
    got = []
    handle = model.bottleneck.conv1.register_forward_pre_hook(
        lambda _m, args: got.append(args[0].is_contiguous())
    )
    module.training_step(features=feats)
    handle.remove()
    assert got == [True]
    pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize(
    ("what", "runtime"),
    [
        ("inference", Runtime.create("cpu", "fp32")),
        ("bf16", Runtime.create("cpu", "bf16")),
        ("NCHW asked for", Runtime.create("cpu", "fp32", channels_last=False)),
    ],
)
def test_inference_bf16_and_a_chosen_layout_are_left_alone(what, runtime):
    model = runtime.setup(build_model("resnet18", "none", "sk"), inference_only=what == "inference")
    expected = CL if runtime.channels_last else NCHW
    assert weights_layout(model.bottleneck) == weights_layout(model.decoder) == expected


def test_loss_and_gradients_equal_the_channels_last_model_s_and_follow_the_weights():
    mixed = training()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)

    def loss_and_grads(module):
        module.model.zero_grad(set_to_none=True)
        loss, _ = module.training_step(images)
        loss.backward()
        return loss, [p.grad for p in module.model.bottleneck.parameters()]

    loss, grads = loss_and_grads(mixed)
    assert all(g.is_contiguous() for g in grads)
    # The same module moved back: its hook now hands it channels_last inputs.
    mixed.model.bottleneck.to(memory_format=CL)
    assert weights_layout(mixed.model.bottleneck) == CL
    x = mixed.runtime.to_input(images)
    assert layouts_seen(mixed.model, x)["bottleneck"] is True
    cl_loss, cl_grads = loss_and_grads(mixed)
    torch.testing.assert_close(loss, cl_loss, rtol=1e-5, atol=1e-6)
    for g, cl_g in zip(grads, cl_grads, strict=True):
        torch.testing.assert_close(g, cl_g, rtol=1e-4, atol=1e-5)


def test_the_layout_survives_optimiser_steps_and_a_loaded_state():
    module = training()
    optimizer = module.configure_optimizers(Config())
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    module.optimizer_step(optimizer, images=images)
    state = {"bottleneck": training(channels_last=False).model.bottleneck.state_dict()}
    module.model.bottleneck.load_state_dict(state["bottleneck"])
    module.optimizer_step(optimizer, images=images)
    assert weights_layout(module.model.bottleneck) == NCHW
    assert all(p.is_contiguous() for p in module.model.bottleneck.parameters())
