"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020) on each
client's labeled part only: FedAvg whose local objective adds the proximal term
mu/2 ||w - w_global||^2 (the paper's eq. 2) on every local SGD step.

Choices the paper leaves open, as config values (defaults and why):
 - mu=0.01: FedProx tunes mu per data set over {0.001, 0.01, 0.1, 1}; 0.01 is a middle value
   from that grid. With 10 local steps of lr 0.05 the term changes little (it pulls
   by lr*mu = 5e-4 of the distance per step); larger mu trades progress for drift.
 - a fixed number of local steps (tau) for every client: FedProx also allows inexact, variable
   local work per client; the simulator gives every client the same work, like FedAvg here.
 - r_k = number of labeled samples, as FedAvg: the weight the paper uses (n_k).
With data.label_ratio=1.0 this is the paper's "FedProx, 100% labels" reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlabel.algorithms.fedavg import FedAvg, FedAvgParams
from fedlabel.errors import check

MU_DEFAULT = 0.01


def check_mu(mu: float) -> None:
    check(mu >= 0, "algorithm.mu", f"must be >= 0 (0 = FedAvg), got {mu}")


@dataclass(frozen=True)
class FedProxParams(FedAvgParams):
    name: str = "fedprox"
    mu: float = MU_DEFAULT  # proximal coefficient

    def validate(self) -> None:
        super().validate()
        check_mu(self.mu)


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams

    def proximal_mu(self) -> float:
        return self.params.mu
