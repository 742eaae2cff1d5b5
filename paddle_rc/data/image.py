"""LLaVA-1.5 image preprocessing: pad to square with the CLIP mean colour, bicubic resize, normalise."""
from __future__ import annotations

import io
import os
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from paddle_rc.errors import UserError


def load_image(source: Union[str, bytes, os.PathLike, Image.Image, np.ndarray]) -> Image.Image:
    """Open an image (path, bytes, PIL image, or uint8 array HxW / HxWx3 / HxWx4) upright and in RGB,
    or raise UserError."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        shape_ok = source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (3, 4))
        if source.dtype != np.uint8 or not shape_ok:
            raise UserError(f"an image array must be uint8 HxW, HxWx3 or HxWx4, got {source.dtype} "
                            f"{list(source.shape)}")
        img = Image.fromarray(source)
    else:
        name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else name)
            img.load()
        except FileNotFoundError:
            raise UserError(f"image not found: {name}") from None
        except Image.DecompressionBombError as e:
            # PIL's guard against images that decode to gigabytes; LLaVA sees 336 px anyway.
            raise UserError(f"image too large: {name}: {str(e).split(', could')[0]}; downscale it first") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot read image {name}: {e}") from None
    # Phone photos store rotation in EXIF; the model should see what a person sees.
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto white (as transformers' convert_rgb does)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def expand_to_square(img: Image.Image, fill: Sequence[int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), tuple(fill))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


class ImageProcessor:
    """Pixels as LLaVA-1.5 feeds them to CLIP (image_aspect_ratio='pad')."""

    def __init__(self, size: int = 336, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711), pad_to_square: bool = True):
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.pad_to_square = pad_to_square

    @classmethod
    def from_config(cls, config) -> "ImageProcessor":
        return cls(config.vision.image_size, config.image_mean, config.image_std,
                   config.image_aspect_ratio == "pad")

    def model_view(self, img: Image.Image) -> Image.Image:
        """The square image the tower sees (padded, resized): what the kept-token picture draws on."""
        img = to_rgb(img)
        if self.pad_to_square:
            img = expand_to_square(img, [int(m * 255) for m in self.mean])
        return resize_and_crop(img, self.size)

    def __call__(self, images) -> np.ndarray:
        """One image or a list -> float32 [B, 3, size, size]."""
        if isinstance(images, Image.Image):
            images = [images]
        out = []
        for img in images:
            arr = np.asarray(self.model_view(img), dtype=np.float32) / 255.0
            arr = (arr - self.mean) / self.std
            out.append(arr.transpose(2, 0, 1))
        return np.stack(out).astype(np.float32)


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """CLIP's resize (shortest edge to `size`, bicubic) and centre crop."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))
