"""CompressionResult: the padded tensors plus lazily built per-sample selections and stats."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import paddle

from paddle_rc.compression.assemble import CENTRE, EXTRA, SPATIAL, TEXT, VISUAL

CORE_FIELDS = ("tokens", "lengths", "kinds", "sources", "stage", "members", "extra_members")


@dataclass
class SampleSelection:
    """What one image kept, as patch indices (raster numbering 0..N-1)."""
    n_patches: int
    visual: List[int]                   # kept by the visual filter (or top-k / random / dominant)
    text: List[int]                     # recovered by the text score
    centres: List[int]                  # merge centres, in output order (incl. spatial ones)
    spatial: List[int]                  # PruMerge+ spatially sampled centres (subset of centres)
    members: Dict[int, List[int]]       # centre -> patches merged into it
    extra: List[int]                    # patches summed into the extra token
    has_extra: bool
    output: List[tuple] = field(default_factory=list)   # (kind name, patch or -1) per token

    @property
    def kept(self):
        return sorted(set(self.visual) | set(self.text) | set(self.centres))


class CompressionResult:
    """Output of `compress`.

    tokens  [B,Tmax,C] zero-padded, in F's dtype; lengths [B] int64; mask [B,Tmax] bool.
    kinds   [B,Tmax] int64 per output slot: 1 visual, 2 text, 3 centre, 4 spatial centre,
            6 extra, 0 pad.  sources [B,Tmax] int64: patch index behind each slot (-1 extra/pad).
    stage   [B,N] int64 role per patch: 0 dropped, 1 visual, 2 text, 3 centre, 4 spatial
            centre, 5 merged (into a centre and/or the extra token).
    members [B,N,N] bool: members[b,i,j] = patch j merged into the token of centre i.
    extra_members [B,N] bool: patches summed into the extra token.
    samples / stats: per-sample python views, built on first access (host sync then only).
    """

    def __init__(self, core, method, budget=None, notes=(), has_text=None, text_note=None):
        for name, value in zip(CORE_FIELDS, core):
            setattr(self, name, value)
        self.method = method
        self.budget = budget            # the budget actually applied (after clamping), or None
        self._notes = list(notes)       # notes that hold for every sample
        self._has_text = has_text       # [B] bool tensor, read only when stats are built
        self._text_note = text_note
        self._samples: Optional[List[SampleSelection]] = None
        self._stats: Optional[List[dict]] = None

    @property
    def mask(self):
        tmax = self.tokens.shape[1]
        return paddle.arange(tmax, dtype="int64").unsqueeze(0) < self.lengths.unsqueeze(1)

    def _build(self):
        stage = self.stage.numpy()
        kinds = self.kinds.numpy()
        sources = self.sources.numpy()
        lengths = self.lengths.numpy()
        members = self.members.numpy()
        extra = self.extra_members.numpy()
        out = []
        for b in range(stage.shape[0]):
            L = int(lengths[b])
            k, s = kinds[b, :L], sources[b, :L]
            centres = [int(p) for kk, p in zip(k, s) if kk in (CENTRE, SPATIAL)]
            out.append(SampleSelection(
                n_patches=int(stage.shape[1]),
                visual=[int(i) for i in (stage[b] == VISUAL).nonzero()[0]],
                text=[int(i) for i in (stage[b] == TEXT).nonzero()[0]],
                centres=centres,
                spatial=[int(p) for kk, p in zip(k, s) if kk == SPATIAL],
                members={c: [int(j) for j in members[b, c].nonzero()[0]] for c in centres},
                extra=[int(i) for i in extra[b].nonzero()[0]],
                has_extra=bool((k == EXTRA).any()),
                output=[(_KIND[int(kk)], int(p)) for kk, p in zip(k, s)],
            ))
        return out

    @property
    def samples(self) -> List[SampleSelection]:
        if self._samples is None:
            self._samples = self._build()
        return self._samples

    @property
    def stats(self) -> List[dict]:
        if self._stats is None:
            rows = []
            skipped = None
            if self._text_note is not None and self._has_text is not None:
                skipped = ~self._has_text.numpy().astype(bool)
            for b, s in enumerate(self.samples):
                rows.append({
                    "method": self.method,
                    "n_patches": s.n_patches,
                    "visual": len(s.visual),
                    "text": len(s.text),
                    "centres": len(s.centres) - len(s.spatial),
                    "spatial": len(s.spatial),
                    "extra": int(s.has_extra),
                    "total": len(s.output),
                    "budget": self.budget,
                    "notes": self._notes + ([self._text_note] if skipped is not None and skipped[b] else []),
                })
            self._stats = rows
        return self._stats


_KIND = {VISUAL: "visual", TEXT: "text", CENTRE: "centre", SPATIAL: "spatial", EXTRA: "extra", 0: "pad"}
