"""LOF / IQR outlier ratios against their oracles (scikit-learn, numpy)."""
import warnings

import numpy as np
import paddle
import pytest
from sklearn.neighbors import LocalOutlierFactor

from paddle_rc.compression import iqr_ratio, lof_outlier_count, lof_outlier_ratio


def sk_outliers(x, k):
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_neighbors > n_samples" is expected for small N
        pred = LocalOutlierFactor(n_neighbors=k, contamination="auto").fit_predict(x)
    return int((pred == -1).sum())


def softmax_spiky(rng, n):
    z = rng.normal(0, rng.uniform(0.5, 3.0), n)
    spikes = rng.choice(n, size=rng.integers(0, max(1, n // 8) + 1), replace=False)
    z[spikes] += rng.uniform(3, 9, len(spikes))
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32)


def cosine_like(rng, n, d=768):
    c = np.clip(rng.normal(0.2, 0.08, n), -1, 1)
    c[rng.choice(n, size=rng.integers(0, 4), replace=False)] += 0.3
    return (c / np.sqrt(d)).astype(np.float32)


def masked_dups(rng, n):
    """Step-2 style: entries picked by the visual filter set to the vector's minimum."""
    x = cosine_like(rng, n)
    idx = rng.choice(n, size=rng.integers(1, n // 2 + 1), replace=False)
    x[idx] = x.min()
    return x


def make_cases():
    rng = np.random.default_rng(1234)
    cases = []
    for n in (3, 5, 12, 16, 21, 33, 64, 100):
        for _ in range(8):
            cases.append(softmax_spiky(rng, n))
            cases.append(cosine_like(rng, n))
            cases.append(masked_dups(rng, n))
    for n in (2, 4, 7, 10, 15, 19, 20):          # N smaller than or equal to k=20
        cases.append(softmax_spiky(rng, n))
        cases.append(masked_dups(rng, max(n, 2)))
    for n in (2, 9, 30, 576):                      # constant vectors
        cases.append(np.full(n, 0.0017, np.float32))
    for _ in range(4):                             # full-size CLIP-like
        cases.append(softmax_spiky(rng, 576))
        cases.append(masked_dups(rng, 576))
    return cases


CASES = make_cases()


def test_case_count():
    assert len(CASES) >= 200


@pytest.mark.parametrize("k", [20, 10, 3])
def test_lof_matches_sklearn(k):
    mismatches = []
    for i, x in enumerate(CASES):
        ours = int(lof_outlier_count(paddle.to_tensor(x).unsqueeze(0), k)[0].numpy()[0])
        ref = sk_outliers(x, k)
        if ours != ref:
            mismatches.append((i, len(x), ours, ref))
    assert not mismatches, mismatches


def test_ratio_is_count_over_n_and_batched_rows_independent():
    rng = np.random.default_rng(7)
    xs = np.stack([softmax_spiky(rng, 48) for _ in range(6)] + [masked_dups(rng, 48) for _ in range(6)])
    got = lof_outlier_ratio(paddle.to_tensor(xs), 20).numpy()
    want = np.array([sk_outliers(x, 20) / 48 for x in xs], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    assert lof_outlier_ratio(paddle.to_tensor(xs[3]), 20).shape == []  # 1-D in, scalar out
    assert float(lof_outlier_ratio(paddle.to_tensor(xs[3]), 20)) == want[3]


def test_lof_on_masked_subsets_equals_sklearn_on_the_subset():
    rng = np.random.default_rng(11)
    n = 40
    xs, valids = [], []
    for _ in range(30):
        xs.append(softmax_spiky(rng, n))
        v = np.zeros(n, bool)
        v[rng.choice(n, size=rng.integers(0, n + 1), replace=False)] = True
        valids.append(v)
    xs, valids = np.stack(xs), np.stack(valids)
    count, m = lof_outlier_count(paddle.to_tensor(xs), 10, valid=paddle.to_tensor(valids))
    for b in range(len(xs)):
        sub = xs[b][valids[b]]
        assert int(m[b]) == len(sub)
        want = sk_outliers(sub, 10) if len(sub) >= 2 else 0
        assert int(count[b]) == want, (b, len(sub))


def test_tiny_inputs_do_not_crash():
    assert float(lof_outlier_ratio(paddle.to_tensor([0.5]), 20)) == 0.0
    assert float(lof_outlier_ratio(paddle.to_tensor([0.5, 0.1]), 20)) == 0.0
    assert sk_outliers([0.5, 0.1], 20) == 0
    assert lof_outlier_ratio(paddle.zeros([3, 1]), 20).numpy().tolist() == [0.0, 0.0, 0.0]


def test_lof_accepts_half_precision():
    rng = np.random.default_rng(3)
    x = softmax_spiky(rng, 64).astype(np.float16)
    got = int(lof_outlier_count(paddle.to_tensor(x).unsqueeze(0), 20)[0].numpy()[0])
    assert got == sk_outliers(x.astype(np.float32), 20)


def test_iqr_matches_numpy():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 4, 5, 16, 37, 64, 576):
        for _ in range(10):
            x = softmax_spiky(rng, n) if n > 2 else rng.random(n).astype(np.float32)
            xd = x.astype(np.float64)
            q1, q3 = np.percentile(xd, 25), np.percentile(xd, 75)
            want = np.float32((xd > q3 + 1.5 * (q3 - q1)).sum() / n)
            got = iqr_ratio(paddle.to_tensor(x)).numpy()
            assert got == want, (n, got, want)
    xs = np.stack([softmax_spiky(rng, 50) for _ in range(5)])
    got = iqr_ratio(paddle.to_tensor(xs)).numpy()
    want = [np.float32((x > np.percentile(x.astype(np.float64), 75) + 1.5 * (
        np.percentile(x.astype(np.float64), 75) - np.percentile(x.astype(np.float64), 25))).sum() / 50)
        for x in xs]
    np.testing.assert_array_equal(got, np.array(want))
