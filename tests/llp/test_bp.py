"""Loopy BP against exact marginals by enumeration, and the LLP MRF's construction."""

import itertools

import pytest
import torch

from fedlabel.data.bags import BpParams
from fedlabel.llp.bp import PottsMRF, knn_edges, llp_mrf, loopy_bp


def exact_marginals(mrf: PottsMRF) -> torch.Tensor:
    """Brute force: sum exp(score) over all C^N labelings."""
    n, c = mrf.log_unary.shape
    marg = torch.zeros(n, c, dtype=torch.float64)
    states = torch.tensor(list(itertools.product(range(c), repeat=n)))
    score = mrf.log_unary.double()[torch.arange(n), states].sum(dim=1)
    for e, (i, j) in enumerate(mrf.edges.tolist()):
        score += mrf.coupling.double()[e] * (states[:, i] == states[:, j])
    weight = (score - score.max()).exp()
    for i in range(n):
        marg[i] = torch.zeros(c, dtype=torch.float64).index_add_(0, states[:, i], weight)
    return marg / marg.sum(dim=1, keepdim=True)


def random_mrf(edges, *, n, c, strength, seed):
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor(edges)
    return PottsMRF(
        log_unary=torch.randn(n, c, generator=g, dtype=torch.float64),
        edges=edges,
        coupling=strength * torch.randn(len(edges), generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_tree_marginals_are_exact(damping):
    # 7 nodes, 3 states, random unaries and attracting/repelling couplings on a tree of depth 3.
    mrf = random_mrf(
        [(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (5, 6)], n=7, c=3, strength=2.0, seed=0
    )
    got = loopy_bp(mrf, iterations=100, damping=damping)
    assert torch.allclose(got, exact_marginals(mrf), atol=1e-6, rtol=0)


def test_strong_couplings_stay_finite_and_exact_on_a_chain():
    # Couplings of +-40 (messages near 0 and 1): the O(C) Potts update must not cancel.
    mrf = PottsMRF(
        log_unary=torch.tensor(
            [[0.0, 1.0, -1.0], [0.5, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64
        ),
        edges=torch.tensor([[0, 1], [1, 2]]),
        coupling=torch.tensor([40.0, -40.0], dtype=torch.float64),
    )
    got = loopy_bp(mrf, iterations=50, damping=0.0)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, exact_marginals(mrf), atol=1e-6, rtol=0)


def test_loopy_graph_marginals_are_close():
    # A 3x3 grid (loops of length 4) with moderate couplings: loopy BP is approximate; with
    # couplings of this size its marginals are within 0.05 of the exact ones.
    grid = [(r * 3 + col, r * 3 + col + 1) for r in range(3) for col in range(2)]
    grid += [(r * 3 + col, (r + 1) * 3 + col) for r in range(2) for col in range(3)]
    mrf = random_mrf(grid, n=9, c=3, strength=0.5, seed=1)
    got = loopy_bp(mrf, iterations=200, damping=0.5)
    assert (got - exact_marginals(mrf)).abs().max() < 0.05


def test_llp_mrf_marginals_match_enumeration_on_a_small_bagged_graph():
    # Two bags of 3 (dense bag cliques = loopy): the LLP potentials, exact vs BP.
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(6, 4, generator=g)
    bag_index = torch.tensor([0, 0, 0, 1, 1, 1])
    counts = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    mrf = llp_mrf(
        emb, bag_index, counts, params=BpParams(neighbors=2, lambda_similarity=0.5, lambda_bag=1.0)
    )
    got = loopy_bp(mrf, iterations=200, damping=0.5)
    exact = exact_marginals(mrf)
    assert (got - exact).abs().max() < 0.05
    assert torch.equal(got.argmax(1), exact.argmax(1))


def test_llp_mrf_energy_equals_the_gibbs_energy():
    # log p(y) from the MRF's potentials equals -(lambda_s kNN disagreements + lambda_b / n_b
    # count error) up to one constant shared by every labeling.
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(5, 3, generator=g)
    bag_index = torch.tensor([0, 0, 1, 1, 1])
    counts = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    params = BpParams(neighbors=2, lambda_similarity=0.7, lambda_bag=0.4)
    mrf = llp_mrf(emb, bag_index, counts, params=params)
    knn, sim = knn_edges(emb, k=2)
    diffs = []
    for y in itertools.product(range(2), repeat=5):
        y = torch.tensor(y)
        score = (
            mrf.log_unary[torch.arange(5), y].sum()
            + (mrf.coupling * (y[mrf.edges[:, 0]] == y[mrf.edges[:, 1]])).sum()
        )
        onehot = torch.nn.functional.one_hot(y, 2).double()
        per_bag = torch.zeros(2, 2, dtype=torch.float64).index_add_(0, bag_index, onehot)
        energy = params.lambda_similarity * (sim.double() * (y[knn[:, 0]] != y[knn[:, 1]])).sum()
        sizes = torch.tensor([[2.0], [3.0]], dtype=torch.float64)
        energy += (params.lambda_bag / sizes * (per_bag - counts.double()) ** 2).sum()
        diffs.append(float(score + energy))
    assert max(diffs) - min(diffs) < 1e-9


def test_knn_edges_are_unique_symmetric_and_weighted():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    edges, sim = knn_edges(emb, k=1)
    assert edges.tolist() == [[0, 1], [2, 3]]
    assert torch.all((sim > 0) & (sim <= 1))
