"""One typed configuration for every part of the system.

Values are resolved in this order, later ones winning:

1. the defaults below, which need no server (embedded Kafka, local Ray, mlflow in a sqlite file);
2. a TOML file: ``--config PATH``, else ``$RECSYS_CONFIG``, else ``./recsys.toml`` when present;
3. environment variables ``RECSYS_<SECTION>_<KEY>``, e.g. ``RECSYS_KAFKA_BOOTSTRAP``;
4. command-line flags (``--kafka-bootstrap``, or ``--set kafka.partitions=8`` for any key).

The same code then talks to a real Kafka cluster, a ``ray://`` cluster or an mlflow server by
configuration alone. ``recsys info`` prints every value and where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recsys.events import FeedbackType
from recsys.validation import did_you_mean, message

ENV_PREFIX = "RECSYS_"
DEFAULT_CONFIG_FILE = "recsys.toml"

Source = Literal["default", "file", "env", "cli"]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which key and what to fix
    (``recsys.validation``'s convention: ``key: expected ..., got ...[; fix]``)."""


class ConfigWarning(UserWarning):
    """Configuration that is ignored, such as an environment variable no setting reads."""


@dataclass(frozen=True)
class KafkaSettings:
    """Where events flow. ``bootstrap`` unset means: start the embedded single-node broker."""

    bootstrap: str | None = None
    partitions: int = 4
    replication_factor: int = 1
    compression: str = "lz4"
    # The client library of the hot readers and producers (streaming actors, serving):
    # "kafka-python" (the default) or "confluent" (librdkafka: measured cheaper per record to
    # read and 8x to produce, tests/benchmarks/bench_kafka.py and bench_stream.py), both behind
    # recsys.kafka_clients and run by the same Kafka tests; it travels in client_options() as
    # "client". Admin and metadata calls always use kafka-python.
    client: str = "kafka-python"
    # Embedded broker only.
    jars_dir: Path | None = None
    heap: str = "512m"
    startup_timeout_s: float = 60.0
    # Client security, passed through to kafka-python unchanged when set and translated to
    # librdkafka's names for kafka.client = "confluent" (recsys.kafka_clients.confluent_config).
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def client_options(self) -> dict[str, Any]:
        """The client library (key ``"client"``) and the kafka-python-style security settings
        that are set; kafka-python classes take them through
        ``recsys.kafka_clients.kafka_python_options`` (which drops ``"client"``), librdkafka
        through ``confluent_config``."""
        keys = (
            "security_protocol",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
        )
        return {"client": self.client,
                **{k: getattr(self, k) for k in keys if getattr(self, k) is not None}}


@dataclass(frozen=True)
class RaySettings:
    """Ray cluster. ``address`` unset means: a local instance started in-process. ``namespace``
    is the Ray namespace every recsys driver joins: the stream's named shards live there, and a
    Serve app deployed by import path (``recsys.serving.deploy:build``) looks them up there
    (empty: each driver gets an anonymous namespace of its own, as Ray does by default)."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory_mb: int = 512
    namespace: str = "recsys"


@dataclass(frozen=True)
class MlflowSettings:
    """Tracking store. ``tracking_uri`` unset means: sqlite file + artifact folder in data_dir."""

    tracking_uri: str | None = None
    experiment: str = "recsys"


@dataclass(frozen=True)
class RegistrySettings:
    """Comparing and promoting registered policies (``recsys compare``, ``recsys models``).

    ``estimator`` is the off-policy estimate a verdict reads (one of ``recsys compare``'s
    estimators); ``alpha`` the interval's error rate (0.05: 95 % intervals) from
    ``n_bootstrap`` resamples. Promotion moves ``champion_alias`` to a challenger only when the
    challenger's lower bound beats the champion's estimate by more than ``margin``.
    """

    champion_alias: str = "champion"
    estimator: str = "snips"
    alpha: float = 0.05
    n_bootstrap: int = 1000
    margin: float = 0.0


@dataclass(frozen=True)
class StreamSettings:
    """The streaming pipeline: actors, the attribution window, checkpoints and the lake.

    ``reward_mapping`` turns feedback types into rewards (``type=value`` pairs; a type that is
    not listed earns nothing and is counted). ``update_mode`` "fresh" updates the bandit state
    with an impression's exposure at once and a click's reward at once; "window" learns only
    joined examples, read from ``recsys.rewards`` once the checkpoint after their attribution
    window closed commits them (a window plus up to ``checkpoint_interval_s`` late). Unset
    ``checkpoint_uri``/``lake_uri`` mean ``<data_dir>/checkpoints`` and ``<data_dir>/lake``; any
    fsspec URI works. ``n_items``
    is the dense catalogue (item ids ``0..n_items-1``); graph mode takes its catalogue from
    ``graph_file`` (written by ``ClusterGraph.save``; a graph with a warm-start prior starts
    warm). ``prior_file`` (dense layout, optional) warm-starts the item slopes from an item-prior
    file (``recsys.bandits.warm_start.save_item_prior``). ``register_every_s`` > 0 registers the
    newest checkpoint's statistics as a version of the mlflow model ``registered_model`` that
    often (0: only on demand, ``recsys models register --checkpoint ID``).
    ``context_clip_norm`` (at most 1e100) bounds one event's influence: every context learned
    (online, offline or replayed) whose norm is larger is scaled down to it, and the bound on
    how far that moves served scores is in ``recsys.bandits.influence``; keep
    ``serve.max_context_norm`` at or below it. Learners dead-letter joined rewards outside the
    reward mapping's range; records that are not finite do not decode and are dead-lettered.
    """

    learners: int = 2
    shards: int = 2
    joiners: int = 1
    batch_size: int = 10_000
    window_ms: int = 60_000
    allowed_lateness_ms: int = 5_000
    reward_mapping: str = "click=1,add_to_cart=1,purchase=1"
    update_mode: str = "fresh"
    layout: str = "dense"
    n_items: int = 1000
    dim: int = 32
    centred: bool = True
    lam: float = 1.0
    graph_file: Path | None = None
    prior_file: Path | None = None
    snapshot_staleness_ms: int = 200
    checkpoint_interval_s: float = 10.0
    checkpoint_uri: str | None = None
    checkpoints_keep: int = 3
    lake_uri: str | None = None
    register_every_s: float = 0.0
    registered_model: str = "recsys-bandit"
    context_clip_norm: float = 1000.0
    # Supervision (streaming.supervisor): how long one actor call may take before the actor is
    # declared frozen and replaced; how long Kafka may be unreachable before the pipeline gives
    # up; how long a reader may stand still while its partitions hold unread records before it
    # is rebuilt; the backoff between failed recoveries and Kafka probes (doubling from the
    # first to the max). A failure that outlasts the outage budget raises PipelineFailed.
    actor_call_timeout_s: float = 30.0
    kafka_outage_budget_s: float = 600.0
    stuck_reader_s: float = 30.0
    recovery_backoff_s: float = 0.5
    recovery_backoff_max_s: float = 15.0
    # Prefix of the Kafka transactional ids of the pipeline's producers (rewards, dead letters):
    # one id per role and index, so a replaced actor fences its predecessor.
    transactional_id_prefix: str = "recsys"

    def rewards(self) -> dict[str, float]:
        """``reward_mapping`` as ``{event_type: reward}``."""
        return parse_reward_mapping(self.reward_mapping)


@dataclass(frozen=True)
class ServeSettings:
    """The serving app (``recsys serve``): where it listens, how fresh its snapshot must be, which
    policies it serves and how traffic is split between them.

    ``policies`` is a JSON object ``{name: policy spec}`` (``recsys.bandits.policy_spec`` form)
    or unset for the defaults: ``diag_lin_ts`` (Thompson sampling with Monte Carlo propensities
    and a small exploration floor, so every logged propensity is > 0) and ``uniform`` (ε = 1: a
    uniformly random control with exact propensities). ``traffic`` splits requests that name no
    policy (``name=share`` pairs; shares are normalised). ``max_staleness_ms`` bounds how old the
    statistics a replica scores with may be; it refreshes every ``refresh_interval_ms``.
    ``max_buffered_events`` bounds the events waiting for Kafka per replica: beyond it requests
    get a 503 rather than a slate that cannot be logged. ``user_features_uri`` is a Parquet table
    (``user_id``, ``context_dense``) used when a request brings no context. ``linger_ms``
    batches the replica's Kafka sends: the producer's sender is a Python thread that competes
    with requests for the GIL, so fewer, larger sends keep request latency down (impressions
    reach Kafka up to that much later). ``ingress`` "haproxy" puts Ray Serve's HAProxy in front
    of replicas that answer HTTP themselves (direct ingress; measured several times cheaper per
    request than Ray's Python proxy, which ``"proxy"`` keeps); it is fixed when Ray starts
    (``RAY_SERVE_ENABLE_HA_PROXY``), so a configured Ray cluster must be started with it.
    ``backend`` is ``numpy`` or ``torch`` (``torch_device``
    cpu or cuda). A policy given as a model URI (``models:/NAME@champion``) follows its alias:
    replicas look the alias up every ``model_refresh_s`` and switch when it moves.

    Hardening: ``max_context_norm`` bounds the Euclidean norm of a request's dense context,
    cluster weights and user-feature table row (a larger one gets a 422 before it is scored or
    logged; scores that are not finite get a 503, never ``null``). ``max_queued_requests`` and
    ``max_queue_delay_ms`` are the replica's admission budget: beyond either a request gets a 503
    with ``Retry-After: retry_after_s`` instead of waiting. ``max_body_bytes`` is read before
    parsing (413 above it); error bodies list at most ``max_error_items`` errors.
    ``idempotency_window_s`` is how long a replica remembers request ids and feedback keys to
    answer retries without logging twice (at least that long, at most twice; at most
    ``idempotency_max_keys`` of each, beyond which the oldest are forgotten early).
    ``auth_token`` (or ``$RECSYS_SERVE_AUTH_TOKEN``), when set, is required as
    ``Authorization: Bearer <token>`` (or ``X-API-Key``) on ``/recommend``, ``/feedback`` and
    every other path but health, ``/metrics`` and the docs (401 before the body is read).
    ``replica_host`` is the interface the replicas' own HTTP ports bind (loopback by default;
    HAProxy reaches same-node replicas over loopback, so only a multi-node cluster needs
    ``0.0.0.0`` or the node's address here).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    ingress: str = "haproxy"
    max_staleness_ms: int = 200
    refresh_interval_ms: int = 50
    policies: str | None = None
    traffic: str = "diag_lin_ts=0.5,uniform=0.5"
    user_features_uri: str | None = None
    backend: str = "numpy"
    torch_device: str = "cpu"
    torch_threads: int | None = None
    max_buffered_events: int = 100_000
    linger_ms: int = 50
    model_refresh_s: float = 2.0
    max_context_norm: float = 1000.0
    max_queued_requests: int = 64
    max_queue_delay_ms: int = 100
    retry_after_s: int = 1
    max_body_bytes: int = 1_048_576
    max_error_items: int = 20
    idempotency_window_s: float = 600.0
    idempotency_max_keys: int = 1_000_000
    auth_token: str | None = None
    replica_host: str = "127.0.0.1"


_REWARD_MAPPING = "stream.reward_mapping"


def parse_reward_mapping(text: str) -> dict[str, float]:
    """``"click=1,purchase=1,dislike=0"`` → a dict; errors name the bad pair."""
    known = typing.get_args(FeedbackType)
    mapping: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = pair.partition("=")
        name = name.strip()
        try:
            if not sep:
                raise ValueError(pair)
            reward = float(value)
        except ValueError:
            raise ConfigError(message(_REWARD_MAPPING, "type=value pairs", repr(pair))) from None
        if name not in known:
            raise ConfigError(message(_REWARD_MAPPING, f"feedback types ({', '.join(known)})",
                                      f"unknown type {name!r}", did_you_mean(name, known)))
        if name in mapping:
            raise ConfigError(message(_REWARD_MAPPING, "each feedback type once",
                                      f"{name!r} mapped twice"))
        mapping[name] = reward
    if not mapping:
        raise ConfigError(message(_REWARD_MAPPING, "at least one type=value pair", repr(text),
                                  "e.g. 'click=1'"))
    return mapping


@dataclass(frozen=True)
class Settings:
    """The resolved configuration; ``sources`` maps ``section.key`` to where its value came from."""

    data_dir: Path = Path(".recsys")
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)
    config_file: Path | None = None
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    """The config file's command tables (``COMMAND_TABLES``), as written: the command validates
    them (``[train]`` is an offline training specification, read by ``recsys train``)."""

    @property
    def mlflow_tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_location(self) -> str:
        return (self.data_dir / "mlartifacts").resolve().as_uri()

    @property
    def kafka_data_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def checkpoint_uri(self) -> str:
        """Where checkpoints go: ``stream.checkpoint_uri``, else ``<data_dir>/checkpoints``."""
        return self.stream.checkpoint_uri or str((self.data_dir / "checkpoints").resolve())

    @property
    def lake_uri(self) -> str:
        """Where the Parquet lake goes: ``stream.lake_uri``, else ``<data_dir>/lake``."""
        return self.stream.lake_uri or str((self.data_dir / "lake").resolve())

    def flat(self) -> dict[str, Any]:
        """Every setting as ``section.key -> value`` (top-level keys have no section)."""
        out: dict[str, Any] = {"data_dir": self.data_dir}
        for section in _SECTIONS:
            for f in dataclasses.fields(_SECTIONS[section]):
                out[f"{section}.{f.name}"] = getattr(getattr(self, section), f.name)
        return out


_SECTIONS: dict[str, type] = {"kafka": KafkaSettings, "ray": RaySettings, "mlflow": MlflowSettings,
                              "stream": StreamSettings, "serve": ServeSettings,
                              "registry": RegistrySettings}
_TOP_LEVEL: dict[str, Any] = {"data_dir": Path}
COMMAND_TABLES = frozenset({"train"})
"""Tables of a config file that belong to one command, kept whole in ``Settings.tables``."""


def known_keys() -> list[str]:
    """All dotted setting names, as accepted by ``--set`` and the config file."""
    keys = list(_TOP_LEVEL)
    for section, cls in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _field_type(key: str) -> Any:
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    section, name = key.split(".", 1)
    hints = typing.get_type_hints(_SECTIONS[section])
    return hints[name]


def _coerce(key: str, raw: Any, origin: str) -> Any:
    """Turn a raw value (TOML scalar or string from env/CLI) into the field's type."""
    target = _field_type(key)
    optional = False
    if isinstance(target, types.UnionType) or typing.get_origin(target) is typing.Union:
        args = [a for a in typing.get_args(target) if a is not type(None)]
        optional = len(args) < len(typing.get_args(target))
        target = args[0]
    if isinstance(raw, str) and optional and raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target is int:
            if isinstance(raw, float | bool):
                raise ValueError(raw)
            return int(raw)
        if target is float:
            return float(raw)
        if target is Path:
            return Path(str(raw)).expanduser()
        if target is str:
            if not isinstance(raw, str | int | float):
                raise ValueError(raw)
            return str(raw)
    except (TypeError, ValueError):
        name = getattr(target, "__name__", str(target))
        raise ConfigError(message(key, name, repr(raw), f"set in {origin}")) from None
    raise ConfigError(f"{key}: unsupported setting type {target!r}")  # pragma: no cover


def _check_key(key: str, origin: str) -> None:
    """A known dotted setting name, or an error naming the closest ones (not all of them)."""
    if key not in known_keys():
        listed = "`recsys info` lists every setting"
        hint = did_you_mean(key, known_keys())
        raise ConfigError(message(origin, "a known setting", repr(key),
                                  f"{hint} ({listed})" if hint else listed))


def _flatten_file(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, Mapping):
            if name in COMMAND_TABLES:
                continue
            if name not in _SECTIONS:
                known = [*_SECTIONS, *sorted(COMMAND_TABLES)]
                raise ConfigError(message(str(path), f"sections {', '.join(known)}",
                                          f"[{name}]", did_you_mean(name, known)))
            for key, inner in value.items():
                flat[f"{name}.{key}"] = inner
        else:
            flat[name] = value
    for key in flat:
        _check_key(key, str(path))
    return flat


def _env_key(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


OTHER_ENVIRONMENT_VARIABLES = {
    ENV_PREFIX + "CONFIG": "the config file (when --config is not given)",
    ENV_PREFIX + "SHARED_DATA": "the folder of the real data sets (offline, simulators)",
}
"""``RECSYS_*`` variables that are not settings but are read by name."""


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings set in ``environ``; other ``RECSYS_*`` variables (typos, mostly) are warned
    about, naming the closest variable, since nothing reads them."""
    by_variable = {_env_key(key): key for key in known_keys()}
    for variable in sorted(environ):
        if (variable.startswith(ENV_PREFIX) and variable not in by_variable
                and variable not in OTHER_ENVIRONMENT_VARIABLES):
            hint = did_you_mean(variable, [*by_variable, *OTHER_ENVIRONMENT_VARIABLES])
            warnings.warn(
                message("environment", "RECSYS_<SECTION>_<KEY> of a known setting",
                        f"{variable} (ignored)", hint or "`recsys info` lists every setting"),
                ConfigWarning, stacklevel=3)
    return {key: environ[variable] for variable, key in by_variable.items()
            if variable in environ}


def parse_assignments(assignments: list[str] | None) -> dict[str, str]:
    """Parse ``--set section.key=value`` strings."""
    out: dict[str, str] = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(message("--set", "section.key=value", repr(item)))
        _check_key(key, "--set")
        out[key] = value
    return out


def load_settings(
    config_file: str | Path | None = None,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve the configuration: defaults, then the file, then the environment, then ``cli``.

    ``cli`` maps dotted keys (``kafka.bootstrap``) to values; ``None`` values are ignored so that
    unset flags do not override anything.
    """
    environ = os.environ if environ is None else environ
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(message("--config", "an existing TOML file", str(path),
                                      "examples in offline/configs/"))
    elif environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
        if not path.is_file():
            raise ConfigError(message("RECSYS_CONFIG", "an existing TOML file", str(path)))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        path = Path(DEFAULT_CONFIG_FILE)

    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    layers: list[tuple[Source, str, Mapping[str, Any]]] = []
    tables: dict[str, Mapping[str, Any]] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(message(str(path), "valid TOML", str(exc))) from exc
        layers.append(("file", str(path), _flatten_file(data, path)))
        tables = {name: data[name] for name in COMMAND_TABLES if isinstance(data.get(name), dict)}
    layers.append(("env", "the environment", _from_env(environ)))
    cli_values = {k: v for k, v in (cli or {}).items() if v is not None}
    for key in cli_values:
        _check_key(key, "command-line flags")
    layers.append(("cli", "command-line flags", cli_values))

    for source, origin, layer in layers:
        for key, raw in layer.items():
            values[key] = _coerce(key, raw, origin)
            sources[key] = source

    sections = {
        name: cls(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")})
        for name, cls in _SECTIONS.items()
    }
    settings = Settings(
        data_dir=values.get("data_dir", Settings.data_dir),
        sources={key: sources.get(key, "default") for key in known_keys()},
        config_file=path,
        tables=tables,
        **sections,
    )
    _validate(settings)
    return settings


def _at_least(name: str, value: float, low: float, kind: str = "an integer") -> None:
    if not value >= low:  # NaN fails too
        raise ConfigError(message(name, f"{kind} >= {low:g}", value))


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(message(name, "a number > 0", value))


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(message(name, f"one of {', '.join(choices)}", repr(value),
                                  did_you_mean(value, choices)))


def _validate(settings: Settings) -> None:
    k = settings.kafka
    _at_least("kafka.partitions", k.partitions, 1)
    _at_least("kafka.replication_factor", k.replication_factor, 1)
    _one_of("kafka.compression", k.compression, ("none", "gzip", "lz4", "zstd", "snappy"))
    _one_of("kafka.client", k.client, ("confluent", "kafka-python"))
    _positive("kafka.startup_timeout_s", k.startup_timeout_s)
    _validate_stream(settings.stream)
    _validate_serve(settings.serve)
    _validate_registry(settings.registry)
    if settings.ray.num_cpus is not None:
        _at_least("ray.num_cpus", settings.ray.num_cpus, 1)
    address = settings.ray.address
    if address and not (address == "auto" or address.startswith("ray://") or ":" in address):
        raise ConfigError(message("ray.address", "'auto', 'ray://host:port' or 'host:port'",
                                  repr(address)))


def _validate_stream(stream: StreamSettings) -> None:
    for name in ("learners", "shards", "joiners", "batch_size", "n_items", "dim",
                 "checkpoints_keep"):
        _at_least(f"stream.{name}", getattr(stream, name), 1)
    for name in ("window_ms", "allowed_lateness_ms", "snapshot_staleness_ms"):
        _at_least(f"stream.{name}", getattr(stream, name), 0)
    _positive("stream.lam", stream.lam)
    _positive("stream.checkpoint_interval_s", stream.checkpoint_interval_s)
    _at_least("stream.register_every_s", stream.register_every_s, 0, "a number")
    _positive("stream.context_clip_norm", stream.context_clip_norm)
    for name in ("actor_call_timeout_s", "kafka_outage_budget_s", "stuck_reader_s",
                 "recovery_backoff_s", "recovery_backoff_max_s"):
        _positive(f"stream.{name}", getattr(stream, name))
    if not stream.transactional_id_prefix:
        raise ConfigError(message("stream.transactional_id_prefix", "a non-empty string", "''"))
    _one_of("stream.update_mode", stream.update_mode, ("fresh", "window"))
    _one_of("stream.layout", stream.layout, ("dense", "graph"))
    if stream.layout == "graph" and stream.graph_file is None:
        raise ConfigError(message("stream.graph_file", "the cluster→item graph built offline",
                                  "none", "stream.layout = 'graph' needs it"))
    stream.rewards()


def _validate_serve(serve: ServeSettings) -> None:
    if not 0 < serve.port < 65536:
        raise ConfigError(message("serve.port", "a port in 1..65535", serve.port))
    for name in ("replicas", "refresh_interval_ms", "max_buffered_events"):
        _at_least(f"serve.{name}", getattr(serve, name), 1)
    for name in ("max_staleness_ms", "linger_ms"):
        _at_least(f"serve.{name}", getattr(serve, name), 0)
    _positive("serve.model_refresh_s", serve.model_refresh_s)
    for name in ("max_context_norm", "idempotency_window_s"):
        _positive(f"serve.{name}", getattr(serve, name))
    for name in ("max_queued_requests", "max_queue_delay_ms", "retry_after_s", "max_body_bytes",
                 "max_error_items", "idempotency_max_keys"):
        _at_least(f"serve.{name}", getattr(serve, name), 1)
    if serve.auth_token is not None and not serve.auth_token.strip():
        raise ConfigError(message("serve.auth_token", "a non-empty token or unset", "''"))
    if serve.refresh_interval_ms > serve.max_staleness_ms:
        raise ConfigError(message(
            "serve.refresh_interval_ms", f"at most serve.max_staleness_ms "
            f"({serve.max_staleness_ms})", serve.refresh_interval_ms,
            "a replica that polls less often cannot keep that staleness bound"))
    _one_of("serve.ingress", serve.ingress, ("haproxy", "proxy"))
    _one_of("serve.backend", serve.backend, ("numpy", "torch"))
    if serve.torch_threads is not None:
        _at_least("serve.torch_threads", serve.torch_threads, 1)
    names = policy_names(serve)
    for name in parse_traffic(serve.traffic):
        if name not in names:
            raise ConfigError(message(
                "serve.traffic", f"policy names among {', '.join(names)} (serve.policies)",
                repr(name), did_you_mean(name, names)))


def _validate_registry(registry: RegistrySettings) -> None:
    if not registry.champion_alias.strip():
        raise ConfigError(message("registry.champion_alias", "a non-empty alias", "''"))
    if not 0 < registry.alpha < 1:
        raise ConfigError(message("registry.alpha", "a number in (0, 1)", registry.alpha))
    _at_least("registry.n_bootstrap", registry.n_bootstrap, 1)
    _at_least("registry.margin", registry.margin, 0, "a number")


DEFAULT_POLICY_NAMES = ("diag_lin_ts", "uniform")
"""The policies served when ``serve.policies`` is unset (``recsys.serving``'s defaults)."""


def policy_names(serve: ServeSettings) -> tuple[str, ...]:
    """The names of the policies ``serve.policies`` defines: a JSON object whose values are
    policy specs or registered-model URIs (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""
    if serve.policies is None:
        return DEFAULT_POLICY_NAMES
    from recsys.registry.uris import is_model_uri, parse_model_uri

    expected = "a JSON object {name: policy spec or 'models:/NAME@ALIAS'}"
    try:
        specs = json.loads(serve.policies)
    except json.JSONDecodeError as exc:
        raise ConfigError(message("serve.policies", expected, f"invalid JSON ({exc})")) from None
    if not isinstance(specs, dict) or not specs or not all(
            isinstance(spec, dict) or is_model_uri(spec) for spec in specs.values()):
        raise ConfigError(message("serve.policies", expected, serve.policies))
    for name, spec in specs.items():
        if isinstance(spec, str):
            try:
                parse_model_uri(spec, f"serve.policies.{name}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    return tuple(specs)


def parse_traffic(text: str) -> dict[str, float]:
    """``"diag_lin_ts=0.5,uniform=0.5"`` → normalised shares; errors name the bad pair."""
    shares: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = pair.partition("=")
        try:
            share = float(value) if sep else float("nan")
        except ValueError:
            share = float("nan")
        if not name.strip() or not share >= 0:
            raise ConfigError(message("serve.traffic", "name=share pairs with share >= 0",
                                      repr(pair)))
        shares[name.strip()] = share
    total = sum(shares.values())
    if not shares or total <= 0:
        raise ConfigError(message("serve.traffic", "at least one positive share", repr(text),
                                  "e.g. 'diag_lin_ts=0.5,uniform=0.5'"))
    return {name: share / total for name, share in shares.items()}
