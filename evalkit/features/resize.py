"""TF1 legacy bilinear resize, as performed by the `ResizeBilinear` node of the 2015 Inception graph.

The reference evaluator (``evaluations/evaluator.py`` at ``evalkit.REFERENCE_COMMIT``) feeds raw [0, 255] float32 images into `ExpandDims:0`, so they pass
through the graph's `ResizeBilinear` (align_corners=False, no half_pixel_centers attribute, so the
legacy TF1 convention): ``src = dst * (in / out)`` with no half-pixel offsets, no antialiasing.
This is NOT ``torch.nn.functional.interpolate(mode="bilinear")``, which uses half-pixel centres.
"""

from __future__ import annotations

import torch


def _axis_table(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (lo, hi) and interpolation weights along one axis, computed in float32 like TF."""
    # scale and source positions in float32, exactly as the TF kernel computes them
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    floor = torch.floor(src)
    lo = floor.to(torch.int64).clamp(min=0)
    hi = torch.ceil(src).to(torch.int64).clamp(max=in_size - 1)
    frac = src - floor
    return lo.to(device), hi.to(device), frac.to(device)


def tf1_resize_bilinear(images: torch.Tensor, size: int | tuple[int, int] = 299,
                        channels_last: bool = True) -> torch.Tensor:
    """Resize float images with TensorFlow 1's legacy bilinear rule (align_corners=False, no half-pixel centres).

    Args:
        images: float32 tensor, ``[N, H, W, C]`` when ``channels_last`` (the graph's NHWC layout),
            else ``[N, C, H, W]``. Values are used as given (the Inception graph resizes raw 0..255 values).
        size: output size, an int for a square output or ``(out_h, out_w)``.
        channels_last: layout of ``images`` (and of the result).

    Returns:
        float32 tensor of the same layout with spatial size ``size``. Per axis,
        ``src = float32(i) * float32(in) / float32(out)``, ``lo = floor(src)``,
        ``hi = min(ceil(src), in - 1)``; rows are interpolated along the width first, then along the
        height, in float32 (the order of TF's kernel). Output pixel (0, 0) is input pixel (0, 0).
    """
    if images.ndim != 4:
        raise ValueError(f"tf1_resize_bilinear expects a 4-d image tensor, got shape {tuple(images.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    x = images if images.dtype == torch.float32 else images.to(torch.float32)
    h_axis, w_axis = (1, 2) if channels_last else (2, 3)
    in_h, in_w = x.shape[h_axis], x.shape[w_axis]
    if (in_h, in_w) == (out_h, out_w):
        return x
    lo_x, hi_x, fx = _axis_table(in_w, out_w, x.device)
    lo_y, hi_y, fy = _axis_table(in_h, out_h, x.device)
    # broadcast shapes for the weights along W and H in the chosen layout
    wshape = [1, 1, 1, 1]
    wshape[w_axis] = out_w
    hshape = [1, 1, 1, 1]
    hshape[h_axis] = out_h
    fx = fx.view(wshape)
    fy = fy.view(hshape)
    # interpolate along the width: left + (right - left) * frac_x
    left = x.index_select(w_axis, lo_x)
    right = x.index_select(w_axis, hi_x)
    rows = left + (right - left) * fx
    # then along the height: top + (bottom - top) * frac_y
    top = rows.index_select(h_axis, lo_y)
    bottom = rows.index_select(h_axis, hi_y)
    return top + (bottom - top) * fy
