"""The Triton GPU kernel: every pane of a frame in one launch, one pass over the pixels it needs.

Each program handles BLOCK output pixels of one pane: it computes the pixel's two row and two
column taps in integer arithmetic (exact: ``src = ((2 o + 1) n - S) / (2 S)``, so the floor and
the clamp-to-edge are decided without rounding), gathers the 4 x 3 uint8 taps straight from the
captured frame (BGR, any strides; a grayscale frame is a channel stride of 0), blends them in
float32, reorders BGR->RGB, applies ``x * scale + shift`` and stores fp16 or fp32 NCHW directly into
the caller's buffer. No intermediate tensor, no host round trip.

triton and torch are imported lazily: the runtime never imports this module unless asked. On a
machine without a GPU, set ``TRITON_INTERPRET=1`` before triton is first imported and pass CPU
tensors: the same kernel runs in Triton's interpreter (a correctness check, not a speed one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .reference import PreprocessSpec, validate_rois

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_BLOCK = 256
DEFAULT_WARPS = 4


def _missing(package: str, purpose: str) -> ImportError:
    """The project's install-hint error, or a plain ImportError where kernels/ runs from a bare checkout."""
    try:
        from edge_thyroid.errors import MissingDependencyError
    except ImportError:
        return ImportError(f"{package} is not installed ({purpose} needs it): pip install 'edge-thyroid[gpu]'")
    return MissingDependencyError(package, "gpu", purpose)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise _missing("torch", "the Triton preprocessing kernel") from exc
    return torch


@functools.lru_cache(maxsize=None)
def _kernel() -> Any:
    """Build the jitted kernel on first use (so importing this module needs neither triton nor torch)."""
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:
        raise _missing("triton", "the Triton preprocessing kernel") from exc

    @triton.jit
    def preprocess_panes(
        frame_ptr, rois_ptr, out_ptr,
        stride_h, stride_w, stride_c,
        scale_r, scale_g, scale_b, shift_r, shift_g, shift_b,
        SIZE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pane = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < SIZE * SIZE
        oy = offs // SIZE
        ox = offs % SIZE
        x = tl.load(rois_ptr + pane * 4)
        y = tl.load(rois_ptr + pane * 4 + 1)
        w = tl.load(rois_ptr + pane * 4 + 2)
        h = tl.load(rois_ptr + pane * 4 + 3)
        # Half-pixel source coordinate times 2S, an exact integer; clamp below at 0.
        num_y = tl.maximum((2 * oy + 1) * h - SIZE, 0)
        num_x = tl.maximum((2 * ox + 1) * w - SIZE, 0)
        y0 = num_y // (2 * SIZE)
        x0 = num_x // (2 * SIZE)
        wy = (num_y - y0 * (2 * SIZE)).to(tl.float32) / (2 * SIZE)
        wx = (num_x - x0 * (2 * SIZE)).to(tl.float32) / (2 * SIZE)
        # Clamp above at the last row/column of the crop (not of the frame): weight 0.
        last_y = y0 >= h - 1
        last_x = x0 >= w - 1
        y0 = tl.where(last_y, h - 1, y0)
        x0 = tl.where(last_x, w - 1, x0)
        wy = tl.where(last_y, 0.0, wy)
        wx = tl.where(last_x, 0.0, wx)
        y1 = tl.minimum(y0 + 1, h - 1)
        x1 = tl.minimum(x0 + 1, w - 1)
        row0 = (y + y0).to(tl.int64) * stride_h
        row1 = (y + y1).to(tl.int64) * stride_h
        col0 = (x + x0).to(tl.int64) * stride_w
        col1 = (x + x1).to(tl.int64) * stride_w
        plane = SIZE * SIZE
        base = out_ptr + pane.to(tl.int64) * 3 * plane + offs
        for c in tl.static_range(3):
            channel = (2 - c) * stride_c  # output RGB channel c reads frame BGR channel 2 - c
            p00 = tl.load(frame_ptr + row0 + col0 + channel, mask=mask, other=0).to(tl.float32)
            p01 = tl.load(frame_ptr + row0 + col1 + channel, mask=mask, other=0).to(tl.float32)
            p10 = tl.load(frame_ptr + row1 + col0 + channel, mask=mask, other=0).to(tl.float32)
            p11 = tl.load(frame_ptr + row1 + col1 + channel, mask=mask, other=0).to(tl.float32)
            top = p00 + (p01 - p00) * wx
            bottom = p10 + (p11 - p10) * wx
            value = top + (bottom - top) * wy
            if c == 0:
                value = value * scale_r + shift_r
            elif c == 1:
                value = value * scale_g + shift_g
            else:
                value = value * scale_b + shift_b
            tl.store(base + c * plane, value.to(out_ptr.dtype.element_ty), mask=mask)

    return triton, preprocess_panes


def _frame_strides(frame: "torch.Tensor") -> tuple[int, int, int]:
    """(row, column, channel) element strides; a grayscale frame reads the same byte for all channels."""
    if frame.dim() == 2:
        return frame.stride(0), frame.stride(1), 0
    if frame.dim() == 3 and frame.shape[2] == 1:
        return frame.stride(0), frame.stride(1), 0
    if frame.dim() == 3 and frame.shape[2] == 3:
        return frame.stride(0), frame.stride(1), frame.stride(2)
    raise ValueError(f"frame must be HxW, HxWx1 or HxWx3, got shape {tuple(frame.shape)}")


def preprocess_triton(
    frame: "torch.Tensor",
    rois: "np.ndarray | Sequence[Sequence[int]] | torch.Tensor",
    spec: PreprocessSpec,
    out: "torch.Tensor",
    *,
    block: int = DEFAULT_BLOCK,
    num_warps: int = DEFAULT_WARPS,
) -> "torch.Tensor":
    """Write the panes of ``frame`` (uint8 tensor, HxWx3 BGR or HxW / HxWx1 grayscale, any strides)
    into ``out`` (contiguous fp16/fp32 tensor [N, 3, S, S] on the frame's device); returns ``out``.

    ``rois`` (x, y, w, h) are validated on the host. Pass an int32 [N, 4] tensor already on the
    device to skip the copy (it is then trusted: make it with :func:`device_rois`).
    """
    launcher(frame, rois, spec, out, block=block, num_warps=num_warps)()
    return out


def launcher(
    frame: "torch.Tensor",
    rois: "np.ndarray | Sequence[Sequence[int]] | torch.Tensor",
    spec: PreprocessSpec,
    out: "torch.Tensor",
    *,
    block: int = DEFAULT_BLOCK,
    num_warps: int = DEFAULT_WARPS,
) -> Callable[[], None]:
    """Validate everything once and return a no-argument function that launches the kernel on the
    current stream: for the hot loop (the frame and output buffers are reused, their contents
    change) and for capture into a CUDA graph."""
    torch = _import_torch()
    triton, kernel = _kernel()
    spec.validate()
    if not isinstance(frame, torch.Tensor) or frame.dtype != torch.uint8:
        raise ValueError(f"frame must be a uint8 torch tensor, got {getattr(frame, 'dtype', type(frame).__name__)}")
    stride_h, stride_w, stride_c = _frame_strides(frame)
    if isinstance(rois, torch.Tensor):
        roi_tensor = rois
        if roi_tensor.dtype != torch.int32 or roi_tensor.dim() != 2 or roi_tensor.shape[1] != 4 or roi_tensor.device != frame.device:
            raise ValueError(f"rois tensor must be int32 [N, 4] on {frame.device}, got {roi_tensor.dtype} "
                             f"{tuple(roi_tensor.shape)} on {roi_tensor.device}")
    else:
        roi_tensor = device_rois(rois, frame.shape[0], frame.shape[1], frame.device)
    size = spec.image_size
    count = roi_tensor.shape[0]
    expected = (count, 3, size, size)
    if (not isinstance(out, torch.Tensor) or tuple(out.shape) != expected or out.dtype not in (torch.float16, torch.float32)
            or not out.is_contiguous() or out.device != frame.device):
        got = f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}"
        raise ValueError(f"out must be a contiguous float16/float32 tensor of shape {expected} on {frame.device}, got {got}")
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).tolist()
    shift = (-mean / std).tolist()
    grid = (triton.cdiv(size * size, block), count)

    def launch() -> None:
        kernel[grid](frame, roi_tensor, out, stride_h, stride_w, stride_c, *scale, *shift,
                     SIZE=size, BLOCK=block, num_warps=num_warps)

    return launch


def device_rois(rois: "np.ndarray | Sequence[Sequence[int]]", height: int, width: int, device: Any) -> "torch.Tensor":
    """Validate ROIs against a ``height`` x ``width`` frame and copy them to ``device`` as int32 [N, 4]."""
    torch = _import_torch()
    boxes = validate_rois(rois, height, width)
    return torch.as_tensor(boxes.astype(np.int32), device=device)


def numpy_adapter(device: str = "cuda", block: int = DEFAULT_BLOCK):
    """The kernel in :func:`kernels.check.check_kernel`'s calling convention (NumPy in, NumPy out)."""
    torch = _import_torch()
    dtypes = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}

    def triton_impl(frame: np.ndarray, rois: np.ndarray, spec: PreprocessSpec, dtype: np.dtype | type) -> np.ndarray:
        if np.dtype(dtype) not in dtypes:
            raise ValueError(f"output dtype must be float32 or float16, got {np.dtype(dtype)}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8, got {frame.dtype}")
        device_frame = torch.from_numpy(np.ascontiguousarray(frame)).to(device)
        out = torch.empty((len(rois), 3, spec.image_size, spec.image_size), dtype=dtypes[np.dtype(dtype)], device=device)
        preprocess_triton(device_frame, rois, spec, out, block=block)
        return out.cpu().numpy()

    return triton_impl
