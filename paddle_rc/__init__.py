"""paddle_rc: LLaVA-1.5 in PaddlePaddle with Recoverable Compression of visual tokens."""
import warnings

# Paddle warns about a C++ build cache at import; this package compiles nothing, and the noise would
# bury the one-line messages the tools print.
warnings.filterwarnings("ignore", message="No ccache found")

__version__ = "0.1.0"
