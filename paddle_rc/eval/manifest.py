"""Run manifests: what produced an answer file, so that answers are never reused across setups.

A manifest records the model's identity (checksums of its files), the compression method with
its budget and resolved options, the conversation template, the generation settings, the
answer-file layout and the paddle_rc version. The runner compares it with the one beside an
answer file before it appends a single answer (runner.check_manifest).
"""
import hashlib
import os

# Weight files are hashed in three 4 MiB windows plus their size: a 7B checkpoint is checked
# in well under a second and two different checkpoints still never collide in practice.
SAMPLE = 4 << 20
FULL_HASH_BELOW = 3 * SAMPLE


def file_checksum(path):
    """sha256 of the whole file when small, else of its size and first/middle/last 4 MiB."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < FULL_HASH_BELOW:
            h.update(f.read())
            return "sha256:" + h.hexdigest()
        h.update(str(size).encode())
        for offset in (0, size // 2 - SAMPLE // 2, size - SAMPLE):
            f.seek(offset)
            h.update(f.read(SAMPLE))
    return "sha256-sampled:" + h.hexdigest()


def directory_identity(directory):
    """{relative path: checksum} of every regular file under ``directory`` (config, weights,
    tokenizers, an export's manifest and graphs), and one digest over all of them."""
    files = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            if os.path.isfile(full):
                files[os.path.relpath(full, directory).replace(os.sep, "/")] = file_checksum(full)
    digest = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(files.items())).encode())
    return {"digest": digest.hexdigest(), "files": files}


def model_identity(model_dir=None, deploy_dir=None):
    """Identity of the model a run uses: an exported deployment, a converted checkpoint, or the
    built-in demo model (neither given; paddle_rc.demo.default_model)."""
    if deploy_dir:
        kind, directory = "deploy", deploy_dir
    elif model_dir:
        kind, directory = "checkpoint", model_dir
    else:
        from paddle_rc.demo import default_model
        kind, directory = "demo", default_model()
    ident = directory_identity(directory)
    return {"kind": kind, "name": os.path.basename(os.path.normpath(directory)),
            "digest": ident["digest"], "files": ident["files"]}


def run_manifest(*, identity, method, budget, options, conv_mode, max_new_tokens,
                 layout=""):
    """Everything that decides the text of an answer. The batch size is left out on purpose:
    greedy answers do not depend on it."""
    import paddle_rc

    return {"paddle_rc": paddle_rc.__version__, "model": identity,
            "method": method, "budget": budget, "options": dict(options or {}),
            "conv_mode": conv_mode,
            "generation": {"max_new_tokens": int(max_new_tokens), "temperature": 0.0,
                           "top_p": 1.0, "decoding": "greedy"},
            "layout": layout}
