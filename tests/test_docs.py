"""The project's docs say what the code does: every method documented, no reference to a missing
page or section, help texts as written, defaults as the README states them."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHM = os.path.join(ROOT, "docs", "algorithm.md")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _project_files():
    for folder in ("paddle_rc", "tools", "configs", "tests", "docs"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            for name in filenames:
                if name.endswith((".py", ".yml", ".md")):
                    yield os.path.join(dirpath, name)
    yield os.path.join(ROOT, "README.md")


def test_every_registered_method_is_described():
    from paddle_rc.compression import available_methods

    rows = set(re.findall(r"^\| `([^`]+)` \|", _read(ALGORITHM), flags=re.M))
    missing = [m for m in available_methods() if m not in rows]
    assert not missing, f"docs/algorithm.md §8 does not describe {missing}"


def test_doc_references_resolve():
    headings = set(re.findall(r"^## (§\d+)", _read(ALGORITHM), flags=re.M))
    assert {f"§{i}" for i in range(1, 10)} <= headings
    me = os.path.abspath(__file__)
    for path in _project_files():
        if os.path.abspath(path) == me:
            continue
        text = _read(path)
        assert "rc-algorithm.md" not in text, f"{path} refers to a page that is not in the repository"
        for doc in re.findall(r"(?<!LLaVA's `)docs/([\w.-]+\.md)", text):  # not LLaVA's own docs
            assert os.path.isfile(os.path.join(ROOT, "docs", doc)), f"{path}: docs/{doc} does not exist"
        for ref in re.findall(r"algorithm\.md((?:[ ,]*§\d+(?:-§\d+)?)+)", text):
            for sec in re.findall(r"§\d+", ref):
                assert sec in headings, f"{path}: docs/algorithm.md has no {sec}"


def test_infer_help_keeps_the_line_continuation():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "infer.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0
    assert '"What is on the sofa?" \\\n        --method rc' in out.stdout


def test_eval_default_output_is_the_readme_folder_and_git_ignored():
    from paddle_rc.eval.cli import DEFAULTS

    out = DEFAULTS["out"]
    assert f"--out {out}" in _read(os.path.join(ROOT, "README.md"))
    top = out.split("/")[0]
    assert f"/{top}/" in _read(os.path.join(ROOT, ".gitignore")).split()
