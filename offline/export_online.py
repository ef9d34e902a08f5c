"""The offline → online hand-off: what the bandits need from a trained model, as files.

From a two-tower (or MF) model this writes, into one directory:

* ``users.parquet`` — the serving app's user table (``serve.user_features_uri``): each user's
  embedding (``context_dense``, the dense layout's context) and soft cluster memberships
  (``context_cluster_ids``/``context_cluster_weights``, the graph layout's context: the top-K
  clusters by distance, ``ClusterGraph.contexts``);
* ``graph.npz`` — the cluster→item candidate graph (``stream.graph_file``): k-means over the
  user embeddings, each cluster linked to its top-N items by the offline score, carrying the
  warm-start prior (each edge's mean offline reward, through the link, at strength n0;
  ``recsys.bandits.warm_start``), so ``recsys stream`` with it starts warm;
* ``item_prior.npz`` — with the identity link only: the dense layout's slope prior (the item
  embeddings times ``scale``) for ``stream.prior_file`` (a sigmoid is not linear in the
  context, so the dense layout gets no prior from a sigmoid-linked score);
* ``online.toml`` / ``online.json`` — the settings that point at those files;
* with ``previous`` (a graph, its users table and a statistics snapshot from the model before):
  ``migrated_stats.npz``, the online evidence moved to the new clusters (or reset), and the
  migration report in ``online.json``.

``recsys train --export-online DIR`` runs it on the trained model; ``recsys export-online
--model models:/NAME/VERSION --out DIR`` on a registered one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from recsys.bandits.clustering import ClusterGraph, build_cluster_graph
from recsys.bandits.warm_start import (
    cluster_transition,
    graph_prior,
    migrate_graph_stats,
    save_item_prior,
)
from recsys.schema import read_user_features, write_user_features
from recsys.validation import message

Progress = Callable[[str], None]
GRAPH_FILE, USERS_FILE, ITEM_PRIOR_FILE = "graph.npz", "users.parquet", "item_prior.npz"
MIGRATED_FILE = "migrated_stats.npz"



@dataclass(frozen=True)
class ExportOptions:
    """Hyperparameters of the hand-off (the ``recsys export-online`` flags)."""

    n_clusters: int = 32
    """k of k-means over the user embeddings (at most the number of users)."""
    top_n: int = 50
    """Items linked to each cluster (at most the catalogue)."""
    top_k: int = 3
    """Clusters in each user's soft context (``normalised``; ``k1`` keeps one)."""
    calibration: Literal["k1", "normalised"] = "k1"
    strength: float = 5.0
    """n0: the offline prior counts as this many events per edge (0: cold start)."""
    link: Literal["sigmoid", "identity"] = "sigmoid"
    """Offline score → reward scale: sigmoid for click logits, identity for ratings."""
    scale: float = 1.0
    random_state: int = 0

    def fitted(self, n_users: int, n_items: int) -> ExportOptions:
        """These options with clusters, top-N and top-K lowered to what a model of
        ``n_users`` × ``n_items`` allows (``recsys train --export-online`` uses the defaults)."""
        n_clusters = min(self.n_clusters, n_users)
        return replace(self, n_clusters=n_clusters, top_n=min(self.top_n, n_items),
                       top_k=min(self.top_k, n_clusters))

    def check(self, n_users: int, n_items: int) -> None:
        """Raise a ValueError naming the option that does not fit the model."""
        if not 1 <= self.n_clusters <= n_users:
            raise ValueError(message("clusters", f"an integer in [1, {n_users}] (the model's "
                                     "users)", self.n_clusters))
        if not 1 <= self.top_n <= n_items:
            raise ValueError(message("top-n", f"an integer in [1, {n_items}] (the model's "
                                     "catalogue)", self.top_n, "lower --top-n"))
        if not 1 <= self.top_k <= self.n_clusters:
            raise ValueError(message("top-k", f"an integer in [1, {self.n_clusters}] (the "
                                     "clusters)", self.top_k))
        if self.calibration not in ("k1", "normalised"):
            raise ValueError(message("calibration", "k1 or normalised", repr(self.calibration)))
        if self.link not in ("sigmoid", "identity"):
            raise ValueError(message("link", "sigmoid or identity", repr(self.link)))
        if not (np.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(message("strength", "a number >= 0 (pseudo-events)",
                                     self.strength))


@dataclass(frozen=True)
class Previous:
    """The hand-off before this one, to migrate the online statistics from."""

    graph: Path
    users: Path
    stats: Path | None = None
    rule: Literal["move", "reset"] = "move"


@dataclass
class ExportResult:
    """Where everything went and what it holds (``online.json`` is this as JSON)."""

    out_dir: Path
    model: str
    n_users: int
    n_items: int
    n_edges: int
    options: ExportOptions
    files: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    prior: dict[str, float] = field(default_factory=dict)
    migration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        return out


def offline_embeddings(model: nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user embeddings [U, d], item embeddings [I, d], per-item score offset [I]) such that
    the model's score is ``u·v + offset`` (MF: + the user's own bias, averaged here)."""
    from offline.models import BiasedMF, TwoTower

    with torch.no_grad():
        if isinstance(model, TwoTower):
            users, items = model.user_vectors(), model.item_vectors()
            offset = model.item_bias
        elif isinstance(model, BiasedMF):
            users, items = model.user_factors.weight, model.item_factors.weight
            offset = (model.item_bias.weight.squeeze(-1) + model.global_bias
                      + model.user_bias.weight.mean())
        else:
            raise ValueError(message(
                "model", "a model with user and item embeddings (two_tower or mf)",
                type(model).__name__, "train a two_tower or mf model to export for the bandits"))
        return tuple(t.detach().to("cpu", torch.float64).numpy()  # type: ignore[return-value]
                     for t in (users, items, offset))




def _aligned_previous_users(path: Path, user_ids: list[str]) -> np.ndarray:
    """The previous model's embeddings of this model's users, row for row (users the previous
    table lacks are an error: they have no old cluster)."""
    ids, matrix = read_user_features(path, name="previous users")
    index = {u: i for i, u in enumerate(ids)}
    missing = [u for u in user_ids if u not in index]
    if missing:
        raise ValueError(message("previous users", "every user of the new model",
                                 f"{len(missing)} missing, e.g. {missing[:3]}"))
    return matrix[[index[u] for u in user_ids]]


def export_online(
    model: nn.Module,
    user_ids: list[str],
    item_ids: np.ndarray,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    *,
    model_uri: str = "",
    previous: Previous | None = None,
    progress: Progress = print,
) -> ExportResult:
    """Write the hand-off files of ``model`` (raw ``user_ids``/``item_ids`` of its rows) into
    ``out_dir`` (module docs); returns what was written."""
    options = options or ExportOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    users, items, offset = offline_embeddings(model)
    if len(user_ids) != users.shape[0] or len(item_ids) != items.shape[0]:
        raise ValueError(message("ids", f"{users.shape[0]} user and {items.shape[0]} item ids "
                                 "(the model's rows)", f"{len(user_ids)} and {len(item_ids)}"))
    options.check(users.shape[0], items.shape[0])
    version = model_uri or f"offline-{int(time.time())}"
    started = time.perf_counter()

    def step(text: str) -> None:
        progress(f"  [{time.perf_counter() - started:5.1f} s] {text}")

    step(f"k-means: {options.n_clusters} clusters over {users.shape[0]} users "
         f"(dim {users.shape[1]}), top {options.top_n} of {items.shape[0]} items each")
    graph = build_cluster_graph(users, items, item_ids=np.asarray(item_ids, np.int64),
                                n_clusters=options.n_clusters, top_w=options.top_n,
                                random_state=options.random_state, version=version)
    step(f"prior: mean offline reward per edge ({options.link} link), strength "
         f"n0 = {options.strength:g}")
    prior = graph_prior(graph, users, items, link=options.link, scale=options.scale,
                        offset=offset)
    graph = graph.with_prior(prior, options.strength, options.calibration)
    graph.save(out / GRAPH_FILE)
    step(f"user contexts: top {options.top_k if options.calibration != 'k1' else 1} "
         f"cluster(s) per user ({options.calibration})")
    ctx = graph.contexts(users, top_k=options.top_k, calibration=options.calibration)
    write_user_features(out / USERS_FILE, list(user_ids), users,
                        clusters=(ctx.clusters, ctx.weights))
    files = {"graph": str(out / GRAPH_FILE), "users": str(out / USERS_FILE)}
    settings = {"stream.layout": "graph", "stream.graph_file": files["graph"],
                "serve.user_features_uri": files["users"]}
    if options.link == "identity":
        save_item_prior(out / ITEM_PRIOR_FILE, item_ids, options.scale * items,
                        strength=options.strength)
        files["item_prior"] = str(out / ITEM_PRIOR_FILE)
    result = ExportResult(
        out, model_uri, users.shape[0], items.shape[0], graph.n_edges, options, files, settings,
        prior={"min": float(prior.min()), "mean": float(prior.mean()),
               "max": float(prior.max())})
    if previous is not None:
        step(f"migration ({previous.rule}) from {previous.graph}")
        result.migration = _migrate(previous, graph, users, list(user_ids), out)
        files["migrated_stats"] = str(out / MIGRATED_FILE)
        step(result.migration["report"])
    _write_settings(result)
    step(f"wrote {', '.join(sorted(files))} and online.toml/online.json to {out}")
    return result


def _migrate(previous: Previous, graph: ClusterGraph, users: np.ndarray,
             user_ids: list[str], out: Path) -> dict[str, Any]:
    from recsys.bandits import GraphStats, load_stats

    old_graph = ClusterGraph.load(previous.graph)
    old_users = _aligned_previous_users(previous.users, user_ids)
    old_stats = (load_stats(previous.stats) if previous.stats is not None
                 else old_graph.stats())
    if not isinstance(old_stats, GraphStats):
        raise ValueError(message("previous stats", "graph-layout statistics",
                                 f"{type(old_stats).__name__}"))
    t = cluster_transition(old_graph, graph, old_users, users)
    new, report = migrate_graph_stats(old_stats, old_graph, graph, t,
                                      new_prior=graph.edge_prior, strength=graph.prior_strength,
                                      rule=previous.rule)
    new.save(out / MIGRATED_FILE)
    return {"rule": report.rule, "evidence_in": report.evidence_in,
            "evidence_moved": report.evidence_moved,
            "evidence_dropped": report.evidence_dropped, "report": str(report)}


def _write_settings(result: ExportResult) -> None:
    """``online.json`` (everything) and ``online.toml`` (the settings to point at the files)."""
    (result.out_dir / "online.json").write_text(json.dumps(result.to_dict(), indent=2,
                                                           default=str))
    lines = ["# Written by recsys export-online: point the stream and the serving app here.",
             f"# model: {result.model or '(in-process)'}; prior strength n0 = "
             f"{result.options.strength:g} ({result.options.link} link)",
             "[stream]", 'layout = "graph"',
             f"graph_file = {json.dumps(result.files['graph'])}"]
    if "item_prior" in result.files:
        lines.append(f"# dense layout instead: layout = \"dense\", prior_file = "
                     f"{json.dumps(result.files['item_prior'])}")
    lines += ["", "[serve]", f"user_features_uri = {json.dumps(result.files['users'])}", ""]
    (result.out_dir / "online.toml").write_text("\n".join(lines))
