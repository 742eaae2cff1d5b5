"""Where the tools' images come from: files, a folder of them, or (only when allowed) http(s) URLs."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import List, Optional, Sequence

from PIL import Image

from paddle_rc.errors import UserError

MAX_DOWNLOAD_BYTES = 50 * 2 ** 20
TIMEOUT_S = 30


def is_url(source) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def image_extensions() -> set:
    """File extensions PIL can open here (".jpg", ".png", ".webp", ...)."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def list_image_dir(directory: str) -> List[str]:
    """The image files directly inside `directory`, sorted by name."""
    if not os.path.isdir(directory):
        raise UserError(f"image folder not found: {directory}")
    exts = image_extensions()
    files = sorted(os.path.join(directory, n) for n in os.listdir(directory)
                   if os.path.splitext(n)[1].lower() in exts and os.path.isfile(os.path.join(directory, n)))
    if not files:
        raise UserError(f"no image files in {directory} (looked for {', '.join(sorted(exts)[:6])}, ...)")
    return files


def collect_sources(image: Optional[str], images: Optional[Sequence[str]], image_dir: Optional[str],
                    allow_download: bool) -> List[str]:
    """The images a run asked for, in order; an empty list means the built-in demo image."""
    given = [name for name, v in (("--image", image), ("--images", images), ("--image-dir", image_dir)) if v]
    if len(given) > 1:
        raise UserError(f"give one of --image, --images, --image-dir (got {' and '.join(given)})")
    sources = [image] if image else list(images or []) or (list_image_dir(image_dir) if image_dir else [])
    for s in sources:
        if is_url(s) and not allow_download:
            raise UserError(f"{s} is a URL: pass --allow-download to fetch it (off by default, so that "
                            "nothing is downloaded unasked)")
    return sources


def read_source(source: str) -> bytes | str:
    """A URL's bytes (size-capped), or the path itself for load_image to open."""
    if not is_url(source):
        return source
    request = urllib.request.Request(source, headers={"User-Agent": "paddle_rc"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download {source}: {' '.join(str(reason).split())}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise UserError(f"{source} is larger than {MAX_DOWNLOAD_BYTES // 2 ** 20} MB; download it yourself")
    return data
