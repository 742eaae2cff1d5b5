"""Turn per-patch decisions into the padded output sequence, with no host round trip.

Every method describes its output the same way: for each patch p a group (kept in raster
order, first centre group in a given rank order, second centre group in raster order, or not
emitted), the value that patch contributes, and optionally one extra token at the end. The
sequence is then built by sorting unique integer keys, which is traceable by to_static with a
dynamic batch (no data-dependent Python ints, no topk with data-dependent k).
"""
from __future__ import annotations

import paddle

# Per-patch role codes (the `stage` output) and per-slot kind codes (the `kinds` output).
DROPPED, VISUAL, TEXT, CENTRE, SPATIAL, REST = 0, 1, 2, 3, 4, 5
STAGE_NAMES = {DROPPED: "dropped", VISUAL: "visual", TEXT: "text", CENTRE: "centre",
               SPATIAL: "spatial centre", REST: "merged"}
PAD, EXTRA = 0, 6
KIND_NAMES = {PAD: "pad", VISUAL: "visual", TEXT: "text", CENTRE: "centre",
              SPATIAL: "spatial centre", EXTRA: "extra"}

GROUP_NONE, GROUP_RASTER, GROUP_RANKED, GROUP_RASTER2 = -1, 0, 1, 2


def assemble(values, group, within, stage, extra=None, extra_on=None, members=None,
             extra_members=None, out_dtype=None, trim=True):
    """Build (tokens, lengths, kinds, sources, stage, members, extra_members).

    values: [B,N,C] float32, the token each patch would emit.
    group:  [B,N] int64 in {GROUP_NONE, GROUP_RASTER, GROUP_RANKED, GROUP_RASTER2}; output
            order is RASTER (by patch index), RANKED (by `within`), RASTER2, then the extra.
    within: [B,N] int64 order inside GROUP_RANKED (unique among its members), else ignored.
    stage:  [B,N] int64 role code per patch (VISUAL, TEXT, CENTRE, ...), used for `kinds`.
    extra:  [B,C] float32 or None; extra_on [B] bool says whether a sample emits it.
    members: [B,N,N] bool, members[b,i,j] = patch j was merged into the token of patch i.
    extra_members: [B,N] bool, patches summed into the extra token.
    """
    n = values.shape[1]
    c = values.shape[2]
    base = n + 1
    pos = paddle.arange(n, dtype="int64").unsqueeze(0)
    g = group.astype("int64")
    within = within.astype("int64")
    key = paddle.where(g == GROUP_RASTER, pos, 4 * base + pos)
    key = paddle.where(g == GROUP_RANKED, base + within, key)
    key = paddle.where(g == GROUP_RASTER2, 2 * base + pos, key)
    kind = paddle.where(g >= 0, stage.astype("int64"), paddle.zeros_like(key))
    src = pos.expand_as(key)
    emitted = (g >= 0).astype("int64").sum(axis=1)

    if extra is None:
        extra = paddle.zeros_like(values[:, 0, :])
        extra_on = paddle.zeros_like(emitted, dtype="bool")
    extra_key = paddle.where(extra_on, paddle.full_like(emitted, 3 * base),
                             paddle.full_like(emitted, 5 * base))
    key = paddle.concat([key, extra_key.unsqueeze(1)], axis=1)
    kind = paddle.concat([kind, paddle.where(extra_on, paddle.full_like(emitted, EXTRA),
                                             paddle.zeros_like(emitted)).unsqueeze(1)], axis=1)
    src = paddle.concat([src, paddle.full_like(emitted, -1).unsqueeze(1)], axis=1)
    vals = paddle.concat([values, extra.unsqueeze(1)], axis=1)

    lengths = emitted + extra_on.astype("int64")
    perm = paddle.argsort(key, axis=1)          # keys are unique: no tie-breaking needed
    slot_ok = paddle.arange(n + 1, dtype="int64").unsqueeze(0) < lengths.unsqueeze(1)
    tokens = paddle.take_along_axis(vals, perm.unsqueeze(2).expand([-1, -1, c]), axis=1)
    tokens = paddle.where(slot_ok.unsqueeze(2), tokens, paddle.zeros_like(tokens))
    kinds = paddle.where(slot_ok, paddle.take_along_axis(kind, perm, axis=1),
                         paddle.full_like(perm, PAD))
    sources = paddle.where(slot_ok, paddle.take_along_axis(src, perm, axis=1),
                           paddle.full_like(perm, -1))
    if trim:
        # Tensor-valued slice end: stays dynamic under to_static, no host sync in dygraph.
        tmax = paddle.max(lengths)
        tokens = tokens[:, :tmax]
        kinds = kinds[:, :tmax]
        sources = sources[:, :tmax]
    if out_dtype is not None and tokens.dtype != out_dtype:
        tokens = tokens.astype(out_dtype)

    if members is None:
        members = paddle.zeros_like(stage.unsqueeze(2).expand([-1, -1, n]), dtype="bool")
    if extra_members is None:
        extra_members = paddle.zeros_like(stage, dtype="bool")
    return tokens, lengths, kinds, sources, stage.astype("int64"), members, extra_members
