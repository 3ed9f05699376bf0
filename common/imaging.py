"""Decoding request images into RGB arrays.

:func:`decode_image` turns what CVAT (or a test) sends into an ``H x W x 3``
``uint8`` RGB array, C-contiguous and writable:

- input: raw image bytes, or base64 text (``str`` or ``bytes``; standard or
  URL-safe alphabet, padding optional, whitespace/newlines ignored, an
  optional ``data:image/...;base64,`` prefix);
- formats: only those a CVAT frame can be (:data:`ACCEPTED_FORMATS`: JPEG
  and its multi-picture MPO, PNG, BMP, TIFF, WEBP, GIF, PBM/PGM/PPM). Icon
  and container formats (ICO, ICNS, EPS, PSD, ...) are refused before any
  decoding: some decode a picture inside ``Image.open``, or hold a picture
  bigger than the size they declare, which would slip past the pixel limit;
- the first frame of multi-frame files;
- EXIF orientation applied, so boxes land on the image as CVAT shows it. The
  orientation counts only when stored as an integer 1..8 (what OpenCV and
  browsers honour too); a text or fractional value is ignored;
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

Memory per worker. A request holds the decoded picture (Pillow keeps 4 bytes
a pixel for RGB, RGBA, I and F; 1-2 for grey and palette) and the 3-byte-a-
pixel result: about 7 bytes a pixel, 8 for a moment while an EXIF rotation
holds two Pillow copies. Conversions run in strips of rows, so no further
full-size copy is made (no float64 image, no ``tobytes`` copy). Each Nuclio
worker is a process that may hold that much at once, so the pixel limit
``RUNNER_MAX_IMAGE_PIXELS`` defaults to 2**26 (67,108,864 pixels, e.g.
8192 x 8192): about 0.45 GiB per worker at most. The former 2**28 let a
small compressed file cost 1.8 GiB and more per worker, enough for a few
concurrent requests to get a function container killed.

The limit is checked on the declared size *before* decoding, and again by
Pillow's own decompression-bomb guard, which this module sets to the same
limit (``Image.MAX_IMAGE_PIXELS``): Pillow refuses, while opening, anything
over twice that, including sizes that only show up inside a file. Its
warning for images between the limit and twice the limit is silenced: they
are refused here with a clearer error.

Errors are :class:`~common.errors.InvalidImage` with a short message (under
200 characters; the input is never echoed) that stands on its own. Only a
malformed ``RUNNER_MAX_IMAGE_PIXELS`` raises :class:`ValueError` (a
configuration error; the runner checks it at start).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from common.errors import InvalidImage

log = logging.getLogger(__name__)

# 8192 x 8192: the memory per worker stays well under a GiB (see the module doc).
DEFAULT_MAX_IMAGE_PIXELS = 2**26

# Pillow format IDs of what a CVAT frame can be: what CVAT sends for image
# tasks (the uploaded file) and video tasks (JPEG or PNG). "PPM" covers PBM,
# PGM, PPM and PNM; "JPEG" also opens MPO (the multi-picture JPEG of some
# cameras: Pillow has no separate opener for it).
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")

# Rows are converted to RGB in strips of about this many pixels, so that a
# conversion never holds a second full-size copy of the picture.
_STRIP_PIXELS = 1 << 18  # smaller strips stay in cache: faster than a whole-image copy

# Longest message text taken from a library exception.
_DETAIL_CHARS = 100

_WHITESPACE = b" \t\r\n\v\f"
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
# Base64 text (either alphabet), padding and whitespace only.
_BASE64_RE = re.compile(rb"[A-Za-z0-9+/\-_=\s]+")
_DATA_URL_RE = re.compile(rb"^\s*data:([^,]*?),", re.IGNORECASE)
_PILLOW_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


def max_image_pixels() -> int:
    """The pixel limit: env ``RUNNER_MAX_IMAGE_PIXELS`` (positive int) or 2**26.

    Raises :class:`ValueError` when the variable is set to anything else.
    """
    raw = os.environ.get("RUNNER_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"RUNNER_MAX_IMAGE_PIXELS must be a positive integer, got {raw[:40]!r}") from None
    if value < 1:
        raise ValueError(f"RUNNER_MAX_IMAGE_PIXELS must be a positive integer, got {raw[:40]!r}")
    return value


def _configured_limit() -> int:
    try:
        return max_image_pixels()
    except ValueError:  # the runner reports it at start; importing must not fail
        return DEFAULT_MAX_IMAGE_PIXELS


# Pillow's own guard, set to our limit (it warns above it, raises above twice it).
Image.MAX_IMAGE_PIXELS = _configured_limit()
# The warning precedes our own, clearer refusal of the same image.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@contextmanager
def _pillow_limit(limit: int) -> Iterator[None]:
    """Pillow's guard at ``limit`` for one decode (a no-op at the configured limit).

    Only calls passing another ``max_pixels`` change the global; the explicit
    size checks in :func:`decode_image_for` do not depend on it.
    """
    previous = Image.MAX_IMAGE_PIXELS
    if previous == limit:
        yield
        return
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _detail(exc: BaseException) -> str:
    """``Type: message`` of a library exception, cut short (it may quote the data)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


def _too_large(limit: int, size: str | None) -> InvalidImage:
    pixels = f"{size} pixels, more" if size else "more"
    return InvalidImage(f"the image is too large: {pixels} than the limit of {limit} pixels "
                        f"(RUNNER_MAX_IMAGE_PIXELS)")


def _bomb(exc: Exception, limit: int) -> InvalidImage:
    """Pillow's decompression-bomb error (or warning raised as an error) as ours."""
    found = _PILLOW_PIXELS_RE.search(str(exc))
    return _too_large(limit, found.group(1) if found else None)


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
        raise InvalidImage(f"the image is not valid base64 ({str(exc)[:_DETAIL_CHARS]})") from None


def _to_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    """The encoded image file bytes, whatever the transport wrapped them in."""
    if data is None:
        raise InvalidImage("no image data")
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidImage("the image string is neither base64 nor a base64 data URL "
                               "(it holds non-ASCII characters)") from None
        text_only = True
    elif isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data)
        except (TypeError, ValueError, BufferError) as exc:  # e.g. a non-contiguous memoryview
            raise InvalidImage(f"the image bytes cannot be read ({_detail(exc)})") from None
        text_only = False
    else:
        raise InvalidImage(f"the image must be bytes or a base64 string, not {type(data).__name__[:40]}")
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


def _strips(width: int, height: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``[y0, y1)`` of about :data:`_STRIP_PIXELS` pixels each."""
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)


def _float_peak(img: Image.Image) -> float:
    """The largest finite value of an ``I`` or ``F`` image (0 when there is none)."""
    width, height = img.size
    peak = 0.0
    for y0, y1 in _strips(width, height):
        values = np.asarray(img.crop((0, y0, width, y1)))
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                values = values[finite]
        if values.size:
            peak = max(peak, float(values.max()))
    return peak


def _grey_strip(values: np.ndarray, mode: str, scale: float | None) -> np.ndarray:
    """A strip of a high-depth grey mode as uint8 (see the module doc), in float32."""
    if mode.startswith("I;16"):
        return (values.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    work = np.array(values, dtype=np.float32)  # a strip-sized, writable copy
    if mode == "F":
        np.nan_to_num(work, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if scale is not None:
        work *= np.float32(scale)
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return work.astype(np.uint8)


def _rgb_strip(strip: Image.Image, mode: str, scale: float | None) -> np.ndarray:
    """One strip as ``rows x W x 3`` RGB, ``rows x W x 4`` RGB + alpha (or
    padding) to drop, or ``rows x W`` grey."""
    if mode in ("RGB", "RGBA", "RGBX"):
        return np.asarray(strip)
    if mode in ("P", "PA"):
        # via RGBA: keeps palette colours of transparent entries, no Pillow warning
        return np.asarray(strip.convert("RGBA"))
    if mode == "L":
        return np.asarray(strip)
    if mode in ("LA", "La"):
        return np.asarray(strip)[:, :, 0]
    if mode == "1":
        return np.asarray(strip.convert("L"))
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _grey_strip(np.asarray(strip), mode, scale)
    return np.asarray(strip.convert("RGB"))


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """The loaded image as a new ``H x W x 3`` uint8 array, built strip by strip.

    Besides the result, only strip-sized temporaries are allocated.
    """
    mode = img.mode
    width, height = img.size
    scale = None
    if mode in ("I", "F"):
        peak = _float_peak(img)
        if peak > 255.0:
            scale = 255.0 / peak
    out = np.empty((height, width, 3), np.uint8)
    try:
        for y0, y1 in _strips(width, height):
            part = _rgb_strip(img.crop((0, y0, width, y1)), mode, scale)
            dst = out[y0:y1]
            if part.ndim == 2:  # grey: replicated to the 3 channels
                part = cv2.cvtColor(np.ascontiguousarray(part), cv2.COLOR_GRAY2RGB, dst=dst)
            elif part.shape[2] == 4:  # the 4th channel is dropped, not composited
                part = cv2.cvtColor(np.ascontiguousarray(part), cv2.COLOR_RGBA2RGB, dst=dst)
            if part is not dst:
                dst[...] = part
    except (ValueError, OSError, TypeError) as exc:
        raise InvalidImage(f"unsupported image mode {mode[:20]!r} ({_detail(exc)})") from None
    return out


def decode_image(data: bytes | str, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image (raw bytes or base64) into an H x W x 3 uint8 RGB array.

    ``max_pixels`` overrides ``RUNNER_MAX_IMAGE_PIXELS``. Raises
    :class:`~common.errors.InvalidImage` for empty, non-image, truncated,
    oversized data or a format not in :data:`ACCEPTED_FORMATS`.
    """
    return decode_image_for(data, max_pixels=max_pixels)[0]


# EXIF orientation -> the transposition that shows the picture upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
    ``(width, height)``, so coordinates can be mapped back to it; its
    orientation is always the array's.
    """
    raw = _to_bytes(data)
    limit = max_pixels if max_pixels is not None else max_image_pixels()
    with _pillow_limit(limit):
        img = _open(raw, limit)
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise InvalidImage(f"the image has no pixels ({width}x{height})")
            if width * height > limit:
                raise _too_large(limit, f"{width}x{height} = {width * height}")
            if img.format == "TIFF":
                # libtiff allocates a whole tile (or strip) whatever the picture's
                # size: a 64x64 TIFF may declare one 26720x26720 tile.
                tag = img.tag_v2
                block_w, block_h = tag.get(322, width), tag.get(323, tag.get(278, height))
                if isinstance(block_w, int) and isinstance(block_h, int) and block_w * block_h > limit:
                    raise _too_large(limit, f"a TIFF tile or strip of {block_w}x{block_h} = {block_w * block_h}")
            if img.format == "JPEG" and img.mode in ("RGB", "L"):
                decoded = _decode_jpeg_for(raw, width, height, _orientation(img), needed)
                if decoded is not None:
                    return decoded
            return _decode_with_pillow(img, limit)


def _open(raw: bytes, limit: int) -> Image.Image:
    """Pillow's lazy open (header only), restricted to :data:`ACCEPTED_FORMATS`."""
    try:
        return Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(f"the data is not an image in a known format (accepted: {', '.join(ACCEPTED_FORMATS)}; "
                           f"{len(raw)} bytes starting {raw[:8]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limit) from None
    except Exception as exc:  # Pillow plugins raise many types on broken headers
        raise InvalidImage(f"the image header cannot be read ({_detail(exc)})") from None


def _decode_with_pillow(img: Image.Image, limit: int) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limit) from None
    except Exception as exc:  # truncated data, corrupt stream, decoder errors
        raise InvalidImage(f"the {img.format or 'image'} data is truncated or corrupt ({_detail(exc)})") from None
    width, height = img.size
    if width * height > limit:  # a plugin that only learnt the real size while decoding
        raise _too_large(limit, f"{width}x{height} = {width * height}")
    method = _TRANSPOSE.get(_orientation(img))
    if method is not None:
        try:
            upright = img.transpose(method)
        except Exception as exc:
            raise InvalidImage(f"the image cannot be rotated upright ({_detail(exc)})") from None
        img.close()  # releases the stored-orientation pixels before the conversion
        img = upright
    pixels = _to_rgb_array(img)
    return pixels, (pixels.shape[1], pixels.shape[0])


def _reduction(width: int, height: int, transposed: bool,
               needed: Callable[[int, int], tuple[int, int]] | None) -> int:
    """The largest DCT scale-down (8, 4, 2 or 1) still giving ``needed`` pixels."""
    if needed is None:
        return 1
    want_w, want_h = needed(*((height, width) if transposed else (width, height)))
    if transposed:
        want_w, want_h = want_h, want_w
    return next((f for f in (8, 4, 2) if -(-width // f) >= want_w and -(-height // f) >= want_h), 1)


def _decode_jpeg_for(raw: bytes, width: int, height: int, orientation: int,
                     needed: Callable[[int, int], tuple[int, int]] | None,
                     ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """OpenCV's (possibly reduced) decode and the upright full size, or None
    to fall back to Pillow. OpenCV applies the EXIF orientation itself; when
    its pixels say otherwise than ``orientation``, the pixels win."""
    transposed = orientation in _TRANSPOSED
    for _ in range(2):
        reduce = _reduction(width, height, transposed, needed)
        pixels = _decode_jpeg(raw, reduce)
        if pixels is None:
            return None
        rows, cols = pixels.shape[:2]
        stored = (-(-width // reduce), -(-height // reduce))
        if (cols, rows) == stored:
            rotated = False
        elif (cols, rows) == stored[::-1]:
            rotated = True
        else:
            log.warning("OpenCV decoded a %dx%d JPEG at 1/%d as %dx%d; decoding it with Pillow",
                        width, height, reduce, cols, rows)
            return None
        if rotated == transposed or width == height:
            return pixels, ((height, width) if rotated else (width, height))
        log.warning("the JPEG's EXIF orientation %d %s width and height, OpenCV's pixels do not agree; "
                    "trusting the pixels", orientation, "swaps" if transposed else "keeps")
        transposed = rotated  # decode again at the scale that fits the true orientation
        pixels = None
    return None  # still disagreeing (cannot happen): Pillow decides


_JPEG_FLAGS = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
               8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_jpeg(raw: bytes, reduce: int) -> np.ndarray | None:
    """Plain RGB/grey JPEGs through OpenCV's libjpeg-turbo: faster than Pillow's
    path, and able to decode at 1/2, 1/4 or 1/8 scale in the DCT. OpenCV
    applies the EXIF orientation itself. None when it cannot decode the data
    (Pillow then reports why)."""
    try:
        pixels = cv2.imdecode(np.frombuffer(raw, np.uint8), _JPEG_FLAGS[reduce])
    except cv2.error as exc:
        log.warning("OpenCV cannot decode the JPEG (%s); trying Pillow", _detail(exc))
        return None
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    if reduce > 1:  # the reduced modes give BGR
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)
    return pixels


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation when it is a plain integer 1..8, else 1.

    A text ("6") or rational (6/1) value is ignored, as OpenCV ignores it:
    the size reported and the pixels must agree.
    """
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: ignore the orientation, keep the image
        return 1
    return value if type(value) is int and 1 <= value <= 8 else 1


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an H x W x 3 (or H x W) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
