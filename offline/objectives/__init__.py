"""Training objectives: how a batch is sampled, which loss the trainer backpropagates (a function
of ``offline.losses``), and any auxiliary model the objective updates itself.

One module per family: ``base`` (the ``Objective`` base class and the model-calling helpers),
``sampling`` (exact uniform negatives and candidate pools), ``tensors`` (``TrainTensors``),
``rating`` (naive, IPS, SNIPS, DR-JL), ``balancing`` (KBIPS, KBDR), ``implicit`` (BCE, BPR,
Rel-IPS, T-CE, R-CE), ``dr_clicks`` (doubly robust clicks on the exposure log) and ``pld`` (PLD,
PLD-BCE); each family's module says what it follows.

Objectives are scikit-learn estimators: hyperparameters are keyword ``__init__`` arguments, so
``get_params``/``set_params``/``sklearn.base.clone`` work. What a config may name:
``OBJECTIVES`` (name → class); an objective's hyperparameters and their defaults:
``OBJECTIVES[name]().get_params()``; ``make_objective`` builds one and checks everything that can
be checked without data (the name, unknown hyperparameters, values out of range).
"""

from __future__ import annotations

from typing import Any

from offline.objectives.balancing import KBDR, KBIPS
from offline.objectives.base import Batch, Objective
from offline.objectives.dr_clicks import DRClicks
from offline.objectives.implicit import BCE, BPR, RCE, TCE, RelIPS
from offline.objectives.pld import PLD, PLDBCE
from offline.objectives.rating import DRJL, IPS, SNIPS, Naive
from offline.objectives.tensors import TrainTensors
from recsys.validation import message

__all__ = [
    "BCE",
    "BPR",
    "DRJL",
    "IPS",
    "KBDR",
    "KBIPS",
    "OBJECTIVES",
    "PLD",
    "PLDBCE",
    "RCE",
    "SNIPS",
    "TCE",
    "Batch",
    "DRClicks",
    "Naive",
    "Objective",
    "RelIPS",
    "TrainTensors",
    "make_objective",
]

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (Naive, IPS, SNIPS, DRJL, KBIPS, KBDR, BCE, RelIPS, DRClicks, BPR, TCE, RCE, PLD,
                PLDBCE)
}


def make_objective(name: str, **hyperparameters: Any) -> Objective:
    """The objective called ``name`` with these hyperparameters, checked."""
    cls = OBJECTIVES.get(name)
    if cls is None:
        raise ValueError(message("objective", f"one of {sorted(OBJECTIVES)}", repr(name)))
    known = sorted(cls().get_params(deep=False))
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise ValueError(message(unknown[0], f"a hyperparameter of {name} (one of {known})",
                                 "an unknown name"))
    return cls(**hyperparameters).check_params()
