"""Metrics on known distributions: closed forms of the Frechet distance and of MMD^2, the sampling bias of FD,
brute-force precision/recall, and the textbook failure modes (a shifted set, a collapsed set)."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpy_ref import metrics as M


def random_spd(rng, d, cond=100.0):
    """A random symmetric positive definite (d, d) matrix with eigenvalues spread over [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0 / cond, 1.0, d)) @ q.T


def expected_fd_bias(d, n):
    """E[FD] of two n-sample fits of the same N(mu, I_d): 2d/n from the means, plus d(d+1)/(2(n-1)) from the
    covariances (the Bures metric at I is |dS|_F^2 / 4, and a sample covariance entry has variance 1/(n-1),
    2/(n-1) on the diagonal). Second-order accurate; the test checks it against the simulation too."""
    return 2 * d / n + d * (d + 1) / (2 * (n - 1))


# ----------------------------------------------------------------------------
# Matrix square root and the Frechet distance in closed form
# ----------------------------------------------------------------------------

def test_sqrtm_of_a_diagonal_matrix_is_the_elementwise_root():
    a = np.array([4.0, 9.0, 0.25, 0.0, 1e-12])
    np.testing.assert_allclose(M.sqrtm_psd(np.diag(a)), np.diag(np.sqrt(a)), atol=1e-12)


@given(d=st.integers(1, 24), seed=st.integers(0, 2**31), log_cond=st.floats(0.0, 8.0), rank_drop=st.integers(0, 3))
def test_sqrtm_of_random_spd_and_singular_psd_matrices(d, seed, log_cond, rank_drop):
    rng = np.random.default_rng(seed)
    a = random_spd(rng, d, 10.0 ** log_cond)
    if rank_drop and d > rank_drop:   # a singular PSD matrix, like the covariance of fewer samples than features
        x = rng.standard_normal((d - rank_drop, d))
        a = x.T @ x / d
    r = M.sqrtm_psd(a)
    assert np.isrealobj(r) and np.all(np.isfinite(r))
    np.testing.assert_allclose(r, r.T, atol=1e-12)
    assert np.linalg.eigvalsh(r).min() > -1e-7
    np.testing.assert_allclose(r @ r, a, atol=1e-9 * max(1.0, np.abs(a).max()))


@given(d=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_fd_of_diagonal_gaussians_has_its_closed_form(d, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(0, 3, d), rng.normal(0, 3, d)
    a, b = rng.uniform(0, 5, d), rng.uniform(0, 5, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


@given(d=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_fd_of_random_spd_covariances_matches_the_trace_of_the_product_root(d, seed):
    """Independent route: tr((S1 S2)^1/2) = sum of sqrt of the (real, positive) eigenvalues of S1 S2; and for
    commuting covariances (one eigenbasis) FD = |dmu|^2 + |S1^1/2 - S2^1/2|_F^2."""
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, d, 1e3) * 4, random_spd(rng, d, 1e3)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    cross = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    got = M.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert M.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-6, abs=1e-9)
    assert M.frechet_distance(mu1, s1, mu1, s1) < 1e-9
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0, 3, d), rng.uniform(0, 3, d)
    c1, c2 = (q * a) @ q.T, (q * b) @ q.T
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-7, abs=1e-9)


def test_fd_in_one_dimension_is_the_difference_of_means_and_deviations():
    assert M.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2)


def test_fd_stays_real_when_there_are_more_features_than_samples():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((30, 64)) + 0.5
    fd = M.fd_features(a, b)
    mu1, s1 = M.gaussian_stats(a)
    mu2, s2 = M.gaussian_stats(b)
    cross = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert np.isfinite(fd) and fd == pytest.approx(want, rel=1e-6)


def test_bad_shapes_raise_value_errors():
    with pytest.raises(ValueError, match="shapes do not match"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        M.gaussian_stats(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="same F"):
        M.kid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="k=5 nearest"):
        M.knn_radii(np.zeros((5, 2)), k=5)
    with pytest.raises(ValueError, match="logits"):
        M.class_accuracy(np.zeros((3, 2)), np.zeros(4))


# ----------------------------------------------------------------------------
# FD on samples of known distributions
# ----------------------------------------------------------------------------

def test_fd_of_two_samples_of_one_gaussian_is_its_expected_bias():
    d, n = 8, 2000
    values = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        a, b = rng.standard_normal((n, d)) + 3.0, rng.standard_normal((n, d)) + 3.0
        values.append(M.fd_features(a, b))
    bias = expected_fd_bias(d, n)                      # 0.026
    assert np.mean(values) == pytest.approx(bias, rel=0.15)
    assert max(values) < 3 * bias                      # no single draw is far off either


def test_fd_of_shifted_gaussians_is_the_squared_shift_plus_the_bias():
    d, n = 8, 2000
    delta = np.linspace(-1, 1, d)                     # |delta|^2 = 3.43
    values = []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        a = rng.standard_normal((n, d))
        b = rng.standard_normal((n, d)) + delta
        values.append(M.fd_features(a, b))
    want = np.sum(delta ** 2) + expected_fd_bias(d, n)
    # the shift adds noise: the cross term 2 delta.(mean_a - mean_b) has std 2 |delta| sqrt(2/n)
    assert np.mean(values) == pytest.approx(want, abs=4 * 2 * np.linalg.norm(delta) * np.sqrt(2 / n) / np.sqrt(6))


# ----------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------

def test_mmd2_unbiased_matches_a_double_loop():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.3
    k = lambda x, y: (x @ y / 3 + 1) ** 3  # noqa: E731
    aa = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(5), 2)) / (5 * 4)
    bb = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(4), 2)) / (4 * 3)
    ab = sum(k(x, y) for x in a for y in b) / (5 * 4)
    assert M.mmd2_unbiased(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-12)


def gaussian_mmd2(m1, s1, m2, s2):
    """Population MMD^2 of N(m1, s1) and N(m2, s2) under k = (x.y/d + 1)^3, from the Gaussian moments:
    E k = 1 + 3 E[u] + 3 E[u^2] + E[u^3], u = x.y/d, with E[x_i x_j x_k] = m_i m_j m_k + 3 sym(m_i S_jk)."""
    d = len(m1)

    def cross(ma, sa, mb, sb):
        Ma, Mb = sa + np.outer(ma, ma), sb + np.outer(mb, mb)
        third = lambda m, s: (np.einsum("i,j,k->ijk", m, m, m) + np.einsum("i,jk->ijk", m, s)  # noqa: E731
                              + np.einsum("j,ik->ijk", m, s) + np.einsum("k,ij->ijk", m, s))
        return 1 + 3 * ma @ mb / d + 3 * np.trace(Ma @ Mb) / d ** 2 + np.sum(third(ma, sa) * third(mb, sb)) / d ** 3
    return cross(m1, s1, m1, s1) + cross(m2, s2, m2, s2) - 2 * cross(m1, s1, m2, s2)


def test_kid_matches_the_closed_form_mmd2_of_two_gaussians():
    rng = np.random.default_rng(2)
    d = 4
    m1, m2 = np.zeros(d), np.full(d, 0.4)
    s1, s2 = np.eye(d), random_spd(rng, d, 4.0) * 1.5
    want = gaussian_mmd2(m1, s1, m2, s2)
    a = rng.multivariate_normal(m1, s1, 4000)
    b = rng.multivariate_normal(m2, s2, 4000)
    mean, se = M.kid(a, b, subsets=50, subset_size=500, seed=0)
    assert want > 0.5 and 0 < se < 0.1 * want
    assert abs(mean - want) < 4 * se


def test_kid_of_one_distribution_is_zero_within_its_standard_error():
    rng = np.random.default_rng(3)
    means = []
    for seed in range(5):
        a, b = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
        mean, se = M.kid(a, b, subsets=20, subset_size=200, seed=seed)
        assert abs(mean) < 4 * se
        means.append(mean)
    shifted, se_s = M.kid(rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16)) + 0.3, 20, 200)
    assert shifted > 10 * se_s and shifted > 20 * abs(np.mean(means))


# ----------------------------------------------------------------------------
# Precision and recall
# ----------------------------------------------------------------------------

def test_precision_recall_match_brute_force_loops():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((30, 3)), rng.standard_normal((25, 3)) * 1.5 + 0.5
    k = 3

    def radii(s):
        return np.array([sorted(np.linalg.norm(s - x, axis=1))[k] for x in s])

    def inside(manifold, r, q):
        return np.mean([any(np.linalg.norm(q_i - m) <= r_m for m, r_m in zip(manifold, r)) for q_i in q])

    p, r = M.precision_recall(real, fake, k)
    assert p == pytest.approx(inside(real, radii(real), fake))
    assert r == pytest.approx(inside(fake, radii(fake), real))
    assert 0 < p < 1 and 0 < r < 1                     # the case is not trivial


def test_precision_recall_see_fidelity_and_coverage_apart():
    rng = np.random.default_rng(5)
    n, d = 800, 8
    centres = np.zeros((2, d))
    centres[1, 0] = 20.0
    real = rng.standard_normal((n, d)) + centres[np.arange(n) % 2]
    same = rng.standard_normal((n, d)) + centres[np.arange(n) % 2]
    collapsed = rng.standard_normal((n, d)) + centres[0]          # every sample in one of the two modes
    far = rng.standard_normal((n, d)) + 50.0
    p, r = M.precision_recall(real, same)
    assert p > 0.7 and r > 0.7
    p, r = M.precision_recall(real, collapsed)
    assert p > 0.7 and 0.4 < r < 0.55                  # faithful, but half the data is never produced
    assert M.precision_recall(real, far) == (0.0, 0.0)


def test_class_accuracy_and_compare():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert M.class_accuracy(logits, [0, 1, 2, 1]) == 0.75
    rng = np.random.default_rng(6)
    ref, feats = rng.standard_normal((300, 4)), rng.standard_normal((100, 4)) + 2.0
    out = M.compare(feats, ref, logits[[0, 1, 2, 3] * 25], [0, 1, 2, 1] * 25, kid_subsets=10, kid_subset_size=50)
    assert out["n"] == 100 and out["class_acc"] == 0.75
    assert out["class_acc_per_class"] == [1.0, 0.5, 1.0]   # label 1: one row right, one (the 5.0 row) wrong
    np.testing.assert_array_equal(M.per_class_accuracy(logits[:3], [0, 1, 2], 4), [1.0, 1.0, 1.0, np.nan])
    assert out["fd"] == pytest.approx(M.fd_features(feats, ref))
    assert out["fd"] > 10 and out["kid"] > 5 * out["kid_se"] and out["precision"] < 0.5
    assert M.compare(feats, ref, kid_subsets=10, kid_subset_size=50)["class_acc"] is None
