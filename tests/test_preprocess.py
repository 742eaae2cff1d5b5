"""Pixels equal transformers' CLIPImageProcessor after LLaVA's pad-to-square, for every image mode."""
import io

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessor

from paddle_rc.data.image import ImageProcessor, load_image
from paddle_rc.errors import UserError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _llava_expand2square(img, background):
    # LLaVA's own helper, restated here as the reference (centre paste on a mean-colour canvas).
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _hf_convert_rgb(img):
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _pattern(size, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], -1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _make(mode, size, seed):
    rgb = _pattern(size, seed)
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        img = rgb.convert("RGBA")
        alpha = np.full(size[::-1], 255, np.uint8)
        alpha[: size[1] // 3] = 0
        alpha[:, : size[0] // 4] = 128
        img.putalpha(Image.fromarray(alpha))
        return img
    if mode == "P":
        return rgb.convert("P", palette=Image.ADAPTIVE, colors=32)
    return rgb.convert(mode)  # L, CMYK, LA


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK"])
@pytest.mark.parametrize("size", [(56, 56), (97, 41), (30, 75), (512, 300)])
def test_pixels_equal_transformers(mode, size):
    target = 56
    img = _make(mode, size, seed=size[0] * 131 + size[1] + len(mode))
    ref_proc = CLIPImageProcessor(size={"shortest_edge": target}, crop_size={"height": target, "width": target},
                                  image_mean=list(MEAN), image_std=list(STD), resample=3)
    rgb = _hf_convert_rgb(img)
    square = _llava_expand2square(rgb, tuple(int(m * 255) for m in MEAN))
    ref = ref_proc(square, return_tensors="np")["pixel_values"]
    ours = ImageProcessor(size=target, mean=MEAN, std=STD)(img)
    assert ours.shape == ref.shape == (1, 3, target, target)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_exif_orientation_is_applied(tmp_path):
    img = _pattern((40, 20), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    loaded = load_image(str(path))
    assert loaded.size == (20, 40)
    assert loaded.mode == "RGB"


def test_load_image_errors(tmp_path):
    with pytest.raises(UserError, match="image not found"):
        load_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(str(bad))
    buf = io.BytesIO()
    _pattern((10, 10), 1).save(buf, format="PNG")
    assert load_image(buf.getvalue()).size == (10, 10)
