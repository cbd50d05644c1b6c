"""Sample-quality metrics on features (N, F), pure NumPy: Frechet distance, KID, precision/recall, class accuracy.

The features come from the project's own classifier (numpy_ref/features.py), not Inception, so the numbers
compare models within this project, not with published FIDs. Every function works in float64.

    fd = frechet_distance(*gaussian_stats(fake), *gaussian_stats(real))
    kid_mean, kid_se = kid(fake, real)
    precision, recall = precision_recall(real, fake, k=3)
"""
import numpy as np

# ----------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------

def gaussian_stats(features):
    """Mean (F,) and covariance (F, F) (unbiased, 1/(N-1)) of features (N, F), float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(a):
    """Symmetric square root of a symmetric positive semi-definite matrix (F, F) by its eigen-decomposition.
    Eigenvalues below 0 (round-off of a PSD matrix) are set to 0, so the result is real and PSD."""
    a = np.asarray(a, np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)                                      # w (F,), v (F, F)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2).
    The last term equals tr((sigma1 sigma2)^1/2), but the symmetric form stays real and stable for
    singular covariances (features of dimension > N), where sqrtm of the product goes complex."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    r1 = sqrtm_psd(s1)
    m = r1 @ s2 @ r1                                                          # symmetric PSD
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    fd = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross
    return float(max(fd, 0.0))


def fd_features(features_a, features_b):
    """Frechet distance between Gaussians fitted to two feature sets (Na, F), (Nb, F)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


# ----------------------------------------------------------------------------
# Kernel inception distance (on our features)
# ----------------------------------------------------------------------------

def polynomial_kernel(a, b):
    """k(x, y) = (x . y / d + 1)^3 for rows of a (Na, d) and b (Nb, d) -> (Na, Nb)"""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(a, b):
    """Unbiased MMD^2 estimate with the cubic polynomial kernel: a (m, d), b (n, d), m, n >= 2."""
    m, n = len(a), len(b)
    kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2.0 * kab.mean())


def kid(features_a, features_b, subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): unbiased MMD^2 averaged over `subsets` random subsets of subset_size rows
    of each set (smaller when a set is smaller). Returns (mean, standard error).
    Standard error: std of the subset values / sqrt(number of disjoint subsets the smaller set holds); the
    subsets overlap, so dividing by sqrt(subsets) would claim more precision than the data has."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"kid: features must be (N, F) with the same F, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"kid needs at least 2 rows in each set, got {len(a)} and {len(b)}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
                       for _ in range(subsets)])
    disjoint = max(1, min(len(a), len(b)) // m)
    se = values.std(ddof=1) / np.sqrt(min(disjoint, subsets)) if subsets > 1 else float("nan")
    return float(values.mean()), float(se)


# ----------------------------------------------------------------------------
# Precision and recall (Kynkaanniemi et al. 2019)
# ----------------------------------------------------------------------------

def pairwise_distances(a, b, block=2048):
    """Euclidean distances (Na, Nb) between rows of a and b, computed in row blocks (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    b2, minus_2bt = (b * b).sum(1), -2.0 * b.T
    out = np.empty((len(a), len(b)))
    for i in range(0, len(a), block):
        x = a[i:i + block]
        d = out[i:i + block]
        np.matmul(x, minus_2bt, out=d)                                        # in place: these blocks are large
        d += (x * x).sum(1)[:, None]
        d += b2[None, :]
        np.sqrt(np.maximum(d, 0.0, out=d), out=d)
    return out


def knn_radii(features, k=3, block=2048):
    """Distance from each row of features (N, F) to its k-th nearest other row, (N,)."""
    f = np.asarray(features, np.float64)
    if not 1 <= k < len(f):
        raise ValueError(f"k={k} nearest neighbours need k in 1..{len(f) - 1} for {len(f)} rows")
    radii = np.empty(len(f))
    for i in range(0, len(f), block):
        d = pairwise_distances(f[i:i + block], f)
        radii[i:i + block] = np.partition(d, k, axis=1)[:, k]                 # index 0 is the row itself
    return radii


def in_manifold(manifold, radii, queries, block=2048):
    """(Nq,) bool: query q lies in the union of the balls around the manifold rows, |q - m| <= radius_m."""
    inside = np.empty(len(queries), bool)
    for i in range(0, len(queries), block):
        d = pairwise_distances(queries[i:i + block], manifold)               # (block, Nm)
        inside[i:i + block] = (d <= radii[None, :]).any(1)
    return inside


def precision_recall(real, fake, k=3):
    """Improved precision and recall: precision = fraction of fake rows inside the k-NN manifold of the real
    rows (fidelity); recall = fraction of real rows inside the manifold of the fake rows (coverage)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: features must be (N, F) with the same F, got {real.shape} and {fake.shape}")
    precision = in_manifold(real, knn_radii(real, k), fake).mean()
    recall = in_manifold(fake, knn_radii(fake, k), real).mean()
    return float(precision), float(recall)


# ----------------------------------------------------------------------------
# Class accuracy of class-conditional samples
# ----------------------------------------------------------------------------

def class_accuracy(logits, labels):
    """Fraction of rows whose argmax class (logits (N, K)) is the label they were conditioned on (N,)."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"class_accuracy: logits (N, K) and labels (N,) expected, got {logits.shape} and {labels.shape}")
    return float((logits.argmax(1) == labels).mean())


def per_class_accuracy(logits, labels, num_classes):
    """class_accuracy within each label 0..num_classes-1, (num_classes,) float (nan for a label with no rows)."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    hit = logits.argmax(1) == labels
    return np.array([hit[labels == c].mean() if np.any(labels == c) else np.nan for c in range(num_classes)])


# ----------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------

def compare(features, reference, logits=None, labels=None, k=3, kid_subsets=100, kid_subset_size=1000, seed=0,
            reference_stats=None):
    """All metrics of one feature set (N, F) against a reference set (M, F): dict with n, fd, kid, kid_se,
    precision, recall, class_acc and class_acc_per_class (None without logits and labels). reference_stats: precomputed
    gaussian_stats(reference), to fit the reference Gaussian once for several rows."""
    mu_r, s_r = reference_stats if reference_stats is not None else gaussian_stats(reference)
    kid_mean, kid_se = kid(features, reference, kid_subsets, kid_subset_size, seed)
    # k-NN radii shrink as a set grows, so both manifolds are built from the same number of rows
    n = min(len(features), len(reference))
    rng = np.random.default_rng(seed)
    pick = lambda f: f if len(f) == n else f[rng.choice(len(f), n, replace=False)]  # noqa: E731
    precision, recall = precision_recall(pick(reference), pick(features), k)
    acc = class_accuracy(logits, labels) if logits is not None and labels is not None else None
    per_class = None if acc is None else per_class_accuracy(logits, labels, np.asarray(logits).shape[1]).tolist()
    return dict(n=len(features), fd=frechet_distance(*gaussian_stats(features), mu_r, s_r), kid=kid_mean,
                kid_se=kid_se, precision=precision, recall=recall, class_acc=acc, class_acc_per_class=per_class)
