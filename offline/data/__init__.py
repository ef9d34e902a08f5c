"""Data sets for the offline pipeline: Coat, the Open Bandit Dataset, FINN.no slates and the lake,
with the splits and the PLD noise injection they share. Each builder returns an
``offline.dataset.Dataset``."""

from offline.data.coat import CoatData, coat_implicit_dataset, coat_rating_dataset, load_coat
from offline.data.finn import FinnSlates, finn_dataset, load_finn_slates
from offline.data.lake import LakeData, lake_dataset, scan_interactions
from offline.data.noise import inject_noise
from offline.data.obd import obd_dataset
from offline.data.splits import filter_min_interactions, reindex, split_by_time, split_per_user

__all__ = [
    "CoatData",
    "FinnSlates",
    "LakeData",
    "coat_implicit_dataset",
    "coat_rating_dataset",
    "filter_min_interactions",
    "finn_dataset",
    "inject_noise",
    "lake_dataset",
    "load_coat",
    "load_finn_slates",
    "obd_dataset",
    "reindex",
    "scan_interactions",
    "split_by_time",
    "split_per_user",
]
