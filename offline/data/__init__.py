"""Data sets for the offline pipeline: Coat, the Open Bandit Dataset, FINN.no slates, the lake and
any interaction table (Parquet/CSV with a column mapping), with the splits and the PLD noise
injection they share. Each builder returns an ``offline.dataset.Dataset``."""

from offline.data.coat import CoatData, coat_implicit_dataset, coat_rating_dataset, load_coat
from offline.data.finn import FinnSlates, finn_dataset, load_finn_slates
from offline.data.gowalla import gowalla_dataset, read_gowalla
from offline.data.lake import LakeData, lake_dataset, scan_interactions
from offline.data.noise import inject_noise
from offline.data.obd import obd_dataset
from offline.data.splits import filter_min_interactions, reindex, split_by_time, split_per_user
from offline.data.table import draw_mar_sample, table_dataset

__all__ = [
    "CoatData",
    "FinnSlates",
    "LakeData",
    "coat_implicit_dataset",
    "coat_rating_dataset",
    "draw_mar_sample",
    "filter_min_interactions",
    "finn_dataset",
    "gowalla_dataset",
    "inject_noise",
    "lake_dataset",
    "load_coat",
    "load_finn_slates",
    "obd_dataset",
    "read_gowalla",
    "reindex",
    "scan_interactions",
    "split_by_time",
    "split_per_user",
    "table_dataset",
]
