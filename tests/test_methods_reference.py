"""TRIM, CDPruner and 2-D pooling against independent references on random inputs.

The references are plain-numpy transcriptions of the authors' released algorithms, written here
from a reading of their code (not imported, not copied):
  CDPruner  Theia-4869/CDPruner @ ed9c12da9e85c747e76b61bfe8845081d6964372
            (llava/model/llava_arch.py encode_images; multimodal_encoder/clip_encoder.py forward)
  TRIM      FreedomIntelligence/TRIM @ 0e666770fc5393aa88590ff4a1a51eb86d01f723
            (llava/model/multimodal_encoder/clip_encoder.py token_reduction, "TextSim+:-1")
Pooling is checked against torch's adaptive_avg_pool2d. Kept indices must be equal and tokens
within 1e-5.
"""
import numpy as np
import paddle
import pytest
import torch

from paddle_rc.compression import compress


def T(a):
    return paddle.to_tensor(np.ascontiguousarray(a))


def kept(res, b):
    L = int(res.lengths[b])
    return res.sources.numpy()[b, :L]


# ------------------------------------------------------------------------- CDPruner

def cdpruner_reference(feats, img_embeds, text_embeds, t):
    """One image. feats [N,H] projected features, img_embeds [N,D] = visual_projection(post_layernorm
    (layer -2)), text_embeds [M,D] one embedding per 77-token segment. float32 as the authors run it."""
    x = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    sim = x @ x.T
    ie = img_embeds / np.linalg.norm(img_embeds, axis=-1, keepdims=True)
    te = text_embeds / np.linalg.norm(text_embeds, axis=-1, keepdims=True)
    rel = (-(ie @ te.T)).mean(axis=-1)
    rel = (rel - rel.min() + np.float32(1e-6)) / (rel.max() - rel.min())
    kernel = rel[:, None] * sim * rel[None, :]
    n = kernel.shape[0]
    cis = np.zeros((t, n), dtype=np.float32)
    di2s = np.diagonal(kernel).copy()
    picks = []
    for i in range(t):
        j = int(np.argmax(di2s))
        picks.append(j)
        eis = (kernel[j] - cis[:i, j] @ cis[:i]) / np.sqrt(di2s[j])
        cis[i] = eis
        di2s = di2s - eis * eis
        di2s[j] = -np.inf
    return np.sort(np.array(picks))


@pytest.mark.parametrize("seed,n,t,segments", [(0, 64, 16, 1), (1, 100, 24, 2), (2, 144, 40, 3),
                                               (3, 81, 9, 1)])
def test_cdpruner_equals_the_authors_algorithm(seed, n, t, segments):
    rng = np.random.default_rng(seed)
    b, h, d = 2, 64, 12  # h > t: a kernel of rank below t runs out of positive gains
    feats = rng.standard_normal((b, n, h)).astype(np.float32)
    img = rng.standard_normal((b, n, d)).astype(np.float32)
    text = rng.standard_normal((b, segments, d)).astype(np.float32)
    # What segment_text_features hands the method: the mean of the unit segment embeddings.
    t_mean = (text / np.linalg.norm(text, axis=-1, keepdims=True)).mean(axis=1)
    res = compress("cdpruner", T(feats), None, None, P=T(img), t=T(t_mean), budget=t)
    for i in range(b):
        want = cdpruner_reference(feats[i], img[i], text[i], t)
        np.testing.assert_array_equal(kept(res, i), want)
        np.testing.assert_allclose(res.tokens.numpy()[i, :t], feats[i, want], atol=1e-5)
    assert res.stats[0]["total"] == t


def test_cdpruner_without_budget_uses_its_token_option_and_without_text_is_a_plain_dpp():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((2, 49, 8)).astype(np.float32)
    res = compress("cdpruner", T(feats), None, None, tokens=7)
    assert res.lengths.numpy().tolist() == [7, 7]
    # No question: relevance 1 for every patch, i.e. the reference with a constant relevance.
    x = feats[0] / np.linalg.norm(feats[0], axis=-1, keepdims=True)
    sim = x @ x.T
    picks, gains, rows = [], np.diagonal(sim).copy(), np.zeros((7, 49), dtype=np.float32)
    for i in range(7):
        j = int(np.argmax(gains))
        picks.append(j)
        e = (sim[j] - rows[:i, j] @ rows[:i]) / np.sqrt(gains[j])
        rows[i] = e
        gains = gains - e * e
        gains[j] = -np.inf
    np.testing.assert_array_equal(kept(res, 0), np.sort(picks))


# ----------------------------------------------------------------------------- TRIM

def trim_reference(F, proj, text):
    """One image. F [N,C] layer -2 patches, proj [N,D] = visual_projection(post_layernorm(F)),
    text [D] the question's text_embeds. Returns (kept indices ascending, mean of the rest)."""
    n = F.shape[0]
    sim = -(proj @ text)
    e = np.exp(sim - sim.max())
    s = (e / e.sum()).astype(np.float32)
    q1, q3 = np.percentile(s, 25), np.percentile(s, 75)
    upper = q3 + 1.5 * (q3 - q1)
    ratio = len(np.where(s > upper)[0]) / len(s)
    k = int(n * ratio)
    top = np.argsort(-s, kind="stable")[:k]
    mask = np.zeros(n, dtype=bool)
    mask[top] = True
    rest = F[~mask].mean(axis=0) if (~mask).any() else np.zeros(F.shape[1], dtype=np.float32)
    return np.nonzero(mask)[0], rest


@pytest.mark.parametrize("seed", range(6))
def test_trim_equals_the_authors_algorithm(seed):
    rng = np.random.default_rng(seed)
    b, n, c, d = 3, 64 + 16 * seed, 20, 16
    F = rng.standard_normal((b, n, c)).astype(np.float32)
    proj = rng.standard_normal((b, n, d)).astype(np.float32)
    text = (rng.standard_normal((b, d)) * rng.uniform(0.3, 1.5)).astype(np.float32)
    res = compress("trim", T(F), None, None, P=T(proj), t=T(text))
    counts = []
    for i in range(b):
        idx, rest = trim_reference(F[i], proj[i], text[i])
        got = kept(res, i)
        np.testing.assert_array_equal(got[:-1], idx)
        assert got[-1] == -1  # the averaged token comes last
        L = int(res.lengths[i])
        np.testing.assert_allclose(res.tokens.numpy()[i, :L - 1], F[i, idx], atol=1e-6)
        np.testing.assert_allclose(res.tokens.numpy()[i, L - 1], rest, atol=1e-5)
        counts.append(len(idx))
    assert max(counts) > 0  # some patches were really selected by the text


def test_trim_budget_keeps_t_minus_one_and_the_mean():
    rng = np.random.default_rng(9)
    F = rng.standard_normal((2, 36, 8)).astype(np.float32)
    proj = rng.standard_normal((2, 36, 8)).astype(np.float32)
    text = rng.standard_normal((2, 8)).astype(np.float32)
    res = compress("trim", T(F), None, None, P=T(proj), t=T(text), budget=10)
    assert res.lengths.numpy().tolist() == [10, 10]
    s = -(np.einsum("bnd,bd->bn", proj, text))
    for i in range(2):
        want = np.sort(np.argsort(-s[i], kind="stable")[:9])
        np.testing.assert_array_equal(kept(res, i)[:-1], want)
        rest = np.setdiff1d(np.arange(36), want)
        np.testing.assert_allclose(res.tokens.numpy()[i, 9], F[i, rest].mean(axis=0), atol=1e-5)
        assert sorted(res.samples[i].extra) == rest.tolist()


# -------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("n,k,budget", [(576, 8, None), (576, None, 144), (576, None, 100), (49, 5, None),
                                        (64, 3, None)])
def test_pooling_equals_adaptive_avg_pool2d(n, k, budget):
    rng = np.random.default_rng(n)
    g = int(np.sqrt(n))
    F = rng.standard_normal((2, n, 6)).astype(np.float32)
    opts = {} if k is None else {"k": k}
    res = compress("pooling", T(F), None, None, budget=budget, **opts)
    side = k or int(np.sqrt(budget))
    grid = torch.tensor(F).reshape(2, g, g, 6).permute(0, 3, 1, 2)
    want = torch.nn.functional.adaptive_avg_pool2d(grid, side).permute(0, 2, 3, 1).reshape(2, -1, 6).numpy()
    np.testing.assert_allclose(res.tokens.numpy(), want, atol=1e-5)
    assert res.stats[0]["centres"] == side * side
    # every patch belongs to some cell
    smp = res.samples[0]
    covered = set(smp.centres) | {m for c in smp.centres for m in smp.members[c]}
    assert covered == set(range(n))


def test_pooling_rejects_a_non_square_grid_and_a_too_large_side():
    F = T(np.zeros((1, 50, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="square"):
        compress("pooling", F, None, None)
    with pytest.raises(ValueError, match="side k"):
        compress("pooling", T(np.zeros((1, 16, 4), dtype=np.float32)), None, None, k=0)
    # k above the grid side is capped: every patch is its own cell
    x = np.random.default_rng(0).standard_normal((1, 16, 4)).astype(np.float32)
    np.testing.assert_array_equal(compress("pooling", T(x), None, None, k=5).tokens.numpy(), x)
