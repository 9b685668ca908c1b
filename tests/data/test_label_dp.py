"""Label-DP noise on bag counts: the noise has the scale its epsilon promises."""

import math

import numpy as np
import pytest

from fedlabel.data import label_dp


def test_laplace_noise_has_scale_two_over_epsilon():
    epsilon = 0.5
    scale = label_dp.noise_scale("laplace", epsilon=epsilon, delta=1e-5)
    assert scale == pytest.approx(4.0) and label_dp.released_epsilon(
        "laplace", scale=scale, delta=1e-5
    ) == pytest.approx(epsilon)
    counts = np.zeros((50_000, 4), dtype=np.int64)
    noise = label_dp.noisy_counts(
        counts, mechanism="laplace", scale=scale, rng=np.random.default_rng(0)
    ).ravel()
    # Laplace(b): E|X| = b, Var = 2 b^2, P(|X| > t) = exp(-t / b). n = 200,000 draws: the standard
    # error of the mean |X| is b / sqrt(n) = 0.009, so 2% is over 8 standard errors.
    assert abs(noise.mean()) < 0.05
    assert np.abs(noise).mean() == pytest.approx(scale, rel=0.02)
    assert noise.std() == pytest.approx(math.sqrt(2) * scale, rel=0.02)
    for t in (2.0, 8.0):
        assert (np.abs(noise) > t).mean() == pytest.approx(math.exp(-t / scale), rel=0.03)


def test_laplace_privacy_loss_between_neighbouring_bags_is_at_most_epsilon():
    # Neighbouring bags: one label moves from class 0 to class 1. The log density ratio of any
    # released vector is (|x - k'|_1 - |x - k|_1) / b <= 2 / b = epsilon, reached far out.
    epsilon = 0.8
    scale = label_dp.laplace_scale(epsilon)
    k, k2 = np.array([3, 1, 0]), np.array([2, 2, 0])
    x = label_dp.noisy_counts(
        np.tile(k, (20_000, 1)), mechanism="laplace", scale=scale, rng=np.random.default_rng(1)
    )
    loss = (np.abs(x - k2).sum(1) - np.abs(x - k).sum(1)) / scale
    assert loss.max() <= epsilon + 1e-12
    assert loss.max() == pytest.approx(epsilon)


def _delta_by_integration(sigma: float, epsilon: float) -> float:
    """delta(epsilon) = E[(1 - exp(epsilon - L))_+], L ~ N(mu^2/2, mu^2), mu = sqrt(2)/sigma (the
    privacy loss of the Gaussian mechanism), by numerical integration."""
    mu = math.sqrt(2.0) / sigma
    grid = np.linspace(mu * mu / 2 - 40 * mu, mu * mu / 2 + 40 * mu, 2_000_001)
    density = np.exp(-((grid - mu * mu / 2) ** 2) / (2 * mu * mu)) / (mu * math.sqrt(2 * math.pi))
    return float(np.trapezoid(np.clip(1 - np.exp(epsilon - grid), 0, None) * density, grid))


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_gaussian_sigma_meets_delta_exactly(epsilon):
    delta = 1e-5
    sigma = label_dp.gaussian_sigma(epsilon, delta)
    assert _delta_by_integration(sigma, epsilon) == pytest.approx(delta, rel=1e-3)
    assert label_dp.gaussian_epsilon(sigma, delta) == pytest.approx(epsilon, rel=1e-6)
    if epsilon < 1:  # the classical bound (valid for epsilon < 1) is looser
        assert sigma < math.sqrt(2 * math.log(1.25 / delta)) * math.sqrt(2) / epsilon


def test_gaussian_noise_has_the_calibrated_standard_deviation():
    sigma = label_dp.noise_scale("gaussian", epsilon=1.0, delta=1e-5)
    noise = label_dp.noisy_counts(
        np.zeros((50_000, 4)), mechanism="gaussian", scale=sigma, rng=np.random.default_rng(2)
    )
    assert noise.std() == pytest.approx(sigma, rel=0.01)


def test_more_privacy_means_more_noise():
    scales = [
        label_dp.noise_scale(m, epsilon=e, delta=1e-5)
        for m in ("laplace", "gaussian")
        for e in (4.0, 1.0, 0.25)
    ]
    assert scales[0] < scales[1] < scales[2] and scales[3] < scales[4] < scales[5]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="epsilon"):
        label_dp.laplace_scale(0.0)
    with pytest.raises(ValueError, match="mechanism"):
        label_dp.noise_scale("uniform", epsilon=1.0, delta=1e-5)
