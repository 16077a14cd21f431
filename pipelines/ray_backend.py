"""The TorchTrainer backend config of a category: Ray's ``TorchConfig`` for DDP, and a
torch-free one for the usual single worker.

Why a second one: each category's Ray Train controller unpickles its trainer's backend
config, and ``ray.train.torch.config`` imports torch at module level, which the controller
never uses: 2.3 of its 4.7 CPU-s per category, measured on the 2-core quick start
(BENCHMARKS.md). This module imports no torch, so unpickling ``SingleWorkerConfig`` in the
controller stays cheap.
"""

from __future__ import annotations

import dataclasses

from ray.train.backend import BackendConfig


@dataclasses.dataclass
class SingleWorkerConfig(BackendConfig):
    """Backend of a category trained by one worker: no torch.distributed process group.

    One worker needs none (skrd4ad.train runs without DDP then, as the CLI does), and with
    one worker per device ``cuda:0`` is already the worker's GPU (Ray sets
    CUDA_VISIBLE_DEVICES, fractional GPUs included), so Ray's ``TorchConfigContextManager``
    (``torch.cuda.set_device``) has nothing to do either. The base class's backend does
    nothing at start and shutdown.

    ``backend`` exists because TorchTrainer fills it in (gloo or nccl); nothing reads it.
    """

    backend: str | None = None


def torch_config(num_workers: int) -> BackendConfig:
    """``torch_config`` for a category's TorchTrainer: Ray's ``TorchConfig`` (a process
    group, for data-parallel training) when it has several workers, else
    :class:`SingleWorkerConfig`."""
    if num_workers > 1:
        from ray.train.torch import TorchConfig

        return TorchConfig()
    return SingleWorkerConfig()
