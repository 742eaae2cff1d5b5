"""Check that every supported Python can install this repo's pins from wheels alone.

    python .ci/check_wheels.py [3.10 3.11 ...]     # default: every 3.X that setup.py's python_requires allows

For each version, the requirement files are read with their environment markers evaluated for that
version (pip's --python-version only picks wheel tags: it evaluates markers for the interpreter running
it), and pip resolves the result with --only-binary=:all: --dry-run, dependencies included.
Exit 1 names each version and the pin that would need a source build or has no release for it.
"""
import os
import re
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["requirements.txt", "requirements-test.txt"]


def read_requirements(path, seen=None):
    """Requirement lines of a file, following `-r other.txt` includes once each."""
    seen = set() if seen is None else seen
    path = os.path.abspath(path)
    if path in seen:
        return []
    seen.add(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if not line:
                continue
            if line.startswith("-r"):
                out += read_requirements(os.path.join(os.path.dirname(path), line[2:].strip()), seen)
            else:
                out.append(line)
    return out


def pins_for(version, lines):
    env = {"python_version": version, "python_full_version": version + ".0"}
    kept = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            kept.append(f"{req.name}{req.specifier}")
    return kept


def check(version, lines):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins_for(version, lines)) + "\n")
        tmp = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                               "--only-binary=:all:", "--python-version", version, "--quiet", "-r", tmp],
                              capture_output=True, text=True)
    finally:
        os.unlink(tmp)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ERROR")]
    return proc.returncode == 0, errors


def supported_versions():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        spec = SpecifierSet(re.search(r'python_requires="([^"]+)"', f.read()).group(1))
    return [f"3.{m}" for m in range(6, 30) if f"3.{m}.0" in spec]


def main(argv):
    versions = argv or supported_versions()
    lines = []
    for name in FILES:
        lines += [l for l in read_requirements(os.path.join(ROOT, name)) if l not in lines]
    failed = False
    for v in versions:
        ok, errors = check(v, lines)
        print(f"python {v}: {'all wheels' if ok else 'FAILED'}")
        for e in errors:
            print(f"  {e}")
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
