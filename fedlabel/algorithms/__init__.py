"""Algorithm registry: name -> class. Each class carries its frozen ``Params`` dataclass."""

from fedlabel.algorithms.base import Algorithm, AlgorithmParams, ClientUpdate
from fedlabel.algorithms.fedavg import FedAvg
from fedlabel.algorithms.fedlabel import FedLabel
from fedlabel.algorithms.fedlabel_ablation import FedLabelGlobalOnly, FedLabelLocalOnly
from fedlabel.algorithms.fedmatch import FedMatch
from fedlabel.algorithms.fedprox import FedProx
from fedlabel.algorithms.fedtrinet import FedTriNet
from fedlabel.algorithms.fixmatch import FedAvgFixMatch, FedProxFixMatch
from fedlabel.algorithms.uda import FedAvgUda, FedProxUda

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (FedAvg, FedLabel)
    + (FedProx, FedAvgFixMatch, FedProxFixMatch, FedAvgUda, FedProxUda, FedLabelLocalOnly, FedLabelGlobalOnly)
    + (FedMatch, FedTriNet)
}

# Every algorithm's own rounds.csv columns, in registry order: each run's records carry all of
# them (None where its algorithm reports none), so runs of different algorithms line up.
ROUND_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for cls in ALGORITHMS.values() for f in cls.round_fields))


def build_algorithm(params: AlgorithmParams) -> Algorithm:
    return ALGORITHMS[params.name](params)


__all__ = ["ALGORITHMS", "ROUND_FIELDS", "Algorithm", "AlgorithmParams", "ClientUpdate", "build_algorithm"]
