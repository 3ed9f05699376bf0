"""Decoding request images into RGB arrays.

:func:`decode_image` turns what CVAT (or a test) sends into an ``H x W x 3``
``uint8`` RGB array, C-contiguous and writable:

- input: raw image bytes, or base64 text (``str`` or ``bytes``; standard or
  URL-safe alphabet, padding optional, whitespace/newlines ignored, an
  optional ``data:image/...;base64,`` prefix);
- any format Pillow reads; the first frame of multi-frame files;
- EXIF orientation applied (``ImageOps.exif_transpose``), so boxes land on
  the image as CVAT shows it;
- alpha is dropped, not composited: the RGB under a transparent pixel is
  kept (CVAT displays the RGB channels);
- mode conversions: ``L``/``LA``/``1`` -> grey replicated to 3 channels;
  ``P``/``PA`` (palette, with or without transparency) -> palette colours;
  ``RGBA``/``RGBX``/``RGBa``/``CMYK``/``YCbCr``/``LAB``/``HSV`` -> Pillow's RGB
  conversion (alpha dropped);
  16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) -> the high byte
  (``value >> 8``), i.e. the full 0..65535 range mapped linearly to 0..255;
  32-bit ``I`` and float ``F`` -> when the largest value is <= 255 the values
  are taken as 8-bit and clipped to 0..255 (negatives -> 0, floats rounded);
  otherwise they are scaled by ``255 / max`` (negatives -> 0, NaN -> 0), so
  the brightest pixel becomes 255.

Errors are :class:`~common.errors.InvalidImage` with a message that stands on
its own. A decompression-bomb guard rejects images with more pixels than
``RUNNER_MAX_IMAGE_PIXELS`` (default 2**28) *before* decoding them. This
module owns Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``): it is
disabled here because the guard above replaces it with a configurable limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re

from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import InvalidImage

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 2**28

# The pixel-count guard is ours (see max_image_pixels); Pillow's fixed one would
# reject images between its 2 * 89.5 Mpx and our limit, or warn below it.
Image.MAX_IMAGE_PIXELS = None

_WHITESPACE = b" \t\r\n\v\f"
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
# Base64 text (either alphabet), padding and whitespace only.
_BASE64_RE = re.compile(rb"[A-Za-z0-9+/\-_=\s]+")
_DATA_URL_RE = re.compile(rb"^\s*data:([^,]*?),", re.IGNORECASE)


def max_image_pixels() -> int:
    """The pixel limit: env ``RUNNER_MAX_IMAGE_PIXELS`` (positive int) or 2**28."""
    raw = os.environ.get("RUNNER_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"RUNNER_MAX_IMAGE_PIXELS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"RUNNER_MAX_IMAGE_PIXELS must be a positive integer, got {raw!r}")
    return value


def _b64decode(text: bytes) -> bytes:
    """Decode base64 in either alphabet, padding optional, whitespace ignored."""
    try:
        return base64.b64decode(text, validate=True)  # what CVAT sends: strict, padded, one line
    except (binascii.Error, ValueError):
        pass
    text = text.translate(None, _WHITESPACE).translate(_URLSAFE_TO_STD).rstrip(b"=")
    if len(text) % 4 == 1:
        raise InvalidImage("the image is not valid base64 (its length is impossible for base64)")
    text += b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"the image is not valid base64 ({exc})") from None


def _to_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    """The encoded image file bytes, whatever the transport wrapped them in."""
    if data is None:
        raise InvalidImage("no image data")
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidImage("the image string is neither base64 nor a base64 data URL") from None
        text_only = True
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        text_only = False
    else:
        raise InvalidImage(f"the image must be bytes or a base64 string, not {type(data).__name__}")
    if not data.strip():
        raise InvalidImage("the image is empty")

    match = _DATA_URL_RE.match(data[:512])
    if match:
        if not match.group(1).lower().rstrip().endswith(b";base64"):
            raise InvalidImage("only base64 data URLs are supported (the data URL has no ';base64')")
        decoded = _b64decode(data[match.end():])
    elif text_only:
        decoded = _b64decode(data)
    elif _BASE64_RE.fullmatch(data):
        # Raw image files never consist of base64 characters only (their
        # signatures hold bytes outside the alphabet), so this is base64.
        decoded = _b64decode(data)
    else:
        return data
    if not decoded:
        raise InvalidImage("the image is empty (base64 decodes to no bytes)")
    return decoded


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 2-D array from a high-depth grey mode to uint8 (see the module doc)."""
    if mode.startswith("I;16"):
        return (values.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max()) if values.size else 0.0
    if peak > 255.0:
        values = values * (255.0 / peak)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.array(img)
    if mode in ("P", "PA"):
        # via RGBA: keeps palette colours of transparent entries, no Pillow warning
        return np.ascontiguousarray(np.array(img.convert("RGBA"))[:, :, :3])
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _grey_to_uint8(np.asarray(img), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("L", "1", "LA", "La"):
        grey = np.asarray(img.getchannel(0) if mode in ("LA", "La") else img.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        return np.array(img.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise InvalidImage(f"unsupported image mode {mode!r} ({exc})") from None


def decode_image(data: bytes | str, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image (raw bytes or base64) into an H x W x 3 uint8 RGB array.

    ``max_pixels`` overrides ``RUNNER_MAX_IMAGE_PIXELS``. Raises
    :class:`~common.errors.InvalidImage` for empty, non-image, truncated or
    oversized data.
    """
    return decode_image_for(data, max_pixels=max_pixels)[0]


# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


def decode_image_for(data: bytes | str, needed: Callable[[int, int], tuple[int, int]] | None = None, *,
                     max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`decode_image`, decoding no more pixels than the model needs.

    ``needed(width, height)`` gives, for the upright picture's size, the size
    it will be resized to. A JPEG is then decoded by its DCT at 1/2, 1/4 or
    1/8 scale when that still leaves at least that many pixels (libjpeg's
    scaled decoding: several times faster than a full decode, and a proper
    area filter). Returns the RGB array and the upright picture's full
    ``(width, height)``, so coordinates can be mapped back to it.
    """
    raw = _to_bytes(data)
    limit = max_pixels if max_pixels is not None else max_image_pixels()
    try:
        img = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise InvalidImage(f"the data is not an image in a known format ({len(raw)} bytes, "
                           f"starting {raw[:8]!r})") from None
    except Exception as exc:  # Pillow plugins raise many types on broken headers
        raise InvalidImage(f"the image header cannot be read: {type(exc).__name__}: {exc}") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise InvalidImage(f"the image has no pixels ({width}x{height})")
        if width * height > limit:
            raise InvalidImage(f"the image is too large: {width}x{height} = {width * height} pixels, "
                               f"more than the limit of {limit} pixels (RUNNER_MAX_IMAGE_PIXELS)")
        transposed = _orientation(img) in _TRANSPOSED
        full = (height, width) if transposed else (width, height)
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            reduce = 1
            if needed is not None:
                want_w, want_h = needed(*full)
                if transposed:
                    want_w, want_h = want_h, want_w
                reduce = next((f for f in (8, 4, 2) if -(-width // f) >= want_w and -(-height // f) >= want_h), 1)
            pixels = _decode_jpeg(raw, reduce)
            if pixels is not None:
                return pixels, full
        try:
            img.load()
        except Exception as exc:  # truncated data, corrupt stream, decoder errors
            raise InvalidImage(f"the {img.format or 'image'} data is truncated or corrupt "
                               f"({type(exc).__name__}: {exc})") from None
        try:
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to do
        except Exception as exc:  # a broken EXIF block must not lose the image
            log.warning("ignoring unreadable EXIF orientation: %s", exc)
        return _to_rgb_array(img), full


_JPEG_FLAGS = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
               8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_jpeg(raw: bytes, reduce: int) -> np.ndarray | None:
    """Plain RGB/grey JPEGs through OpenCV's libjpeg-turbo: faster than Pillow's
    path, and able to decode at 1/2, 1/4 or 1/8 scale in the DCT. OpenCV
    applies the EXIF orientation itself. None when it cannot decode the data
    (Pillow then reports why)."""
    pixels = cv2.imdecode(np.frombuffer(raw, np.uint8), _JPEG_FLAGS[reduce])
    if pixels is None:
        return None
    if reduce > 1:  # the reduced modes give BGR
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: exif_transpose will log and skip it too
        return 1


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an H x W x 3 (or H x W) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
