import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlabel.data import partition_dirichlet, partition_iid, split_labeled

FAST = settings(max_examples=40, deadline=None)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    for part in parts:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@FAST
@given(n=st.integers(1, 500), k=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_iid_exact_cover_near_equal(n, k, seed):
    k = min(k, n)
    parts = partition_iid(n, num_clients=k, rng=rng(seed))
    assert len(parts) == k
    assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_shuffled_and_rejects_bad_counts():
    parts = partition_iid(100, num_clients=2, rng=rng())
    assert not np.array_equal(parts[0], np.arange(50))
    for k in (0, 101):
        with pytest.raises(ValueError, match="num_clients"):
            partition_iid(100, num_clients=k, rng=rng())


@FAST
@given(
    labels=st.lists(st.integers(0, 9), min_size=40, max_size=400),
    k=st.integers(1, 8),
    alpha=st.floats(0.05, 100.0),
    min_size=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_exact_cover_and_min_size(labels, k, alpha, min_size, seed):
    labels = np.array(labels)
    try:
        parts = partition_dirichlet(
            labels, num_clients=k, alpha=alpha, min_client_size=min_size, rng=rng(seed)
        )
    except ValueError as err:  # allowed only as the documented give-up
        assert "failed 100 times" in str(err)
        return
    assert len(parts) == k
    assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= min_size


def test_dirichlet_gives_up_with_a_clear_message():
    with pytest.raises(ValueError, match=r"alpha=0.5, num_clients=10, min_client_size=11"):
        partition_dirichlet(
            np.arange(100) % 10,
            num_clients=10,
            alpha=0.5,
            min_client_size=11,
            rng=rng(),
            max_tries=5,
        )
    with pytest.raises(ValueError, match="alpha > 0"):
        partition_dirichlet(
            np.arange(100) % 10, num_clients=10, alpha=0.0, min_client_size=1, rng=rng()
        )
    with pytest.raises(ValueError, match="1-D integer"):
        partition_dirichlet(np.zeros(10), num_clients=2, alpha=1.0, min_client_size=1, rng=rng())


def mean_max_class_share(labels: np.ndarray, alpha: float) -> float:
    parts = partition_dirichlet(labels, num_clients=20, alpha=alpha, min_client_size=5, rng=rng(3))
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 500)
    skewed, mild, flat = (mean_max_class_share(labels, a) for a in (0.05, 1.0, 10.0))
    assert skewed > mild > flat
    assert skewed > 0.6 and flat < 0.3


def test_dirichlet_same_seed_same_partition():
    labels = np.repeat(np.arange(10), 100)
    a = partition_dirichlet(labels, num_clients=7, alpha=0.3, min_client_size=5, rng=rng(11))
    b = partition_dirichlet(labels, num_clients=7, alpha=0.3, min_client_size=5, rng=rng(11))
    c = partition_dirichlet(labels, num_clients=7, alpha=0.3, min_client_size=5, rng=rng(12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@FAST
@given(
    n=st.integers(0, 300),
    ratio=st.floats(0.0, 1.0),
    class_alpha=st.sampled_from([0.0, 0.01, 0.5, 5.0]),
    seed=st.integers(0, 2**32),
)
def test_split_labeled_disjoint_complete_count(n, ratio, class_alpha, seed):
    generator = rng(seed)
    labels = generator.integers(0, 10, 1000)
    indices = generator.choice(1000, size=n, replace=False)
    labeled, unlabeled = split_labeled(
        indices, labels, label_ratio=ratio, rng=generator, labeled_class_alpha=class_alpha
    )
    assert len(labeled) == round(ratio * n)
    assert np.intersect1d(labeled, unlabeled).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([labeled, unlabeled])), np.sort(indices))
    for part in (labeled, unlabeled):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def class_mix_distance(class_alpha: float) -> float:
    labels = np.repeat(np.arange(10), 500)
    indices = np.arange(len(labels))
    labeled, unlabeled = split_labeled(
        indices, labels, label_ratio=0.2, rng=rng(5), labeled_class_alpha=class_alpha
    )
    p = np.bincount(labels[labeled], minlength=10) / len(labeled)
    q = np.bincount(labels[unlabeled], minlength=10) / len(unlabeled)
    return 0.5 * float(np.abs(p - q).sum())  # total variation distance


def test_labeled_class_alpha_changes_the_class_mix():
    assert class_mix_distance(0.0) < 0.05
    assert class_mix_distance(0.3) > 0.3


def test_split_labeled_edges():
    labels = np.arange(20) % 3
    labeled, unlabeled = split_labeled(np.arange(20), labels, label_ratio=1.0, rng=rng())
    assert unlabeled.size == 0 and labeled.tolist() == list(range(20))
    labeled, unlabeled = split_labeled(
        np.arange(5), labels, label_ratio=0.05, rng=rng(), labeled_class_alpha=1.0
    )
    assert labeled.size == 0 and unlabeled.tolist() == list(range(5))
    with pytest.raises(ValueError, match="label_ratio"):
        split_labeled(np.arange(5), labels, label_ratio=1.5, rng=rng())


class RecordingRng:
    """Delegates to a Generator and records the class weights q drawn by split_labeled."""

    def __init__(self, seed: int):
        self.generator, self.q = rng(seed), None

    def dirichlet(self, alpha):
        self.q = self.generator.dirichlet(alpha)
        return self.q

    def __getattr__(self, name):
        return getattr(self.generator, name)


@pytest.mark.parametrize("seed", range(5))
def test_labeled_mix_follows_the_drawn_class_weights(seed):
    labels = np.repeat(np.arange(10), 500)
    spy = RecordingRng(seed)
    labeled, _ = split_labeled(
        np.arange(5000), labels, label_ratio=0.05, rng=spy, labeled_class_alpha=1.0
    )
    counts = np.bincount(labels[labeled], minlength=10)
    assert np.corrcoef(counts, spy.q)[0, 1] > 0.8
    assert 0.5 * np.abs(counts / counts.sum() - spy.q).sum() < 0.15  # total variation distance
