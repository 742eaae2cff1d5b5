"""paddle_rc: LLaVA-1.5 in PaddlePaddle with Recoverable Compression of visual tokens."""
import warnings

from paddle_rc import runtime as _runtime

# Paddle warns about a C++ build cache at import; the one-line messages the tools print would drown in it.
warnings.filterwarnings("ignore", message="No ccache found")

# Before Paddle computes anything: all physical cores, and MKL's fast path on AMD (see runtime.py).
_runtime.configure()

__version__ = "0.1.0"
