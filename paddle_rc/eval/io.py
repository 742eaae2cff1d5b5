"""Crash-safe files: append-only answer logs and atomically replaced summaries."""
import json
import os
import tempfile


def read_jsonl_tolerant(path):
    """Records of a JSON-lines file and the byte length of its intact prefix.

    A run killed mid-write can leave a last line without its newline or with half a JSON
    object; that line is dropped (the item is simply asked again). A damaged line anywhere
    else is not something a kill produces, so it is reported in ``bad_lines`` instead of being
    silently ignored.
    """
    records, bad_lines, good_end = [], [], 0
    if not os.path.exists(path):
        return records, bad_lines, 0, False
    with open(path, "rb") as f:
        data = f.read()
    pos, n, torn = 0, 0, False
    while pos < len(data):
        nl = data.find(b"\n", pos)
        n += 1
        if nl < 0:
            chunk, end, complete = data[pos:], len(data), False
        else:
            chunk, end, complete = data[pos:nl], nl + 1, True
        rec = None
        if chunk.strip():
            try:
                rec = json.loads(chunk.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                rec = None
        if not complete:
            # No newline: the writer never finished this line, whether or not it parses.
            torn = bool(chunk.strip())
            break
        if chunk.strip() and rec is None:
            if end >= len(data):
                torn = True
                break
            bad_lines.append(n)
        elif rec is not None:
            records.append(rec)
        good_end = end
        pos = end
    return records, bad_lines, good_end, torn


def repair_jsonl(path):
    """Cut a torn last line off so that new appends start on a fresh line."""
    records, bad, good_end, torn = read_jsonl_tolerant(path)
    if torn:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return records, bad, torn


class JsonlAppender:
    """One JSON object per line; each line is flushed and fsynced before ``write`` returns, so
    a kill loses at most the line being written."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record):
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self):
        if self._f and not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    """Write to a temporary file in the same folder, fsync, then os.replace over ``path``:
    readers see the old or the new file, never half of one. The file gets the mode a plain
    open() would give it (0644 under the usual umask), not mkstemp's private 0600."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
