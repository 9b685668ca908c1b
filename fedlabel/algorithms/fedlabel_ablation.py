"""FedLabel with the pseudo-labeling expert fixed: the FedLabel paper's Table 1 ablation
("who pseudo-labels"). Everything else is FedLabel (fedlabel.py) unchanged:

 - fedlabel_local_only: the local model w_L (after its tau labeled steps) is always the expert
   s*, the global model always s-;
 - fedlabel_global_only: the global model w is always the expert, the local model s-.

The threshold beta still applies to the fixed expert, and the consistency term still uses the
other model as s- with lambda = lambda0 min(1, h(s-)/h(s*)) where the two agree: the paper only
says the expert is fixed, so the rest of the objective is kept identical and the comparison
isolates the per-sample choice. (lambda is capped at lambda0 since s* may now be the less
confident model.) With `flwr run` directly, pass algorithm.expert too: the run_config defaults
in pyproject.toml are FedLabel's (expert="both").
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlabel.algorithms.fedlabel import FedLabel, FedLabelParams
from fedlabel.errors import check


@dataclass(frozen=True)
class _FixedExpertParams(FedLabelParams):
    def validate(self) -> None:
        super().validate()
        fixed = type(self)().expert
        check(self.expert == fixed, "algorithm.expert",
              f"{self.name} fixes the expert to {fixed!r}, got {self.expert!r}; use algorithm=fedlabel to choose it")  # fmt: skip


@dataclass(frozen=True)
class FedLabelLocalOnlyParams(_FixedExpertParams):
    name: str = "fedlabel_local_only"
    expert: str = "local"


@dataclass(frozen=True)
class FedLabelGlobalOnlyParams(_FixedExpertParams):
    name: str = "fedlabel_global_only"
    expert: str = "global"


class FedLabelLocalOnly(FedLabel):
    name = "fedlabel_local_only"
    Params = FedLabelLocalOnlyParams


class FedLabelGlobalOnly(FedLabel):
    name = "fedlabel_global_only"
    Params = FedLabelGlobalOnlyParams
