"""One module per method; importing this package registers them all."""
from paddle_rc.compression.methods import (  # noqa: F401
    cls_topk, divprune, none, prumerge, random, rc, visionzip)
