"""Label differential privacy for released bag counts (pure functions).

Neighbouring data sets differ in the label of one instance (label-DP; images and bag membership,
hence bag sizes, are public). Changing one label moves one unit of count from one class to
another inside one bag, so a bag's count vector has L1 sensitivity 2 and L2 sensitivity sqrt(2).
Bags are disjoint, so releasing every bag's noisy counts once is epsilon-label-DP overall
(parallel composition); everything trained from them afterwards is post-processing.

- "laplace": Laplace(b) noise on each count, b = 2 / epsilon: pure epsilon-label-DP.
- "gaussian": N(0, sigma^2) on each count with sigma from the analytic Gaussian mechanism
  (Balle & Wang, ICML 2018, Theorem 8) for (epsilon, delta), which is exact, unlike the classical
  sqrt(2 ln(1.25/delta)) bound that holds only for epsilon < 1.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

MECHANISMS = ("laplace", "gaussian")
L1_SENSITIVITY = 2.0
L2_SENSITIVITY = math.sqrt(2.0)


def laplace_scale(epsilon: float) -> float:
    """Laplace scale b giving epsilon-label-DP per bag: b = 2 / epsilon."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    return L1_SENSITIVITY / epsilon


def laplace_epsilon(scale: float) -> float:
    """The epsilon of Laplace(scale) noise on bag counts: 2 / scale."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return L1_SENSITIVITY / scale


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, epsilon: float, *, sensitivity: float = L2_SENSITIVITY) -> float:
    """The smallest delta for which N(0, sigma^2) noise is (epsilon, delta)-DP (Balle & Wang, Thm
    8):
    Phi(D/(2s) - e s/D) - exp(e) Phi(-D/(2s) - e s/D), D = L2 sensitivity."""
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    tail = _phi(-a - b)
    return max(0.0, _phi(a - b) - (math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0))


def _bisect(f, lo: float, hi: float, *, iterations: int = 200) -> float:
    """Root of a decreasing function f on [lo, hi] (f(lo) > 0 >= f(hi))."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return hi


def gaussian_sigma(epsilon: float, delta: float) -> float:
    """Smallest sigma making Gaussian noise on bag counts (epsilon, delta)-label-DP."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError(
            f"need epsilon > 0 and 0 < delta < 1, got epsilon={epsilon}, delta={delta}"
        )
    hi = 1.0
    while gaussian_delta(hi, epsilon) > delta:
        hi *= 2
    return _bisect(lambda s: gaussian_delta(s, epsilon) - delta, 1e-12, hi)


def gaussian_epsilon(sigma: float, delta: float) -> float:
    """The epsilon of N(0, sigma^2) noise on bag counts at the given delta."""
    if sigma <= 0 or not 0 < delta < 1:
        raise ValueError(f"need sigma > 0 and 0 < delta < 1, got sigma={sigma}, delta={delta}")
    hi = 1.0
    while gaussian_delta(sigma, hi) > delta:
        hi *= 2
    return _bisect(lambda e: gaussian_delta(sigma, e) - delta, 0.0, hi)


def noise_scale(mechanism: str, *, epsilon: float, delta: float) -> float:
    """Laplace b or Gaussian sigma for the target (epsilon, delta); delta is ignored by Laplace."""
    if mechanism == "laplace":
        return laplace_scale(epsilon)
    if mechanism == "gaussian":
        return gaussian_sigma(epsilon, delta)
    raise ValueError(f"unknown mechanism {mechanism!r}; choose from {MECHANISMS}")


def released_epsilon(mechanism: str, *, scale: float, delta: float) -> float:
    """The epsilon that noise of this scale actually gives (what runs report)."""
    if mechanism == "laplace":
        return laplace_epsilon(scale)
    if mechanism == "gaussian":
        return gaussian_epsilon(scale, delta)
    raise ValueError(f"unknown mechanism {mechanism!r}; choose from {MECHANISMS}")


def noisy_counts(
    counts: np.ndarray, *, mechanism: str, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """counts (B x C) plus independent Laplace(scale) or N(0, scale^2) noise, as float64."""
    counts = np.asarray(counts, dtype=np.float64)
    if mechanism == "laplace":
        return counts + rng.laplace(0.0, scale, size=counts.shape)
    if mechanism == "gaussian":
        return counts + rng.normal(0.0, scale, size=counts.shape)
    raise ValueError(f"unknown mechanism {mechanism!r}; choose from {MECHANISMS}")


def os_entropy_rng() -> np.random.Generator:
    """A numpy generator seeded with 128 bits of the OS's entropy, for the counts' noise under
    privacy.secure_noise (what that gives and does not: :mod:`fedlabel.privacy.noise`)."""
    return np.random.default_rng(secrets.randbits(128))
