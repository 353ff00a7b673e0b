"""A/B statistics, small and exact where it matters: medians, a bootstrap
confidence interval for the ratio of medians, and the Mann-Whitney U test
(exact for small samples without ties, normal approximation with tie
correction otherwise). Pure functions; a seeded RNG keeps reports reproducible."""

import itertools
import math
import random
import statistics


def median(xs):
    if not xs:
        raise ValueError("median of no values")
    return statistics.median(xs)


def ratio(a, b):
    """median(b) / median(a); None when median(a) is 0."""
    ma = median(a)
    return None if ma == 0 else median(b) / ma


def bootstrap_ratio_ci(a, b, level=0.95, resamples=5000, seed=1):
    """Percentile bootstrap interval for median(b)/median(a)."""
    rng = random.Random(seed)
    out = []
    for _ in range(resamples):
        ra = [rng.choice(a) for _ in a]
        rb = [rng.choice(b) for _ in b]
        ma = median(ra)
        if ma != 0:
            out.append(median(rb) / ma)
    if not out:
        return None
    out.sort()
    lo = out[int((1 - level) / 2 * (len(out) - 1))]
    hi = out[int((1 + level) / 2 * (len(out) - 1))]
    return lo, hi


def _ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney(a, b):
    """(U of a, two-sided p). Exact enumeration when n_a + n_b <= 20 and no ties."""
    na, nb = len(a), len(b)
    if not na or not nb:
        raise ValueError("both samples need values")
    pooled = list(a) + list(b)
    ranks = _ranks(pooled)
    u_a = sum(ranks[:na]) - na * (na + 1) / 2
    ties = len(set(pooled)) != len(pooled)
    if not ties and na + nb <= 20:
        return u_a, _exact_p(u_a, na, nb)
    mu = na * nb / 2
    counts = [pooled.count(v) for v in set(pooled)]
    n = na + nb
    var = na * nb / 12 * ((n + 1) - sum(t ** 3 - t for t in counts) / (n * (n - 1)))
    if var == 0:
        return u_a, 1.0
    z = (abs(u_a - mu) - 0.5) / math.sqrt(var)  # continuity correction
    return u_a, min(1.0, math.erfc(max(z, 0) / math.sqrt(2)))


def _exact_p(u, na, nb):
    n = na + nb
    mu = na * nb / 2
    extreme = abs(u - mu)
    count = total = 0
    for combo in itertools.combinations(range(1, n + 1), na):
        total += 1
        uc = sum(combo) - na * (na + 1) / 2
        if abs(uc - mu) >= extreme - 1e-9:
            count += 1
    return count / total


def compare(a, b, level=0.95):
    """The metric summary an A/B report shows."""
    u, p = mann_whitney(a, b)
    r = ratio(a, b)
    ci = bootstrap_ratio_ci(a, b, level)
    noisy = ci is not None and r is not None and ci[0] < 1 < ci[1] and p > 0.05
    return {"a_median": median(a), "b_median": median(b), "ratio": r,
            "ci95": list(ci) if ci else None, "p": p, "u": u, "n": [len(a), len(b)],
            "inconclusive": noisy}


def iqr(xs):
    """Interquartile range (inclusive quartiles); None for fewer than 2 values."""
    if len(xs) < 2:
        return None
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q3 - q1


def spread(groups):
    """One arm's values grouped by boot: the pooled median and count, each boot's
    median, the spread between boots (IQR of the per-boot medians) and within a boot
    (median of the per-boot IQRs), and whether the first is the larger."""
    groups = [g for g in groups if g]
    meds = [median(g) for g in groups]
    inside = [iqr(g) for g in groups if len(g) >= 2]
    between, within = iqr(meds), (median(inside) if inside else None)
    return {"median": median([v for g in groups for v in g]),
            "n": sum(map(len, groups)), "boot_medians": meds,
            "between_boots_iqr": between, "within_boot_iqr": within,
            "boots_dominate": None if between is None or within is None else between > within}
