"""fedlabel: federated semi-supervised learning simulations (see fedlabel.api)."""

from fedlabel.api import compose, run

__all__ = ["compose", "run"]
