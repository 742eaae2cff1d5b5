"""paddle_rc: LLaVA-1.5 in PaddlePaddle with Recoverable Compression of visual tokens."""

__version__ = "0.1.0"
