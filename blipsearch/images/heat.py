"""A heat map drawn over a photo (:func:`overlay`), without torch: the command line draws the
map a running server computed (see :mod:`blipsearch.models.explain`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

# Dark blue -> teal -> yellow -> red, the usual Grad-CAM ramp: cold areas stay dark
# over a photo and the hottest patch stands out in red.
_RAMP = np.array(
    [
        [0.00, 30, 20, 100],
        [0.25, 30, 110, 190],
        [0.50, 40, 185, 150],
        [0.70, 200, 220, 50],
        [0.85, 250, 150, 30],
        [1.00, 215, 30, 30],
    ],
    np.float32,
)
COLORMAP: npt.NDArray[np.uint8] = np.stack(
    [np.interp(np.linspace(0, 1, 256), _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=1
).round().astype(np.uint8)
"""256 RGB entries indexed by heat 0..255."""


COLD_SHARE = 0.2  # of ``alpha``, where the map is coldest


def overlay(image: Image.Image, heat: npt.NDArray[np.floating], alpha: float = 0.5) -> Image.Image:
    """``heat`` (a :func:`heat_map`) coloured and blended over ``image``; RGB, the image's size.

    The model sees the photo squashed to a square, so the patch grid is stretched
    back over the whole photo, whatever its aspect ratio. Bicubic upsampling keeps
    the patch grid's blocks from reading as edges in the photo; the heat is scaled
    from its minimum to its maximum so that the hottest patch always gets the hottest
    colour, and a uniform map (nothing to point at) leaves the photo as it is.
    """
    heat = np.asarray(heat, np.float32)
    if heat.ndim != 2 or heat.size == 0 or not np.isfinite(heat).all():
        raise ValueError(f"overlay needs a finite 2-D heat map, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in 0..1, got {alpha}")
    rgb = image.convert("RGB")
    smooth = np.asarray(Image.fromarray(heat).resize(rgb.size, Image.Resampling.BICUBIC))
    smooth = np.clip(smooth, 0.0, None)  # bicubic overshoots below zero next to hot patches
    if float(heat.max() - heat.min()) <= 1e-6 * max(float(heat.max()), 1e-12):
        return rgb.copy()
    low, span = float(smooth.min()), float(smooth.max() - smooth.min())
    levels = (np.clip((smooth - low) / span, 0.0, 1.0) * 255).round().astype(np.uint8)
    colour = COLORMAP[levels].astype(np.float32)
    # Cold areas keep most of the photo (a fifth of the colour), hot ones take ``alpha`` of it: the
    # photo stays readable around the places the map points at.
    weight = alpha * (COLD_SHARE + (1 - COLD_SHARE) * levels[..., None].astype(np.float32) / 255)
    blended = (1 - weight) * np.asarray(rgb, np.float32) + weight * colour
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
