"""Image -> network input tensor, and the way back for coordinates.

Pure functions, numpy in / numpy out; nothing here knows about runtimes.

:func:`fit` resizes/pads the RGB image to the network's input size and
returns a :class:`Transform` that maps network-input pixel coordinates back
onto the original image. :func:`to_tensor` turns the fitted image into the
tensor (batch dim 1, layout, colour order, ``(pixel * scale - mean) / std``,
dtype). :func:`prepare` is both.

The target size is, in order of precedence: the ``target_hw`` argument (the
caller knows the loaded model's static input size), ``resize.height`` /
``resize.width``, then (in :func:`prepare`) the spatial dims of
``InputSpec.shape``. Mode ``none`` ignores it.

Resizing uses OpenCV's bilinear filter (``INTER_LINEAR``, the interpolation of
the common YOLO letterbox) on uint8 images; normalisation of uint8 images is a
per-channel 256-entry lookup table computed in float64, so the tensor holds
``(p * scale - mean) / std`` correctly rounded to float32, at the cost of a
table lookup per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from common.errors import ModelConfigError
from common.manifest import InputSpec, Resize


@dataclass(frozen=True)
class Transform:
    """Maps network-input pixel coords back to the original image: x_img = (x_in - pad_x) / scale_x."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def points_to_image(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) x, y in network-input pixels -> original-image pixels (float64)."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - (self.pad_x, self.pad_y)) / (self.scale_x, self.scale_y)

    def boxes_to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1 y1 x2 y2 in network-input pixels -> original-image pixels (float64)."""
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (..., 4), got shape {boxes.shape}")
        return (boxes - (self.pad_x, self.pad_y, self.pad_x, self.pad_y)) / (
            self.scale_x, self.scale_y, self.scale_x, self.scale_y)

    def then_scale(self, fx: float, fy: float) -> "Transform":
        """This transform followed by scaling image coordinates by (fx, fy):
        for a picture decoded at a reduced scale, back to its full size."""
        return Transform(self.scale_x / fx, self.scale_y / fy, self.pad_x, self.pad_y)

    def points_to_input(self, xy: np.ndarray) -> np.ndarray:
        """The forward map: original-image pixels -> network-input pixels (float64)."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy * (self.scale_x, self.scale_y) + (self.pad_x, self.pad_y)


IDENTITY = Transform(1.0, 1.0, 0.0, 0.0)


def _target(resize: Resize, target_hw: tuple[int | None, int | None] | None) -> tuple[int, int]:
    th, tw = target_hw if target_hw is not None else (None, None)
    th = th if th is not None else resize.height
    tw = tw if tw is not None else resize.width
    if th is None or tw is None:
        raise ModelConfigError([("$.input.resize", f"resize mode {resize.mode!r} needs the input height and width "
                                                   "(model.json resize.height/width, or a static model input)")])
    th, tw = int(th), int(tw)
    if th < 1 or tw < 1:
        raise ModelConfigError([("$.input.resize", f"input size must be positive, got {th}x{tw}")])
    return th, tw


def _pad_fill(image: np.ndarray, pad_value: float):
    """The pad value in the image's dtype (rounded and clipped for integer images)."""
    if image.dtype == np.uint8:
        return int(min(255, max(0, round(pad_value))))
    return pad_value


def _resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    if image.shape[0] == h and image.shape[1] == w:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def _pad(image: np.ndarray, top: int, bottom: int, left: int, right: int, value) -> np.ndarray:
    if not (top or bottom or left or right):
        return image
    h, w = image.shape[:2]
    shape = (h + top + bottom, w + left + right) + image.shape[2:]
    out = np.empty(shape, dtype=image.dtype)
    # fill only the borders, then copy the content once
    out[:top] = value
    out[top + h:] = value
    out[top:top + h, :left] = value
    out[top:top + h, left + w:] = value
    out[top:top + h, left:left + w] = image
    return out


def fit(image: np.ndarray, resize: Resize, target_hw: tuple[int, int] | None = None
        ) -> tuple[np.ndarray, Transform]:
    """Resize/pad ``image`` (H x W x C) per ``resize``; returns the fitted image and its Transform.

    letterbox: scale by r = min(Ht/H, Wt/W) to (round(W*r), round(H*r)), centre
    on a (Ht, Wt) canvas of ``pad_value`` (offsets floor((Wt-new_w)/2),
    floor((Ht-new_h)/2)); the Transform's scales are new_w/W and new_h/H, the
    sizes actually produced. stretch: resize to (Ht, Wt). none: no resize;
    pad right/bottom up to a multiple of ``multiple_of``. The input is never
    modified; it is returned as is when nothing needs doing.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be H x W x C, got shape {image.shape}")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"image has no pixels: {w}x{h}")
    fill = _pad_fill(image, resize.pad_value)

    if resize.mode == "none":
        m = max(1, int(resize.multiple_of))
        ph, pw = -(-h // m) * m, -(-w // m) * m
        return _pad(image, 0, ph - h, 0, pw - w, fill), IDENTITY

    th, tw = _target(resize, target_hw)
    if resize.mode == "stretch":
        return _resize(image, tw, th), Transform(tw / w, th / h, 0.0, 0.0)
    if resize.mode != "letterbox":
        raise ModelConfigError([("$.input.resize.mode", f"unknown resize mode {resize.mode!r}")])

    r = min(th / h, tw / w)
    new_w = max(1, min(tw, round(w * r)))
    new_h = max(1, min(th, round(h * r)))
    pad_x = (tw - new_w) // 2
    pad_y = (th - new_h) // 2
    resized = _resize(image, new_w, new_h)
    out = _pad(resized, pad_y, th - new_h - pad_y, pad_x, tw - new_w - pad_x, fill)
    return out, Transform(new_w / w, new_h / h, float(pad_x), float(pad_y))


def _spec_channels(spec: InputSpec) -> int | None:
    """The static channel count of ``spec.shape`` (4-D), else None."""
    shape = spec.shape
    if not shape or len(shape) != 4:
        return None
    return shape[1] if spec.layout == "NCHW" else shape[3]


def _to_grey(image: np.ndarray) -> np.ndarray:
    """H x W x 1 luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) of an RGB(A) image."""
    if image.dtype in (np.uint8, np.uint16, np.float32) and image.shape[2] in (3, 4):
        code = cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(image), code)[:, :, None]
    grey = image[:, :, :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return grey.astype(image.dtype)[:, :, None]


def _per_channel(values: tuple[float, ...], name: str, channels: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.repeat(arr, channels)
    if channels == 1:  # a grey input: model.json lists 3 values (usually equal); the first applies
        return arr[:1]
    if arr.size != channels:
        raise ModelConfigError([(f"$.input.{name}", f"needs 1 or {channels} values, got {arr.size}")])
    return arr


def _is_identity(spec: InputSpec) -> bool:
    return spec.scale == 1.0 and all(m == 0.0 for m in spec.mean) and all(s == 1.0 for s in spec.std)


def _reorder(image: np.ndarray, order: list[int]) -> np.ndarray:
    """``image[:, :, order]`` for an R<->B swap; OpenCV's swap is several times faster than numpy's."""
    c = image.shape[2]
    if c in (3, 4) and image.dtype in (np.uint8, np.uint16, np.float32) and order[:3] == [2, 1, 0]:
        code = cv2.COLOR_RGB2BGR if c == 3 else cv2.COLOR_RGBA2BGRA
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    return image[:, :, order]


def _normalize_uint8(image: np.ndarray, order: list[int], scale: float, mean: np.ndarray, std: np.ndarray,
                     nchw: bool) -> np.ndarray:
    """float32 (1, C, H, W) or (1, H, W, C) tensor of uint8 ``image`` through per-channel LUTs."""
    image = np.ascontiguousarray(image)  # cv2 wants contiguous input; a no-op for fitted images
    h, w, c = image.shape
    ramp = np.arange(256, dtype=np.float64)
    luts = [((ramp * scale - mean[i]) / std[i]).astype(np.float32) for i in range(c)]
    if nchw:
        out = np.empty((1, c, h, w), dtype=np.float32)
        if c <= 4:
            planes = cv2.split(image)
            for i, src in enumerate(order):
                cv2.LUT(planes[src], luts[i], dst=out[0, i])
        else:
            for i, src in enumerate(order):
                np.take(luts[i], image[:, :, src], out=out[0, i])
        return out
    if c in (3, 4):
        src = image if order == list(range(c)) else _reorder(image, order)
        table = np.stack(luts, axis=-1).reshape(1, 256, c)
        return cv2.LUT(src, table).reshape(1, h, w, c)
    out = np.empty((1, h, w, c), dtype=np.float32)
    for i, src in enumerate(order):
        out[0, :, :, i] = luts[i][image[:, :, src]]
    return out


def to_tensor(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The network input for a fitted H x W x C image: batch dim 1, ``spec.layout``, ``spec.color_order``,
    ``(pixel * scale - mean) / std`` per tensor channel (mean/std are in the tensor's channel order),
    cast to ``spec.dtype``. C-contiguous.

    When ``spec.shape`` has a static channel dimension of 1 the RGB image is
    turned into grey (BT.601 luma) first; the first mean/std value applies.

    Integer dtypes with the default normalisation (scale 1, mean 0, std 1)
    get the pixels as they are; with a normalisation the values are rounded
    and clipped to the dtype's range.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be H x W x C, got shape {image.shape}")
    h, w, c = image.shape
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        raise ModelConfigError([("$.input.dtype", f"unknown dtype {spec.dtype!r}")]) from None
    if spec.layout not in ("NCHW", "NHWC"):
        raise ModelConfigError([("$.input.layout", f"unknown layout {spec.layout!r}")])
    nchw = spec.layout == "NCHW"
    if _spec_channels(spec) == 1 and c != 1:
        image = _to_grey(image)
        h, w, c = image.shape
    order = list(range(c))
    if spec.color_order == "BGR" and c >= 3:  # a grey input has no colour order
        order[:3] = [2, 1, 0]

    if _is_identity(spec) and np.can_cast(image.dtype, dtype, "safe"):
        # plain cast of the pixels: just reorder channels/layout
        view = image if order == list(range(c)) else _reorder(image, order)
        view = view.transpose(2, 0, 1) if nchw else view
        return np.ascontiguousarray(view[None], dtype=dtype)

    mean = _per_channel(spec.mean, "mean", c)
    std = _per_channel(spec.std, "std", c)
    if np.any(std == 0):
        raise ModelConfigError([("$.input.std", "std values must not be 0")])

    if image.dtype == np.uint8:
        values = _normalize_uint8(image, order, float(spec.scale), mean, std, nchw)
    else:
        arr = image[:, :, order].astype(np.float64)
        arr = (arr * spec.scale - mean) / std
        arr = arr.transpose(2, 0, 1) if nchw else arr
        values = np.ascontiguousarray(arr[None], dtype=np.float32)

    if dtype == np.float32:
        return values
    if dtype.kind == "f":
        return values.astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    raise ModelConfigError([("$.input.dtype", f"unsupported input dtype {spec.dtype!r}")])


def _spec_hw(spec: InputSpec) -> tuple[int | None, int | None] | None:
    shape = spec.shape
    if not shape or len(shape) != 4:
        return None
    return (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])


def prepare(image: np.ndarray, spec: InputSpec, target_hw: tuple[int, int] | None = None
            ) -> tuple[np.ndarray, Transform]:
    """fit + to_tensor. Without ``target_hw`` and resize.height/width, ``spec.shape`` gives the size."""
    if target_hw is None and (spec.resize.height is None or spec.resize.width is None):
        target_hw = _spec_hw(spec)
    fitted, transform = fit(image, spec.resize, target_hw)
    return to_tensor(fitted, spec), transform
