"""compress(): RC against a plain Python-loop reference, method invariants, budget mode,
batching, rc vs rc-reference, edge cases."""
import math
import warnings

import numpy as np
import paddle
import pytest
from sklearn.neighbors import LocalOutlierFactor

from paddle_rc.compression import (available_methods, compress, get_method, load_method_preset,
                                   method_defaults, text_score, visual_score)

ALL = ["none", "random", "cls-topk", "prumerge", "prumerge+", "visionzip", "divprune", "rc",
       "rc-reference", "pooling", "trim", "cdpruner"]


# ----------------------------------------------------------------------------- inputs

def make_inputs(seed, b=1, n=48, c=16, d=8, spikes=4, heads=2):
    """Random tower outputs whose CLS attention has a few spikes (like real CLIP)."""
    rng = np.random.default_rng(seed)
    F = rng.normal(0, 1, (b, n, c)).astype(np.float32)
    Q = rng.normal(0, 1, (b, n + 1, c)).astype(np.float32)
    K = rng.normal(0, 1, (b, n + 1, c)).astype(np.float32)
    q0 = Q[:, 0] / np.linalg.norm(Q[:, 0], axis=-1, keepdims=True)
    for i in range(b):
        hot = rng.choice(np.arange(1, n + 1), size=min(spikes + i, n), replace=False)
        K[i, hot] += q0[i] * rng.uniform(6, 12, (len(hot), 1)) * math.sqrt(c) / 3
    P = rng.normal(0, 1, (b, n, d)).astype(np.float32)
    t = rng.normal(0, 1, (b, d)).astype(np.float32)
    hot_txt = rng.choice(n, size=min(3, n), replace=False)
    P[:, hot_txt] += 4 * t[:, None, :]
    extra = dict(cls_attn=rng.random((b, n)).astype(np.float32),
                 metric=rng.normal(0, 1, (b, n, c // heads)).astype(np.float32))
    return dict(F=F, Q=Q, K=K, P=P, t=t), extra


def T(a):
    return paddle.to_tensor(a)


def run(method, inp, extra=None, **kw):
    args = {k: T(v) for k, v in inp.items() if v is not None}
    opts = dict(kw)
    if method == "visionzip":
        opts.update({k: T(v) for k, v in (extra or {}).items()})
    return compress(method, args["F"], args["Q"], args["K"], args.get("P"), args.get("t"), **opts)


# ------------------------------------------------------------------ loop reference (RC)

def sk_count(x, k):
    if len(x) < 2:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = LocalOutlierFactor(n_neighbors=k).fit_predict(np.asarray(x, np.float32).reshape(-1, 1))
    return int((pred == -1).sum())


def top(x, k, allowed=None):
    """Indices of the k largest (ties to the lower index), in descending order."""
    idx = [i for i in np.argsort(-np.asarray(x, np.float64), kind="stable") if allowed is None or i in allowed]
    return [int(i) for i in idx[:k]]


def lr_rescale(counts, total, fallback):
    use = counts if sum(counts) > 0 else fallback
    tot = sum(use)
    base = [total * u // tot for u in use]
    rem = [total * u % tot for u in use]
    order = sorted(range(len(use)), key=lambda i: (-rem[i], i))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def rc_loop(F, s_vis, s_txt, K, has_text, reference=False, budget=None, topk=32, weight=50.0):
    """RC for ONE sample, written straight from docs/algorithm.md §5-§7 with Python loops."""
    n, c = F.shape
    s_vis = s_vis.astype(np.float64)
    s_txt = s_txt.astype(np.float64)

    def stages(n_v, n_t):
        vis = top(s_vis, n_v)
        masked = s_txt.copy()
        masked[vis] = s_txt.min()
        txt = top(masked, n_t, allowed=set(range(n)) - set(vis))
        rest = sorted(set(range(n)) - set(vis) - set(txt))
        return vis, txt, rest, masked

    n_v = n * sk_count(s_vis, 20) // n
    vis, _, _, masked = stages(n_v, 0)
    n_t = (n - n_v) * sk_count(masked, 20) // n if has_text else 0
    vis, txt, rest, masked = stages(n_v, n_t)
    cnt = sk_count(s_vis[rest], 10)
    if reference:
        L = min(c * cnt // len(rest), len(rest)) if rest else 0
    else:
        L = cnt
    extra_on = L > 0
    if budget is not None:
        n_v, n_t, m = lr_rescale([n_v, n_t, L + int(extra_on)], budget, [5, 3 if has_text else 0, 2])
        L, extra_on = max(m - 1, 0), m > 0
        vis, txt, rest, masked = stages(n_v, n_t)
    a = s_vis[rest]
    centres = top(a, L)                        # positions in the rest list
    kp = K[1:]
    keys = [kp[r] if reference else kp[p] for r, p in enumerate(rest)]
    keys = [k / np.linalg.norm(k) for k in keys]
    w = weight if has_text else 0.0
    out = [F[p] for p in sorted(vis + txt)]
    info = {"visual": sorted(vis), "text": sorted(txt), "centres": [rest[i] for i in centres],
            "members": {}, "extra": []}
    for i in centres:
        cand = [j for j in range(len(rest)) if j != i]
        score = [float(keys[i] @ keys[j]) + w * masked[rest[j]] for j in cand]
        kk = min(topk, len(rest) - 1)
        chosen = [cand[j] for j in np.argsort(-np.asarray(score), kind="stable")[:kk]]
        info["members"][rest[i]] = sorted(rest[j] for j in chosen)
        out.append(F[rest[i]] + sum(a[j] * F[rest[j]] for j in chosen))
    if extra_on:
        info["extra"] = [rest[j] for j in range(len(rest)) if j not in centres]
        out.append(sum((a[j] * F[rest[j]] for j in range(len(rest)) if j not in centres), np.zeros(c)))
    return np.array(out, dtype=np.float64).reshape(-1, c), info


def loop_tokens(inp, b, reference=False, budget=None, has_text=True, **kw):
    F, Q, K = (inp[k][b:b + 1] for k in ("F", "Q", "K"))
    s_vis = visual_score(T(Q), T(K)).numpy()[0]
    if inp.get("P") is not None and has_text:
        s_txt = text_score(T(inp["P"][b:b + 1]), T(inp["t"][b:b + 1])).numpy()[0]
    else:
        s_txt, has_text = np.zeros_like(s_vis), False
    return rc_loop(F[0], s_vis, s_txt, K[0], has_text, reference, budget, **kw)


def assert_matches_loop(res, b, inp, **kw):
    """Tokens AND selections (visual, text, centres in order, members, extra) equal the loop."""
    want, info = loop_tokens(inp, b, **kw)
    got = valid_tokens(res, b)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    smp = res.samples[b]
    assert (smp.visual, smp.text, smp.centres, smp.extra) == (
        info["visual"], info["text"], info["centres"], info["extra"])
    assert smp.members == info["members"]


def valid_tokens(res, b):
    return res.tokens.numpy()[b, : int(res.lengths[b])]


# ------------------------------------------------------------------------------ tests

LLM_METHODS = ["fastv"]  # prune inside the LLM: tested in test_fastv.py, not through compress()


def test_registry_and_presets():
    assert sorted(available_methods()) == sorted(ALL + LLM_METHODS)
    for m in ALL + LLM_METHODS:
        preset = load_method_preset(m)
        assert preset["method"] == m
        assert preset["budget"] is None
        assert preset["options"] == method_defaults(m), m
    assert method_defaults("rc")["n_neighbors_visual"] == 20
    assert method_defaults("rc")["n_neighbors_merge"] == 10
    with pytest.raises(ValueError, match="unknown compression method"):
        run("rc-fast", make_inputs(0)[0])


def test_scores_match_numpy():
    inp, _ = make_inputs(1, b=2)
    Q, K, P, t = (inp[k].astype(np.float64) for k in ("Q", "K", "P", "t"))
    c = Q.shape[-1]
    logits = Q @ K.transpose(0, 2, 1) / math.sqrt(c)
    A = np.exp(logits - logits.max(-1, keepdims=True))
    A /= A.sum(-1, keepdims=True)
    np.testing.assert_allclose(visual_score(T(inp["Q"]), T(inp["K"])).numpy(), A[:, 0, 1:], rtol=1e-5, atol=1e-7)
    pn = P / np.linalg.norm(P, axis=-1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=-1, keepdims=True)
    want = np.einsum("bnd,bd->bn", pn, tn) / math.sqrt(P.shape[-1])
    np.testing.assert_allclose(text_score(T(inp["P"]), T(inp["t"])).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rc_equals_python_loop(seed, reference):
    inp, _ = make_inputs(seed, b=2, n=40 + 8 * seed, c=24 + 16 * (seed % 2))
    method = "rc-reference" if reference else "rc"
    res = run(method, inp)
    for b in range(2):
        assert_matches_loop(res, b, inp, reference=reference)
    merged = sum(s["centres"] for s in res.stats)
    assert merged > 0  # the merge path is exercised, not just selection


def test_rc_loop_small_topk_and_no_text():
    inp, _ = make_inputs(7, b=2, n=64, spikes=2)
    res = run("rc", inp, topk=3)
    for b in range(2):
        assert_matches_loop(res, b, inp, topk=3)
    res = run("rc", dict(inp, P=None, t=None))
    for b in range(2):
        assert_matches_loop(res, b, inp, has_text=False)
        assert res.stats[b]["text"] == 0
        assert any("t is None" in n for n in res.stats[b]["notes"])


def test_empty_question_per_sample():
    inp, _ = make_inputs(11, b=2, n=48)
    res = run("rc", inp, has_text=[True, False])
    assert res.stats[0]["text"] > 0 and res.stats[1]["centres"] > 1   # both paths exercised
    assert_matches_loop(res, 0, inp)
    assert_matches_loop(res, 1, inp, has_text=False)
    assert res.stats[1]["text"] == 0 and "empty question" in res.stats[1]["notes"][0]
    assert res.stats[0]["notes"] == []


@pytest.mark.parametrize("budget", [1, 2, 7, 24, 47])
def test_rc_budget_equals_loop(budget):
    inp, _ = make_inputs(4, b=2, n=48)
    for method, ref in (("rc", False), ("rc-reference", True)):
        res = run(method, inp, budget=budget)
        assert res.lengths.numpy().tolist() == [budget, budget]
        for b in range(2):
            assert_matches_loop(res, b, inp, reference=ref, budget=budget)


def test_largest_remainder_and_fallback_split():
    assert lr_rescale([10, 5, 3], 7, [5, 3, 2]) == [4, 2, 1]
    inp, _ = make_inputs(0, b=1, n=32)
    flat = dict(inp)
    flat["Q"] = np.zeros_like(inp["Q"])            # uniform attention: no visual outliers
    flat["P"] = np.ones_like(inp["P"])             # equal text scores: no text outliers
    res = run("rc", flat, budget=10)
    s = res.stats[0]
    assert (s["visual"], s["text"], s["centres"] + s["extra"]) == (5, 3, 2)
    res = run("rc", dict(flat, P=None, t=None), budget=10)
    s = res.stats[0]
    assert (s["visual"], s["text"], s["centres"] + s["extra"]) == (7, 0, 3)  # 5:0:2 of 10


def method_inputs(method, inp, extra, **kw):
    return run(method, inp, extra, **kw)


@pytest.mark.parametrize("method", ALL)
def test_invariants(method):
    inp, extra = make_inputs(5, b=3, n=64, c=16)
    res = method_inputs(method, inp, extra)
    F = inp["F"]
    s_vis = visual_score(T(inp["Q"]), T(inp["K"])).numpy()
    lengths = res.lengths.numpy()
    assert res.tokens.shape[0] == 3 and res.tokens.shape[2] == 16
    assert res.tokens.shape[1] == lengths.max()
    assert res.lengths.dtype == paddle.int64
    np.testing.assert_array_equal(res.mask.numpy(), np.arange(res.tokens.shape[1])[None] < lengths[:, None])
    tok, kinds, src = res.tokens.numpy(), res.kinds.numpy(), res.sources.numpy()
    order = {1: 0, 2: 0, 3: 1, 4: 2, 6: 3}
    for b in range(3):
        L = lengths[b]
        assert np.all(tok[b, L:] == 0) and np.all(kinds[b, L:] == 0)
        k, s = kinds[b, :L], src[b, :L]
        assert np.all(k > 0)
        groups = [order[int(v)] for v in k]
        assert groups == sorted(groups)                      # selected, centres, spatial, extra
        sel = s[(k == 1) | (k == 2)]
        assert np.all(np.diff(sel) > 0)                      # raster order kept
        np.testing.assert_array_equal(tok[b, :L][(k == 1) | (k == 2)], F[b, sel])
        if method in ("rc", "rc-reference", "prumerge", "prumerge+"):
            cen = s[k == 3]
            assert np.all(np.diff(s_vis[b, cen]) <= 0)      # centres by descending attention
        sp = s[k == 4]
        assert np.all(np.diff(sp) > 0)
        assert np.sum(k == 6) <= 1 and (np.sum(k == 6) == 0 or k[-1] == 6)
        st = res.stats[b]
        assert st["total"] == L == st["visual"] + st["text"] + st["centres"] + st["spatial"] + st["extra"]
        smp = res.samples[b]
        assert len(set(smp.kept)) == len(smp.kept)
        for cidx, mem in smp.members.items():
            assert cidx not in mem
    if method == "none":
        np.testing.assert_array_equal(tok, F)
    if method == "rc":
        assert sum(res.stats[b]["centres"] for b in range(3)) > 0


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("budget", [1, 5, 16, 64, 100])
def test_budget_exact(method, budget):
    inp, extra = make_inputs(6, b=2, n=64)
    res = method_inputs(method, inp, extra, budget=budget)
    lengths = res.lengths.numpy().tolist()
    if method == "none":
        assert lengths == [64, 64] and "ignored" in res.stats[0]["notes"][0]
        return
    want = min(budget, 64)
    if method == "pooling":  # a k x k grid, k = floor(sqrt(budget))
        note = [n for n in res.stats[0]["notes"] if "pooling" in n]
        assert note == ([] if math.isqrt(want) ** 2 == want else [f"budget {want}: method 'pooling' emits "
                                                                  f"{math.isqrt(want) ** 2} tokens"])
        want = math.isqrt(want) ** 2
    assert lengths == [want, want], lengths
    assert all(s["total"] == want for s in res.stats)
    if budget > 64:
        assert "clamped to 64" in res.stats[0]["notes"][0]


def test_visionzip_budget_split_matches_paper():
    inp, extra = make_inputs(9, b=1, n=576, c=8, d=4)
    for budget, (dom, ctx) in {64: (54, 10), 128: (108, 20), 192: (162, 30)}.items():
        s = method_inputs("visionzip", inp, extra, budget=budget).stats[0]
        assert (s["visual"], s["centres"]) == (dom, ctx)


def test_visionzip_matches_loop():
    inp, extra = make_inputs(10, b=1, n=40, c=8)
    res = method_inputs("visionzip", inp, extra, dominant=10, contextual=4)
    F, attn, met = inp["F"][0], extra["cls_attn"][0], extra["metric"][0]
    dom = sorted(top(attn, 10))
    rest = [p for p in range(40) if p not in dom]
    step = max(1, len(rest) // 4)
    tgt = list(range(0, len(rest), step))[:4]
    mn = met / np.linalg.norm(met, axis=-1, keepdims=True)
    groups = {i: [rest[i]] for i in tgt}
    for j in range(len(rest)):
        if j not in tgt:
            sims = [mn[rest[j]] @ mn[rest[i]] for i in tgt]
            groups[tgt[int(np.argmax(sims))]].append(rest[j])
    want = [F[p] for p in dom] + [F[groups[i]].mean(0) for i in tgt]
    np.testing.assert_allclose(valid_tokens(res, 0), np.array(want), rtol=1e-5, atol=1e-6)


def test_prumerge_matches_loop():
    inp, _ = make_inputs(11, b=1, n=48, c=8)
    F, K = inp["F"][0].astype(np.float64), inp["K"][0, 1:].astype(np.float64)
    s = visual_score(T(inp["Q"]), T(inp["K"])).numpy()[0].astype(np.float64)
    q1, q3 = np.percentile(s, 25), np.percentile(s, 75)
    n_c = int((s > q3 + 1.5 * (q3 - q1)).sum())
    assert n_c > 0
    cen = top(s, n_c)
    kn = K / np.linalg.norm(K, axis=-1, keepdims=True)
    out, members = [], {}
    for i in cen:
        cand = [j for j in range(48) if j != i]
        sc = [kn[i] @ kn[j] for j in cand]
        ch = [cand[j] for j in np.argsort(-np.asarray(sc), kind="stable")[:32]]
        members[i] = sorted(ch)
        out.append(F[i] + sum(s[j] * F[j] for j in ch))
    out.append(sum(s[j] * F[j] for j in range(48) if j not in cen))
    res = run("prumerge", inp)
    np.testing.assert_allclose(valid_tokens(res, 0), np.array(out), rtol=1e-4, atol=1e-5)
    assert res.samples[0].centres == cen and res.samples[0].members == members
    plus = run("prumerge+", inp).samples[0]
    step = max(1, (48 // n_c) // 3)
    assert plus.spatial == [p for p in range(0, 47, step) if p not in cen]
    assert plus.centres[:n_c] == cen


def test_divprune_matches_loop():
    inp, _ = make_inputs(12, b=1, n=40, c=8)
    F = inp["F"][0].astype(np.float64)
    fn = F / np.linalg.norm(F, axis=-1, keepdims=True)
    D = 1 - fn @ fn.T
    first = np.where(np.eye(40, dtype=bool), np.inf, D).min(0)
    sel = [int(np.argmax(first))]
    for _ in range(9):
        m = D[sel].min(0)
        m[sel] = -np.inf
        sel.append(int(np.argmax(m)))
    res = run("divprune", inp, budget=10)
    assert res.samples[0].visual == sorted(sel)


def test_random_is_seeded_and_batch_independent():
    inp, _ = make_inputs(13, b=2, n=64)
    a = run("random", inp, budget=12, seed=3).samples
    b = run("random", inp, budget=12, seed=3).samples
    c = run("random", inp, budget=12, seed=4).samples
    assert a[0].visual == b[0].visual == a[1].visual
    assert a[0].visual != c[0].visual and len(a[0].visual) == 12


@pytest.mark.parametrize("method", ALL)
def test_batch_equals_single(method):
    n = 64 if method == "pooling" else 56  # pooling needs a square grid
    parts = [make_inputs(20 + i, b=1, n=n, spikes=2 + 3 * i) for i in range(3)]
    inp = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    extra = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    res = method_inputs(method, inp, extra)
    lengths = res.lengths.numpy()
    if method in ("rc", "rc-reference", "prumerge", "prumerge+"):
        assert len(set(lengths.tolist())) > 1          # the batch really has different counts
    for i, (pi, pe) in enumerate(parts):
        alone = method_inputs(method, pi, pe)
        assert int(alone.lengths[0]) == lengths[i]
        np.testing.assert_allclose(valid_tokens(res, i), valid_tokens(alone, 0), rtol=1e-5, atol=1e-6)
        assert res.samples[i] == alone.samples[0]
        assert np.all(res.tokens.numpy()[i, lengths[i]:] == 0)


# ----------------------------------------------------------------- rc vs rc-reference

def crafted(c, spikes_first, seed=0, n=24):
    """Attention with exact logits: a fixed 0-logit CLS, a mid-value outlier among the rest
    and sorted spikes either at the end (rest is a raster prefix) or at the start."""
    rng = np.random.default_rng(seed)
    logit = rng.uniform(0, 1.0, n - 4)
    logit[rng.integers(0, n - 4)] = rng.uniform(1.5, 3.5)
    logit = np.concatenate([logit, np.sort(rng.uniform(5, 9, 4))])
    if spikes_first:
        logit = logit[::-1].copy()
    Q = np.zeros((1, n + 1, c), np.float32)
    Q[0, 0, 0] = 1.0
    K = rng.normal(0, 1, (1, n + 1, c)).astype(np.float32)
    K[0, :, 0] = np.concatenate([[0.0], logit]) * math.sqrt(c)
    F = rng.normal(0, 1, (1, n, c)).astype(np.float32)
    return dict(F=F, Q=Q, K=K, P=None, t=None)


def test_rc_and_reference_agree_when_quirks_are_inert():
    # (a) rest is a raster prefix and C == n_rest: rest-list position == patch index and
    #     floor(C * ratio) == floor(n_rest * ratio), so both quirks are no-ops.
    probe = run("rc", crafted(21, False), topk=4).stats[0]
    assert probe["visual"] == 3 and probe["centres"] == 2      # n_rest = 21 = C, L = 2
    inp = crafted(21, False)
    a, b = run("rc", inp, topk=4), run("rc-reference", inp, topk=4)
    np.testing.assert_array_equal(a.tokens.numpy(), b.tokens.numpy())
    # (b) no outliers among the rest: L = 0 in both modes, nothing is merged.
    inp, _ = make_inputs(30, b=1, n=32, c=64)
    flat = inp["K"].copy()
    s = visual_score(T(inp["Q"]), T(inp["K"])).numpy()[0]
    hot = np.argsort(-s)[:3] + 1
    keep = np.ones(33, bool)
    keep[hot] = False
    keep[0] = False
    flat[0, keep] = inp["K"][0, keep] - inp["K"][0, keep].mean(0) * 0  # unchanged keys ...
    q0 = inp["Q"][0, 0]
    flat[0, keep] -= np.outer(flat[0, keep] @ q0 / (q0 @ q0), q0)      # ... but equal logits
    inp["K"] = flat
    inp["P"] = inp["t"] = None
    a, b = run("rc", inp), run("rc-reference", inp)
    assert a.stats[0]["centres"] == 0 and a.stats[0]["visual"] > 0
    np.testing.assert_array_equal(a.tokens.numpy(), b.tokens.numpy())


def test_rc_and_reference_differ_only_in_the_quirky_keys():
    # Same counts (C == n_rest) but the rest is not a prefix: only centre tokens may differ.
    inp = crafted(21, True)
    a, b = run("rc", inp, topk=4), run("rc-reference", inp, topk=4)
    assert a.lengths.numpy().tolist() == b.lengths.numpy().tolist()
    sa, sb = a.samples[0], b.samples[0]
    assert (sa.visual, sa.centres, sa.extra) == (sb.visual, sb.centres, sb.extra)
    kinds = a.kinds.numpy()[0]
    ta, tb = a.tokens.numpy()[0], b.tokens.numpy()[0]
    np.testing.assert_array_equal(ta[kinds != 3], tb[kinds != 3])
    assert not np.allclose(ta[kinds == 3], tb[kinds == 3])
    assert sa.members != sb.members
    assert_matches_loop(a, 0, inp, reference=False, topk=4)
    assert_matches_loop(b, 0, inp, reference=True, topk=4)


def test_reference_uses_feature_width_for_centre_count():
    inp = crafted(64, False)
    a, b = run("rc", inp, topk=4).stats[0], run("rc-reference", inp, topk=4).stats[0]
    n_rest = 24 - a["visual"] - a["text"]
    assert a["centres"] == 2
    assert b["centres"] == min(64 * 2 // n_rest, n_rest)
    assert b["centres"] > a["centres"]


# ------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("method", ALL)
def test_edge_cases_do_not_crash(method):
    # all scores equal
    inp, extra = make_inputs(40, b=2, n=16, c=8)
    flat = dict(inp, Q=np.zeros_like(inp["Q"]), P=np.ones_like(inp["P"]))
    extra_flat = dict(extra, cls_attn=np.ones_like(extra["cls_attn"]))
    res = method_inputs(method, flat, extra_flat)
    if method in ("rc", "rc-reference"):
        assert res.lengths.numpy().tolist() == [0, 0] and res.tokens.shape[1] == 0
    res = method_inputs(method, flat, extra_flat, budget=6)
    if method != "none":
        assert res.lengths.numpy().tolist() == [4, 4] if method == "pooling" else [6, 6]
    # N smaller than every neighbour count / topk, n_rest <= 1
    for n in ((1, 4, 9) if method == "pooling" else (1, 2, 3, 5)):
        small, ex = make_inputs(41 + n, b=2, n=n, c=8, spikes=0)
        for budget in (None, 1, n):
            res = method_inputs(method, small, ex, budget=budget)
            assert res.tokens.shape[1] == int(res.lengths.numpy().max())
            assert np.isfinite(res.tokens.numpy()).all()
            _ = res.stats
    # fp16 / bf16 inputs are computed in float32 and returned in the input dtype
    for dt in ("float16", "bfloat16"):
        args = {k: T(v).astype(dt) for k, v in inp.items()}
        opts = {k: T(v).astype(dt) for k, v in extra.items()} if method == "visionzip" else {}
        res = compress(method, args["F"], args["Q"], args["K"], args["P"], args["t"], **opts)
        ref = method_inputs(method, {k: T(v).astype(dt).astype("float32").numpy() for k, v in inp.items()},
                            {k: T(v).astype(dt).astype("float32").numpy() for k, v in extra.items()})
        assert res.tokens.dtype == getattr(paddle, dt)
        assert res.lengths.numpy().tolist() == ref.lengths.numpy().tolist()


def test_n_rest_le_one():
    # budget N-1 in rc leaves n_rest <= 1: the single rest patch is the extra token alone
    inp, _ = make_inputs(50, b=1, n=20, c=8)
    for budget in (19, 20):
        res = run("rc", inp, budget=budget)
        assert int(res.lengths[0]) == budget
        assert np.isfinite(res.tokens.numpy()).all()
    assert_matches_loop(run("rc", inp, budget=19), 0, inp, budget=19)


def test_bad_inputs_are_clear_errors():
    inp, _ = make_inputs(0, b=1, n=16)
    with pytest.raises(ValueError, match="budget"):
        run("rc", inp, budget=0)
    with pytest.raises(ValueError, match="cls_attn"):
        run("visionzip", inp, None)
    with pytest.raises(ValueError, match="1\\+N"):
        compress("rc", T(inp["F"]), T(inp["Q"][:, 1:]), T(inp["K"]))


@pytest.mark.parametrize("method", ["rc", "cls-topk"])
def test_draw_kept_tokens(method, tmp_path):
    from PIL import Image

    from paddle_rc.compression.visualize import draw_kept_tokens

    inp, _ = make_inputs(0, b=1, n=64, c=16)
    res = run(method, inp)
    smp = res.samples[0]
    in_cluster = set(p for m in smp.members.values() for p in m)
    only_extra = [p for p in smp.extra if p not in in_cluster]
    dropped = [p for p in range(64) if p not in smp.kept and p not in smp.extra and p not in in_cluster]
    assert smp.visual and (only_extra and smp.centres if method == "rc" else dropped)
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((112, 112, 3)) * 155 + 100).astype(np.uint8))
    out = draw_kept_tokens(img, res, sample=0, path=tmp_path / "kept.png")
    assert (tmp_path / "kept.png").exists()
    cell = 768 // 8
    assert out.size[1] == cell * 8 and out.size[0] > out.size[1]      # grid + legend panel
    base = np.asarray(img.resize((cell * 8, cell * 8), Image.BICUBIC), np.float64)
    arr = np.asarray(out, np.float64)

    def centre_px(p):
        r, c = divmod(p, 8)
        y, x = r * cell + cell // 2, c * cell + cell // 2
        return arr[y, x], base[y, x]

    for p in smp.visual:                                   # kept: shown at full brightness
        got, orig = centre_px(p)
        np.testing.assert_allclose(got, orig, atol=1)
    for p in dropped:                                      # dropped: dimmed
        got, orig = centre_px(p)
        assert got.sum() < 0.4 * orig.sum()
    for p in only_extra:                                   # extra token only: half bright
        got, orig = centre_px(p)
        assert 0.4 * orig.sum() < got.sum() < 0.8 * orig.sum()
    for p in smp.centres:                                  # centres: tinted, not the original
        got, orig = centre_px(p)
        assert np.abs(got - orig).max() > 20


def test_count_rounding_exact_for_rc_float_for_reference():
    from paddle_rc.compression.ops import floor_scaled, floor_scaled_float

    cases = [(m, c, l) for m in (43, 576, 1024, 480, 17) for l in (43, 576, 97, 1) for c in range(0, l + 1, 3)]
    cases.append((43, 23, 43))
    m, c, l = (paddle.to_tensor([x[i] for x in cases], dtype="int64") for i in range(3))
    exact = floor_scaled(m, c, l).numpy().tolist()
    released = floor_scaled_float(m, c, l).numpy().tolist()
    assert exact == [(a * b) // d for a, b, d in cases]
    assert released == [int(a * (b / d)) for a, b, d in cases]
    assert exact[-1] == 23 and released[-1] == 22  # the float product lands just below 23


def test_registry_declares_what_each_method_reads():
    from paddle_rc.compression.registry import CLS_STATS, P_FEATURE, P_NEXT, QK, TEXT

    assert get_method("rc").inputs() == {QK, TEXT, P_NEXT}
    assert get_method("rc").inputs({"p_source": "feature-postln"}) == {QK, TEXT, P_FEATURE}
    assert get_method("rc").needs_next_layer() and get_method("cls-topk").needs_next_layer()
    assert get_method("visionzip").inputs() == {CLS_STATS} and not get_method("visionzip").needs_next_layer()
    assert get_method("divprune").inputs() == set() and get_method("divprune").text_mode is None
    assert get_method("rc-reference").text_mode == "prompt-first-line"
    with pytest.raises(ValueError, match="p_source"):
        get_method("rc").inputs({"p_source": "layer-3"})


def test_rc_text_sign_negates_the_text_score():
    """text_sign=-1 ranks by -cos(P, t): the same as handing RC the negated question embedding."""
    inp, _ = make_inputs(3, b=2, n=48)
    neg = run("rc", inp, text_sign=-1)
    flipped = run("rc", dict(inp, t=-inp["t"]))
    for field in ("lengths", "stage", "members"):
        np.testing.assert_array_equal(getattr(neg, field).numpy(), getattr(flipped, field).numpy())
    np.testing.assert_array_equal(neg.tokens.numpy(), flipped.tokens.numpy())
    assert (run("rc", inp).stage.numpy() != neg.stage.numpy()).any()
    with pytest.raises(ValueError, match="text_sign"):
        run("rc", inp, text_sign=0)
