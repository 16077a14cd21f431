"""Anomaly maps and image scores, batched, on whatever device the features are on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMA = 4.0
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian weights (radius int(truncate * sigma + 0.5)), in float64."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    # scipy's 'reflect' repeats the edge sample (d c b a | a b c d | d c b a); torch's
    # F.pad 'reflect' does not, and fails when radius >= n. Indexing with the period-2n
    # fold gives scipy's borders for any radius.
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(
    maps: torch.Tensor, sigma: float = SIGMA, truncate: float = TRUNCATE
) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps matching scipy.ndimage.gaussian_filter
    (mode='reflect'), computed on the maps' device.

    Hand-written because torchvision's gaussian_blur pads with torch's 'reflect', which
    differs from scipy's at the border, and uses a different kernel radius.
    """
    if maps.dim() != 3:
        raise ValueError(f"expected maps shaped (N, H, W), got {tuple(maps.shape)}")
    n, h, w = maps.shape
    kernel = gaussian_kernel1d(sigma, truncate).to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.numel() - 1) // 2
    x = maps.unsqueeze(1)
    x = x.index_select(3, _reflect_index(w, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = x.index_select(2, _reflect_index(h, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def raw_anomaly_map(
    teacher: list[torch.Tensor], student: list[torch.Tensor], size: int | tuple[int, int]
) -> torch.Tensor:
    """Sum over levels of 1 - cosine over channels, each upsampled bilinearly
    (align_corners=True) to ``size``; shaped (N, H, W), float32."""
    if isinstance(size, int):
        size = (size, size)
    total = None
    for t, s in zip(teacher, student, strict=True):
        m = 1 - F.cosine_similarity(t.float(), s.float(), dim=1)
        m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=True)
        total = m if total is None else total + m
    return total.squeeze(1)


def anomaly_map(
    teacher: list[torch.Tensor],
    student: list[torch.Tensor],
    size: int | tuple[int, int],
    sigma: float = SIGMA,
) -> torch.Tensor:
    """The smoothed anomaly map, (N, H, W). ``sigma=0`` skips the smoothing."""
    raw = raw_anomaly_map(teacher, student, size)
    return gaussian_blur(raw, sigma) if sigma > 0 else raw


def image_score(maps: torch.Tensor) -> torch.Tensor:
    """The image score: the maximum of each smoothed map, (N,)."""
    return maps.flatten(1).amax(dim=1)
