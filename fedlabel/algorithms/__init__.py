"""Algorithm registry: every ``algorithm.name`` -> its Preset, the core algorithm it runs and the
Params values it sets. Six core algorithms (FedAvg, FixMatch, UDA, FedLabel, FedMatch, FedTriNet)
carry the client updates; the other names are presets of them (FedProx = FedAvg with mu, the
Table 1 ablations = FedLabel with the expert fixed, fedlabel_paper = FedLabel as its equations are
written).

    params = ALGORITHMS["fedprox"].params(lr=0.1)  # FedAvgParams(name="fedprox", mu=0.01, lr=0.1)
    algorithm = build_algorithm(params)            # a FedAvg

A new variant of an existing algorithm is one Preset line below; a new algorithm is its module
(its Algorithm subclass and Params) plus one Preset line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedlabel.algorithms.base import Algorithm, AlgorithmParams, ClientUpdate
from fedlabel.algorithms.fedavg import FEDPROX_MU, FedAvg
from fedlabel.algorithms.fedlabel import FEDLABEL_PAPER, FedLabel
from fedlabel.algorithms.fedmatch import FedMatch
from fedlabel.algorithms.fedtrinet import FedTriNet
from fedlabel.algorithms.fixmatch import FixMatch
from fedlabel.algorithms.uda import Uda
from fedlabel.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A selectable algorithm name: its core ``algorithm`` with Params ``defaults`` (a config
    may change them) and ``fixed`` values (a config may not: any other value is a ConfigError)."""

    name: str
    algorithm: type[Algorithm]
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """The Params keys a config may set for this name (all but name and the fixed ones)."""
        fields = dataclasses.fields(self.algorithm.Params)
        return [f.name for f in fields if f.name != "name" and f.name not in self.fixed]

    def params(self, **values: Any) -> AlgorithmParams:
        """This name's Params: its defaults and fixed values, then ``values``."""
        params = self.algorithm.Params(
            **{**self.defaults, **self.fixed, **values, "name": self.name}
        )
        self.check(params)
        return params

    def check(self, params: AlgorithmParams) -> None:
        """ConfigError naming the first fixed key that ``params`` changes."""
        for key, value in self.fixed.items():
            got = getattr(params, key)
            if got != value:
                free = next(
                    n
                    for n, p in ALGORITHMS.items()
                    if p.algorithm is self.algorithm and not p.fixed
                )
                raise ConfigError(
                    f"algorithm.{key}: {self.name} fixes it to {value!r}, got {got!r}; "
                    f"use algorithm={free} to choose it"
                )


FEDPROX = {"mu": FEDPROX_MU}

ALGORITHMS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("fedavg", FedAvg),
        Preset("fedlabel", FedLabel),
        Preset("fedprox", FedAvg, defaults=FEDPROX),
        Preset("fedavg_fixmatch", FixMatch),
        Preset("fedprox_fixmatch", FixMatch, defaults=FEDPROX),
        Preset("fedavg_uda", Uda),
        Preset("fedprox_uda", Uda, defaults=FEDPROX),
        Preset("fedlabel_local_only", FedLabel, fixed={"expert": "local"}),
        Preset("fedlabel_global_only", FedLabel, fixed={"expert": "global"}),
        Preset("fedlabel_paper", FedLabel, fixed=FEDLABEL_PAPER),
        Preset("fedmatch", FedMatch),
        Preset("fedtrinet", FedTriNet),
    )
}

# Every algorithm's own rounds.csv columns, in registry order: each run's records carry all of
# them (None where its algorithm reports none), so runs of different algorithms line up.
ROUND_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(f for p in ALGORITHMS.values() for f in p.algorithm.round_fields)
)


def build_algorithm(params: AlgorithmParams) -> Algorithm:
    """The algorithm that runs ``params`` (its name picks the core algorithm)."""
    return ALGORITHMS[params.name].algorithm(params)


__all__ = [
    "ALGORITHMS",
    "ROUND_FIELDS",
    "Algorithm",
    "AlgorithmParams",
    "ClientUpdate",
    "Preset",
    "build_algorithm",
]
