"""Cost model (flops.py) and timing helpers for baseline-vs-compressed comparisons."""
