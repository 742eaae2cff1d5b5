from setuptools import find_packages, setup


def _reqs(path):
    with open(path, encoding="utf-8") as f:
        return [l.strip() for l in f if l.strip() and not l.startswith(("#", "-r"))]


setup(
    name="paddle_rc",
    version="0.1.0",
    description="LLaVA-1.5 in PaddlePaddle with Recoverable Compression of visual tokens",
    packages=find_packages(include=["paddle_rc", "paddle_rc.*"]),
    # 3.10-3.13: the range .ci/check_wheels.py proves installable from wheels (Paddle 3.3.1 has no 3.14 build).
    python_requires=">=3.10,<3.14",
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt")},
)
