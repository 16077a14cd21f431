"""The model-specific steps of training SK-RD4AD, which the generic loop
(:mod:`skrd4ad.train`) calls by name, as Lightning's hooks: ``configure_optimizers``,
``training_step`` and ``validation_step``. Benchmarks time these same steps."""

from __future__ import annotations

from typing import Any

import torch

from ...config import Config
from ...data import TensorSet
from ...runtime import Runtime
from ...scoring import score_tensor_set
from .loss import SKRD4ADLoss
from .torch_model import SKRD4AD, Student, build_model

PARTS = ("teacher", "bottleneck", "decoder")


class ReverseDistillation:
    """The model (frozen teacher, trainable bottleneck and decoder) on its runtime."""

    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        torch.manual_seed(cfg.train.seed)
        m = cfg.model
        self.model: SKRD4AD = runtime.setup(build_model(m.backbone, m.teacher_weights, m.skip))
        student = runtime.wrap(Student(self.model.bottleneck, self.model.decoder, self.model.skip))
        self.student = torch.compile(student) if cfg.runtime.compile else student
        self.loss = SKRD4ADLoss(cfg.loss.alpha, cfg.loss.beta, cfg.loss.gamma)
        self.runtime = runtime
        self.eval_batch_size = cfg.runtime.eval_batch_size

    def configure_optimizers(self, cfg: Config) -> torch.optim.Optimizer:
        """Adam on the bottleneck and decoder (the teacher is frozen), as published; fused,
        one kernel over every parameter, where torch's default on a CPU loops over the
        parameters' tensors op by op (BENCHMARKS.md, "The parts of a CPU step")."""
        params = [*self.model.bottleneck.parameters(), *self.model.decoder.parameters()]
        return torch.optim.Adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas, fused=True)

    def train(self) -> None:
        """Training mode for the trainable parts; the teacher stays in eval mode."""
        self.model.bottleneck.train()
        self.model.decoder.train()

    def training_step(
        self, images: torch.Tensor | None = None, features: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and its terms for one batch: uint8 ``images``, or the teacher's
        ``features`` of them when they are cached."""
        with self.runtime.autocast():
            if features is None:
                features = self.model.teacher(self.runtime.to_input(images))
            student = self.student(features)
        return self.loss(features, student)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``training_step``, then one optimiser step on its loss: the whole training step,
        which the loop and the benchmarks call."""
        loss, terms = self.training_step(images, features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss, terms

    def predict(
        self, images: torch.Tensor, runtime: Runtime | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps and image scores of uint8 ``images`` (on ``runtime``'s precision,
        by default the training one)."""
        from ...inference import predict_maps

        return predict_maps(self.model, images, runtime or self.runtime, self.eval_batch_size)

    def validation_step(
        self, val_set: TensorSet, runtime: Runtime | None = None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """Metrics on the (synthetic-defect) validation split, and its image scores."""
        maps, scores = self.predict(val_set.images, runtime)
        return score_tensor_set(maps, scores, val_set), scores

    def load(self, state: dict[str, Any]) -> None:
        for part in PARTS:
            getattr(self.model, part).load_state_dict(state[part])
