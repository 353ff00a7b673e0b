"""Is a commit good or bad? Pure functions over a step's metric values.

A step's values are summarised by their median and a distribution-free
confidence interval for the median (order statistics: the interval between
the k-th smallest and the k-th largest value covers the true median with a
probability that depends only on n and k). The commit is good when the whole
interval lies on the good side of the threshold, bad when it lies on the bad
side, and undecided when it straddles it; the caller then adds runs, up to a
bound, and skips the commit if it is still undecided.
"""

import math
from dataclasses import dataclass

from vnuma_sched.experiments import stats

GOOD, BAD, UNDECIDED = "good", "bad", "undecided"
LEVEL = 0.9      # wanted coverage of a step's median interval
ALPHA = 0.05     # endpoint check: Mann-Whitney significance


def median_coverage(n, k):
    """P(k-th smallest <= median <= k-th largest) for n values of a continuous variable."""
    tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
    return 1 - 2 * tail


def median_interval(values, level=LEVEL):
    """(low, high, coverage): the narrowest order-statistic interval with coverage >= level,
    or the full range (and its lower coverage) when n is too small to reach it."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    n = len(xs)
    k = 1
    while k + 1 <= (n + 1) // 2 and median_coverage(n, k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k], median_coverage(n, k)


@dataclass
class Verdict:
    verdict: str
    median: float
    low: float
    high: float
    coverage: float
    n: int

    def to_dict(self):
        return {"verdict": self.verdict, "median": self.median, "interval": [self.low, self.high],
                "coverage": round(self.coverage, 4), "n": self.n}


def decide(values, threshold, bad_above, level=LEVEL):
    """The verdict of one step: good, bad or undecided (the interval straddles the threshold)."""
    low, high, cov = median_interval(values, level)
    if bad_above:
        side = BAD if low > threshold else GOOD if high < threshold else UNDECIDED
    else:
        side = BAD if high < threshold else GOOD if low > threshold else UNDECIDED
    return Verdict(side, stats.median(values), low, high, cov, len(values))


class EndpointsAlike(Exception):
    """Good and bad do not differ significantly: there is nothing to bisect."""


@dataclass
class Endpoints:
    good_median: float
    bad_median: float
    ratio: float
    ci95: list
    p: float
    bad_above: bool
    threshold: float

    def to_dict(self):
        return dict(self.__dict__)


def auto_threshold(good, bad, good_median, bad_median):
    """Midway across the gap between the two endpoints' runs when they do not overlap (the
    widest margin on both sides: a skewed or two-mode endpoint still decides), else midway
    between the medians."""
    low, high = (good, bad) if bad_median > good_median else (bad, good)
    if max(low) < min(high):
        return (max(low) + min(high)) / 2
    return (good_median + bad_median) / 2


def endpoints(good, bad, threshold=None, bad_above=None, alpha=ALPHA):
    """Check that bad differs from good (Mann-Whitney p <= alpha) and derive the direction
    and the threshold (auto_threshold unless given). Raises EndpointsAlike or
    ValueError (a given threshold or direction that contradicts the endpoints)."""
    cmp = stats.compare(good, bad)
    mg, mb = cmp["a_median"], cmp["b_median"]
    if cmp["p"] > alpha or mg == mb:
        raise EndpointsAlike(cmp)
    observed_above = mb > mg
    if bad_above is not None and bad_above != observed_above:
        raise ValueError(f"the bad endpoint's median ({mb:g}) is "
                         f"{'above' if observed_above else 'below'} the good one's ({mg:g})")
    if threshold is None:
        threshold = auto_threshold(good, bad, mg, mb)
    elif not min(mg, mb) < threshold < max(mg, mb):
        raise ValueError(f"threshold {threshold:g} is not between the good median ({mg:g}) "
                         f"and the bad median ({mb:g})")
    return Endpoints(mg, mb, cmp["ratio"], cmp["ci95"], cmp["p"], observed_above, threshold)


def min_runs_for(alpha=ALPHA):
    """The fewest runs per endpoint for which Mann-Whitney can reach p <= alpha."""
    n = 1
    while 2 / math.comb(2 * n, n) > alpha:
        n += 1
    return n


def estimate_steps(candidates):
    """About how many steps git bisect needs for this many candidate commits."""
    return math.ceil(math.log2(candidates)) if candidates > 1 else 0
