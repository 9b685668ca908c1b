"""LLP by belief propagation (Havaldar et al., ICLR 2024, arXiv 2310.08056), C-state version.

Pseudo-labels for a client's bagged images are the marginal argmaxes of the Gibbs distribution

    p(y) ~ exp( - lambda_s sum_{(i,j) kNN} s_ij [y_i != y_j]
                - lambda_b sum_b sum_c (sum_{i in b} [y_i = c] - k_bc)^2 ).

With one-hot labels, [y_i = c]^2 = [y_i = c], so the bag term expands to unary energies
lambda_b (1 - 2 k_bc) for each member of bag b and a pairwise energy 2 lambda_b [y_i = y_j] for
every pair inside a bag; a kNN edge adds -lambda_s s_ij [y_i = y_j] (up to a constant). Every
edge is thus a Potts potential, and edges that are both kNN and bag pairs add their energies.
Marginals come from loopy sum-product BP in the log domain with damping, all directed messages
updated at once (flooding schedule).

Choices the paper leaves open (config values in data.bp_*, defaults and why):
 - kNN on cosine similarity of the model's penultimate embedding, k = 5 (the authors' code);
   edge weight s_ij = exp(-d_ij^2 / median d^2) with d the distance of the L2-normalised
   embeddings over the kNN edges (a self-tuning Gaussian kernel; the paper only says "kernel").
 - lambda_s = lambda_b = 10, 100 iterations, damping 0.5: the authors' code.
 - the bag counts k_bc are the released (possibly noisy) proportions times the bag size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BpParams:
    neighbors: int = 5
    lambda_similarity: float = 10.0
    lambda_bag: float = 10.0
    iterations: int = 100
    damping: float = 0.5
    bag_loss_weight: float = 0.0  # > 0 adds this times the DLLP loss to the pseudo-label CE (paper: 0.1 optional)


@dataclass(frozen=True)
class PairwiseMRF:
    """log_unary (N x C), edges (E x 2, i < j), log_pair (E x C x C, [state of i, state of j])."""

    log_unary: torch.Tensor
    edges: torch.Tensor
    log_pair: torch.Tensor


def knn_edges(embeddings: torch.Tensor, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrised cosine kNN graph: (edges E x 2 with i < j, unique; weights s_ij in (0, 1])."""
    n = len(embeddings)
    k = min(k, n - 1)
    if k < 1:
        return torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0)
    z = torch.nn.functional.normalize(embeddings.double(), dim=1)
    cos = z @ z.T
    cos.fill_diagonal_(-float("inf"))
    nearest = cos.topk(k, dim=1).indices
    i = torch.arange(n).repeat_interleave(k)
    j = nearest.reshape(-1)
    pairs = torch.unique(torch.stack([torch.minimum(i, j), torch.maximum(i, j)], dim=1), dim=0)
    dist2 = (2 - 2 * cos[pairs[:, 0], pairs[:, 1]]).clamp_min(0)
    scale = dist2.median().clamp_min(1e-12)
    return pairs, torch.exp(-dist2 / scale).float()


def _bag_pairs(bag_index: torch.Tensor) -> torch.Tensor:
    """Every pair (i < j) of instances in the same bag, E x 2."""
    pairs = [torch.combinations(torch.nonzero(bag_index == b).flatten(), 2) for b in torch.unique(bag_index)]
    pairs = [p for p in pairs if len(p)]
    return torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.int64)


def llp_mrf(embeddings: torch.Tensor, bag_index: torch.Tensor, bag_counts: torch.Tensor, *, params: BpParams) -> PairwiseMRF:
    """The C-state pairwise MRF of the module docstring. bag_counts: target k_bc, B x C."""
    n, num_classes = len(embeddings), bag_counts.shape[1]
    lam_b = params.lambda_bag
    log_unary = -lam_b * (1 - 2 * bag_counts.double()[bag_index])
    knn, sim = knn_edges(embeddings, k=params.neighbors)
    inside = _bag_pairs(bag_index)
    all_pairs = torch.cat([knn, inside])
    energy = torch.cat([-params.lambda_similarity * sim.double(), torch.full((len(inside),), 2.0 * lam_b, dtype=torch.float64)])
    edges, which = torch.unique(all_pairs[:, 0] * n + all_pairs[:, 1], return_inverse=True)
    same_state = torch.zeros(len(edges), dtype=torch.float64).index_add_(0, which, energy)
    eye = torch.eye(num_classes, dtype=torch.float64)
    return PairwiseMRF(
        log_unary=log_unary,
        edges=torch.stack([edges // n, edges % n], dim=1),
        log_pair=-same_state[:, None, None] * eye,
    )


def loopy_bp(mrf: PairwiseMRF, *, iterations: int, damping: float) -> torch.Tensor:
    """Sum-product BP marginals (N x C, float64) of p(y) ~ exp(sum_i u_i(y_i) + sum_e P_e(y_i, y_j)).

    Messages live in the log domain; damping d mixes new and old messages as
    (1 - d) m_new + d m_old. Exact on a tree once ``iterations`` exceeds its diameter (slower
    with damping); an approximation on loopy graphs."""
    if not 0 <= damping < 1:
        raise ValueError(f"damping must be in [0, 1), got {damping}")
    unary = mrf.log_unary.double()
    n, c = unary.shape
    src = torch.cat([mrf.edges[:, 0], mrf.edges[:, 1]])
    dst = torch.cat([mrf.edges[:, 1], mrf.edges[:, 0]])
    pair = mrf.log_pair.double()
    pair = torch.cat([pair, pair.transpose(1, 2)])  # [state of src, state of dst]
    num_edges = len(mrf.edges)
    reverse = torch.arange(2 * num_edges).add(num_edges).remainder(2 * num_edges)
    msgs = torch.full((2 * num_edges, c), -torch.log(torch.tensor(float(c), dtype=torch.float64)).item(), dtype=torch.float64)

    def beliefs(m: torch.Tensor) -> torch.Tensor:
        return unary.index_add(0, dst, m)

    for _ in range(iterations if num_edges else 0):
        cavity = beliefs(msgs)[src] - msgs[reverse]
        new = torch.logsumexp(cavity[:, :, None] + pair, dim=1)
        new = new - torch.logsumexp(new, dim=1, keepdim=True)
        if damping:
            new = torch.logaddexp(new + torch.log1p(torch.tensor(-damping)).item(), msgs + torch.log(torch.tensor(damping)).item())
        msgs = new
    return beliefs(msgs).softmax(dim=1)
