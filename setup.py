from setuptools import find_packages, setup


def _reqs(path):
    with open(path, encoding="utf-8") as f:
        return [l.strip() for l in f if l.strip() and not l.startswith(("#", "-r"))]


setup(
    name="paddle_rc",
    version="0.1.0",
    description="LLaVA-1.5 in PaddlePaddle with Recoverable Compression of visual tokens",
    packages=find_packages(include=["paddle_rc", "paddle_rc.*"]),
    package_data={
        # The model trained here (paddle_rc/demo.py: synthvqa_checkpoint) ships inside the package.
        "paddle_rc": ["assets/synthvqa-demo/*.json", "assets/synthvqa-demo/*.md",
                      "assets/synthvqa-demo/*.safetensors", "assets/synthvqa-demo/tokenizer/*",
                      "assets/synthvqa-demo/clip_tokenizer/*",
                      # the C++ operators, compiled from these on first use (paddle_rc/native.py)
                      "csrc/*.cc", "csrc/*.h"],
    },
    # 3.10-3.13: the range .ci/check_wheels.py proves installable from wheels (Paddle 3.3.1 has no 3.14 build).
    python_requires=">=3.10,<3.14",
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt")},
)
