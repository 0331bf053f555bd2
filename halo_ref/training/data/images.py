"""One image file, read the way training reads it: decoded by Pillow, its alpha composited on
black, and brought to the training size by one rule. The folder loader and `halo-ref predict`
both read images through here, so that a predicted image is prepared like a training image.

The rules:

- orientation: the EXIF orientation tag is applied (a phone photograph stands as it was shot);
- grey or colour: an image is grey when Pillow reads it as grey (modes 1, L, LA, I, I;16, F)
  or as a palette of greys; a dataset whose images are all grey stays one-channel, otherwise
  every image is RGB (a grey image's level repeated in R, G and B; colour to grey, when a grey
  model is given a colour image, is Pillow's ITU-R 601-2 luma);
- transparency: composited on black (each channel times alpha / 255, rounded), so a transparent
  pixel is black whatever colour it stores;
- 16-bit grey: scaled to 8 bits (v / 257, rounded);
- size (`RESIZE_RULE`): an image of the training size is used as it is; any other is scaled,
  bilinear and antialiased, by the smallest factor that makes it cover the training size, and
  the central part of that size is cut out (equal margins on both sides of the longer axis).

Reading problems raise `BadImage`, a one-line HaloRefError naming the file: not an image
Pillow can read, or a corrupt or truncated one.
"""

from __future__ import annotations

import io
import math

import numpy as np

from ..._checks import HaloRefError

RESIZE_RULE = "cover, then centre crop (bilinear)"
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class BadImage(HaloRefError):
    """A file that cannot be read as an image (its message names the file)."""


def pillow():
    """Pillow's Image and ImageOps modules, imported when images are first read."""
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise HaloRefError("reading images needs Pillow: pip install pillow") from None
    return Image, ImageOps


def pillow_version() -> str:
    import PIL

    return PIL.__version__


def open_image(data: bytes, name: str):
    """Pillow's lazy view of an image file's bytes (header read, pixels not yet decoded)."""
    Image, _ = pillow()
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:  # no format Pillow knows matches its first bytes
        raise BadImage(f"{name} is not an image Pillow can read") from None
    except Exception as exc:  # a known format whose header is broken
        raise BadImage(f"{name} is corrupt or truncated ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def header(data: bytes, name: str) -> tuple[tuple[int, int], bool]:
    """((height, width) as the image stands after its EXIF orientation, whether it is grey),
    read from the header without decoding the pixels."""
    im = open_image(data, name)
    w, h = im.size
    try:
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap the axes
    except Exception:  # a broken EXIF block: the pixels may still be fine
        turned = False
    return ((w, h) if turned else (h, w)), _is_grey(im)


def _is_grey(im) -> bool:
    if im.mode in GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        palette = im.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
        return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())
    return False


def cover_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image of size `hw` scaled by the smallest factor that covers
    `target` (each side rounded up, so the crop always fits)."""
    (h, w), (H, W) = hw, target
    scale = max(H / h, W / w)
    return max(H, math.ceil(h * scale - 1e-9)), max(W, math.ceil(w * scale - 1e-9))


def read_image(data: bytes, name: str, *, channels: int, size: tuple[int, int]) -> np.ndarray:
    """The image file's bytes -> uint8 (H, W, channels) at `size` = (H, W), by the module's
    rules. channels: 1 (grey) or 3 (RGB)."""
    Image, ImageOps = pillow()
    im = open_image(data, name)
    try:
        if im.format == "JPEG" and size[0] == size[1] and size != (im.height, im.width):
            # the JPEG decoder may shrink by 1/2, 1/4 or 1/8 while the result still covers the
            # square target, whichever way the image is turned (fast for photographs; training
            # and predict both read images here, so both see the same pixels)
            im.draft(im.mode, _shorter_side(im, size[0]))
        im = ImageOps.exif_transpose(im)
        im = _eight_bit(im, channels)
        if (im.height, im.width) != tuple(size):
            H, W = size
            ch, cw = cover_size((im.height, im.width), size)
            top, left = (ch - H) // 2, (cw - W) // 2
            im = im.resize((cw, ch), Image.Resampling.BILINEAR)
            im = im.crop((left, top, left + W, top + H))
        pixels = np.asarray(im, dtype=np.uint8)
    except HaloRefError:
        raise
    except Exception as exc:  # truncated data, a broken chunk, a decompression bomb, ...
        raise BadImage(f"{name} is corrupt or truncated ({_first_line(exc)})") from None
    return pixels.reshape(size[0], size[1], channels)  # H, W -> H, W, 1 for grey


def _shorter_side(im, side: int) -> tuple[int, int]:
    """(width, height) of `im` scaled so that its shorter side is `side` (rounded up)."""
    w, h = im.size
    return (side, math.ceil(h * side / w)) if w < h else (math.ceil(w * side / h), side)


def _eight_bit(im, channels: int):
    """A Pillow image in mode L (channels 1) or RGB (channels 3), alpha composited on black."""
    Image, _ = pillow()
    if im.mode in SIXTEEN_BIT:
        v = np.asarray(im, dtype=np.float64)  # H, W
        im = Image.fromarray(np.clip(np.rint(v / 257), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)  # H, W, 4
        rgb = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0))  # alpha over black
        im = Image.fromarray(rgb.astype(np.uint8), "RGB")
    return im.convert("L" if channels == 1 else "RGB")
