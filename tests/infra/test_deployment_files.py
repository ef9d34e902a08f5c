"""The deployment files in ``infra/`` are checked offline, so a typo in a key fails CI.

No network, Docker or cluster: the compose file against the Compose specification's JSON
schema, every KubeRay object against its CRD's OpenAPI schema (made strict: a structural schema
prunes unknown fields where the API server would silently drop a misspelt key, here an object
that does not preserve unknown fields rejects them), every built-in Kubernetes kind and every
pod template with ``kubernetes-validate`` (pinned Kubernetes version), every recsys TOML and
``RECSYS_*`` variable with ``recsys.config`` (unknown keys fail), the ``[train]`` tables with the
offline specification, the Serve config with Ray Serve's own schema, and every ``recsys`` command
line with the real CLI parser. The ``*_rejects_*`` tests show each validator catching a typo.
The schemas are vendored in ../shared/schemas (see its SOURCES.md); the tests that need them skip
with the reason when it is absent.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from recsys.cli import build_parser, parse_args
from recsys.config import ConfigError, ConfigWarning, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
COMPOSE_FILE = INFRA / "compose" / "docker-compose.yml"
COMPOSE_TOML = INFRA / "compose" / "recsys.toml"
COMPOSE_DOTENV = INFRA / "compose" / ".env"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
KUBERAY_FILES = sorted((INFRA / "kuberay").glob("*.yaml"))
CONFIG_PATH = "/etc/recsys/recsys.toml"  # where every file mounts the recsys TOML

KUBERNETES_VERSION = "1.37.0"  # schemas shipped with kubernetes-validate 1.37.0
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayService": "ray.io_rayservices.yaml",
             "RayJob": "ray.io_rayjobs.yaml"}
SCHEMA_KEYWORDS_WITH_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")

# The root metadata of a custom resource is ``{type: object}`` in a CRD (the API server checks
# ObjectMeta itself); these are the fields the manifests may use, anything else is a typo.
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=yaml.CSafeLoader)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if doc]


def _kuberay_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in KUBERAY_FILES for doc in _documents(path)]


KUBERAY_OBJECTS = _kuberay_objects()
CUSTOM = [(name, obj) for name, obj in KUBERAY_OBJECTS if obj["kind"] in CRD_FILES]
BUILT_IN = [(name, obj) for name, obj in KUBERAY_OBJECTS if obj["kind"] not in CRD_FILES]


# -- strict CRD schemas ---------------------------------------------------------------------------

def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` where every object that lists its properties and neither allows other ones nor
    preserves unknown fields rejects them (what the API server would prune, silently)."""
    node = dict(schema)
    if "properties" in node:
        node["properties"] = {key: strict(value) for key, value in node["properties"].items()}
        if ("additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    for keyword in SCHEMA_KEYWORDS_WITH_SCHEMA_LISTS:
        if keyword in node:
            node[keyword] = [strict(branch) for branch in node[keyword]]
    return node


@functools.cache
def crd(schemas_dir: Path, kind: str) -> dict[str, Any]:
    return _load_yaml(schemas_dir / "kuberay" / CRD_FILES[kind])


@functools.cache
def crd_validator(schemas_dir: Path, kind: str, api_version: str) -> jsonschema.Validator:
    """A strict validator for ``kind`` at ``api_version`` (``ray.io/v1``) from its vendored
    CRD; an API version the CRD does not serve is an error naming the ones it does."""
    definition = crd(schemas_dir, kind)
    group, _, version = api_version.partition("/")
    served = {v["name"]: v for v in definition["spec"]["versions"] if v.get("served")}
    expected = ", ".join(f"{definition['spec']['group']}/{name}" for name in served)
    assert group == definition["spec"]["group"] and version in served, (
        f"{kind}: apiVersion {api_version!r} is not served by the CRD; expected {expected}")
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "spec"})
    return jsonschema.Draft7Validator(schema)


def crd_errors(schemas_dir: Path, obj: dict[str, Any]) -> list[str]:
    validator = crd_validator(schemas_dir, obj["kind"], obj["apiVersion"])
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(obj)]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod templates of a RayCluster, RayService or RayJob."""
    spec = obj["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or spec
    yield "headGroupSpec", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield f"workerGroupSpecs[{group['groupName']}]", group["template"]


def ray_cluster_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or spec


def validate_built_in(obj: dict[str, Any]) -> None:
    """``kubernetes-validate``, strict (unknown fields fail), at the pinned Kubernetes version."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
            "template": template}


# -- compose --------------------------------------------------------------------------------------

@functools.cache
def compose_validator(schemas_dir: Path) -> jsonschema.Validator:
    schema = json.loads((schemas_dir / "compose-spec" / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def compose_errors(schemas_dir: Path, document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in compose_validator(schemas_dir).iter_errors(document)]


def dotenv() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in COMPOSE_DOTENV.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` with ``variables`` (the .env file)."""
    return _INTERPOLATION.sub(
        lambda m: variables.get(m["name"]) or (m["default"] or ""), str(value))


def compose_services() -> dict[str, dict[str, Any]]:
    return _load_yaml(COMPOSE_FILE)["services"]


def recsys_services() -> dict[str, dict[str, Any]]:
    """The services that run the recsys image (they mount the recsys TOML)."""
    return {name: service for name, service in compose_services().items()
            if any(CONFIG_PATH in str(volume) for volume in service.get("volumes", []))}


# -- recsys configuration and command lines ------------------------------------------------------

def load_strictly(path: Path, environ: dict[str, str]) -> Settings:
    """``recsys.config`` on ``path`` with ``environ``; an ignored ``RECSYS_*`` variable (a
    typo: no setting reads it) fails like an unknown key does."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        return load_settings(path, environ=environ)


def configmap_toml(tmp_path: Path) -> Path:
    (configmap,) = [obj for _, obj in BUILT_IN if obj["kind"] == "ConfigMap"
                    and "recsys.toml" in obj.get("data", {})]
    path = tmp_path / "recsys.toml"
    path.write_text(configmap["data"]["recsys.toml"])
    return path


def container_environment(container: dict[str, Any]) -> dict[str, str]:
    """A container's variables; a value from a Secret stands in as a placeholder."""
    return {var["name"]: str(var.get("value", "placeholder-from-secret"))
            for var in container.get("env", [])}


def script_lines(text: str) -> Iterator[str]:
    """The simple commands of a shell script (split at newlines, ``&&``, ``||`` and ``;``)."""
    for line in text.splitlines():
        yield from (part.strip() for part in re.split(r"&&|\|\||;", line) if part.strip())


def recsys_argv(command: Any) -> list[list[str]]:
    """The ``recsys`` invocations in a compose ``command``, a container's command and args, or
    a RayJob entrypoint (``exec`` dropped): argv lists without the program name."""
    if isinstance(command, list):
        scripts = [command[-1]] if command[:1] in (["bash"], ["/bin/bash"], ["sh"]) else [
            shlex.join(command)]
    else:
        scripts = [command]
    found = []
    for script in scripts:
        for line in script_lines(script):
            words = shlex.split(line)
            if words[:1] == ["exec"]:
                words = words[1:]
            if words[:1] == ["recsys"]:
                found.append(words[1:])
    return found


def ray_start_lines() -> list[tuple[str, list[str]]]:
    """``ray start`` options in compose commands, and the ones KubeRay generates from every
    ``rayStartParams`` (``--key=value``)."""
    lines = []
    for name, service in compose_services().items():
        command = service.get("command", [])
        scripts = [command[-1]] if command[:1] == ["bash"] else [shlex.join(command)]
        for line in (line for script in scripts for line in script_lines(script)):
            words = shlex.split(line)
            if words[:2] == ["ray", "start"]:
                lines.append((f"docker-compose.yml:{name}", words[2:]))
    for name, obj in CUSTOM:
        cluster = ray_cluster_spec(obj)
        groups = [("headGroupSpec", cluster["headGroupSpec"], ["--head"])] + [
            (f"workerGroupSpecs[{g['groupName']}]", g, ["--address=head:6379"])
            for g in cluster.get("workerGroupSpecs", [])]
        for group, spec, base in groups:
            params = [f"--{key}={value}" for key, value in spec.get("rayStartParams", {}).items()]
            lines.append((f"{name}:{group}", base + params))
    return lines


def parse_ray_start(argv: list[str]) -> Any:
    """Ray's own ``ray start`` parser (click) on ``argv``, without starting anything."""
    from ray.scripts.scripts import start

    return start.make_context("start", list(argv))


def all_command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for name, service in compose_services().items():
        for argv in recsys_argv(service.get("command", [])):
            lines.append((f"docker-compose.yml:{name}", argv))
    for name, obj in CUSTOM:
        if obj["kind"] == "RayJob":
            lines += [(name, argv) for argv in recsys_argv(obj["spec"]["entrypoint"])]
        for group, template in pod_templates(obj):
            for container in template["spec"]["containers"]:
                command = [*container.get("command", []), *container.get("args", [])]
                lines += [(f"{name}:{group}", argv) for argv in recsys_argv(command)]
    return lines


COMMAND_LINES = all_command_lines()


def parse_recsys(argv: list[str]) -> Any:
    """The real CLI parser on ``argv``; a usage error is an AssertionError with argparse's
    message (which names the closest flags)."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_args(build_parser(), argv)
    except SystemExit as exc:
        raise AssertionError(f"recsys {shlex.join(argv)}: {stderr.getvalue().strip()}") from exc


# -- compose file ---------------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification(schemas: Path) -> None:
    assert compose_errors(schemas, _load_yaml(COMPOSE_FILE)) == []


def test_compose_validation_rejects_a_misspelt_key(schemas: Path) -> None:
    document = _load_yaml(COMPOSE_FILE)
    kafka = document["services"]["kafka-1"]
    kafka["enviroment"] = kafka.pop("environment")
    errors = compose_errors(schemas, document)
    assert any("enviroment" in error for error in errors), errors
    document = _load_yaml(COMPOSE_FILE)
    document["services"]["ray-worker"]["deploy"]["replica"] = 2
    assert any("replica" in error for error in compose_errors(schemas, document))


def test_compose_kafka_is_three_kraft_brokers_with_replication_three_and_two_in_sync() -> None:
    services = compose_services()
    brokers = {name: s for name, s in services.items() if str(s.get("image", "")).startswith(
        "apache/kafka:")}
    assert len(brokers) == 3
    ids = {str(s["environment"]["KAFKA_NODE_ID"]) for s in brokers.values()}
    assert ids == {"1", "2", "3"}
    for name, service in brokers.items():
        env = {key: str(value) for key, value in service["environment"].items()}
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        voters = {voter.split("@")[1].split(":")[0]
                  for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")}
        assert voters == set(brokers), name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    pom = (INFRA / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)[1]
    assert {s["image"] for s in brokers.values()} == {f"apache/kafka:{version}"}, (
        "the brokers run the embedded broker's Kafka version (infra/kafka/pom.xml)")
    settings = load_strictly(COMPOSE_TOML, {})
    assert settings.kafka.replication_factor == 3
    hosts = {address.rsplit(":", 1)[0] for address in settings.kafka.bootstrap.split(",")}
    assert hosts == set(brokers)


def test_compose_has_ray_mlflow_postgres_and_minio() -> None:
    services = compose_services()
    profiles = {profile for s in services.values() for profile in s.get("profiles", [])}
    assert set(dotenv()["COMPOSE_PROFILES"].split(",")) <= profiles
    heads = [name for name, s in services.items() if "ray start --head" in str(s.get("command"))]
    assert sorted(heads) == ["ray-head-serve", "ray-head-stream"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri \"postgresql://" in mlflow
    assert "--artifacts-destination s3://" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert load_strictly(COMPOSE_TOML, {}).mlflow.tracking_uri == "http://mlflow:5000"


# -- KubeRay custom resources --------------------------------------------------------------------

@pytest.mark.parametrize("name,obj", CUSTOM, ids=[name for name, _ in CUSTOM])
def test_kuberay_object_follows_its_crd_schema_strictly(schemas: Path, name: str,
                                                        obj: dict[str, Any]) -> None:
    assert crd_errors(schemas, obj) == []


@pytest.mark.parametrize("name,obj", CUSTOM, ids=[name for name, _ in CUSTOM])
def test_kuberay_pod_templates_are_valid_kubernetes(name: str, obj: dict[str, Any]) -> None:
    for _, template in pod_templates(obj):
        validate_built_in(as_pod_template(template))


def test_every_kind_is_present() -> None:
    kinds = {obj["kind"] for _, obj in KUBERAY_OBJECTS}
    assert {"RayCluster", "RayService", "RayJob", "ConfigMap", "Service",
            "PersistentVolumeClaim", "Namespace"} <= kinds


def test_crd_validation_rejects_an_unknown_key(schemas: Path) -> None:
    (_, cluster), *_ = [(n, o) for n, o in CUSTOM if o["kind"] == "RayCluster"]
    typo = copy.deepcopy(cluster)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["headGroupSpec"].pop(
        "rayStartParams")
    errors = crd_errors(schemas, typo)
    assert any("rayStartParam'" in error for error in errors), errors
    deep = copy.deepcopy(cluster)  # deep inside the pod template: what pruning would drop
    deep["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert any("volumeMount'" in error for error in crd_errors(schemas, deep))
    metadata = copy.deepcopy(cluster)
    metadata["metadata"]["label"] = {"a": "b"}
    assert crd_errors(schemas, metadata)
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["replicas"] = "3"
    assert crd_errors(schemas, wrong_type)


def test_crd_validation_rejects_an_unserved_api_version(schemas: Path) -> None:
    (_, job), *_ = [(n, o) for n, o in CUSTOM if o["kind"] == "RayJob"]
    with pytest.raises(AssertionError, match="not served"):
        crd_errors(schemas, {**job, "apiVersion": "ray.io/v2"})


def test_image_copies_every_package_the_project_installs() -> None:
    """``pip install .`` in the image sees every package pyproject.toml includes (a package
    added later and not copied would be missing from the image, not from the tests)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*")
                for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = DOCKERFILE.read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.M))
    assert copied == packages
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {f"!{package}/**" for package in packages} <= set(ignore)
    assert {"!pyproject.toml", f"!{pyproject['project']['readme']}"} <= set(ignore)


def test_ray_version_matches_the_image() -> None:
    dockerfile = DOCKERFILE.read_text()
    ray = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)[1]
    for name, obj in CUSTOM:
        assert ray_cluster_spec(obj)["rayVersion"] == ray, name
    torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)[1]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_VERSION := (\S+)$", makefile, re.M)[1] == torch, (
        "the image pins torch as the Makefile does")


def test_serve_config_follows_ray_serves_schema(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    (_, service), = [(n, o) for n, o in CUSTOM if o["kind"] == "RayService"]
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    settings = load_strictly(configmap_toml(tmp_path), {})  # what the RayService's pods mount
    assert config.http_options.port == settings.serve.port
    (app,) = config.applications
    assert app.args == {"config": CONFIG_PATH}


def test_serve_config_builds_the_app_from_the_configmap(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Serve controller does with serveConfigV2: import the builder and call it with
    the application's args (Ray's own rules for builders), here with the ConfigMap's TOML in
    place of the mounted file: the app gets the replicas, Kafka and shard names it configures."""
    import importlib
    import os

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from recsys.serving.deploy import SHARD_NAME_PREFIX

    for name in [n for n in os.environ if n.startswith("RECSYS_")]:
        monkeypatch.delenv(name)
    (_, service), = [(n, o) for n, o in CUSTOM if o["kind"] == "RayService"]
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, _, attribute = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attribute)
    path = configmap_toml(tmp_path)
    built = call_user_app_builder_with_args_if_necessary(builder, {**app["args"],
                                                                   "config": str(path)})
    settings = load_strictly(path, {})
    deployment = built._bound_deployment
    (config,) = deployment.init_args
    assert deployment.num_replicas == settings.serve.replicas
    assert config["bootstrap"] == settings.kafka.bootstrap
    assert config["shard_namespace"] == settings.ray.namespace == "recsys"
    assert config["shard_names"] == [f"{SHARD_NAME_PREFIX}{i}"
                                     for i in range(settings.stream.shards)]


# -- built-in Kubernetes kinds --------------------------------------------------------------------

@pytest.mark.parametrize("name,obj", BUILT_IN, ids=[name for name, _ in BUILT_IN])
def test_built_in_kind_is_valid_kubernetes(name: str, obj: dict[str, Any]) -> None:
    validate_built_in(obj)


def test_kubernetes_validate_rejects_a_misspelt_key() -> None:
    (_, configmap), *_ = [(n, o) for n, o in BUILT_IN if o["kind"] == "ConfigMap"]
    typo = copy.deepcopy(configmap)
    typo["datta"] = typo.pop("data")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_built_in(typo)
    (_, cluster), *_ = [(n, o) for n, o in CUSTOM if o["kind"] == "RayCluster"]
    template = copy.deepcopy(cluster["spec"]["headGroupSpec"]["template"])
    template["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_built_in(as_pod_template(template))


def test_services_select_pods_of_a_cluster_in_the_files() -> None:
    clusters = {obj["metadata"]["name"] for _, obj in CUSTOM if obj["kind"] == "RayCluster"}
    for name, obj in BUILT_IN:
        if obj["kind"] == "Service":
            assert obj["spec"]["selector"]["ray.io/cluster"] in clusters, name


# -- recsys configuration -------------------------------------------------------------------------

def test_compose_recsys_config_and_environment_load() -> None:
    variables = dotenv()
    for name, service in recsys_services().items():
        environ = {key: interpolate(value, variables)
                   for key, value in service.get("environment", {}).items()}
        settings = load_strictly(COMPOSE_TOML, environ)
        assert settings.serve.host == "0.0.0.0", name  # reachable from outside the container


def test_kuberay_recsys_config_and_environment_load(tmp_path: Path) -> None:
    path = configmap_toml(tmp_path)
    for name, obj in CUSTOM:
        for group, template in pod_templates(obj):
            mounts = {m["mountPath"] for c in template["spec"]["containers"]
                      for m in c.get("volumeMounts", [])}
            assert str(Path(CONFIG_PATH).parent) in mounts, f"{name}:{group}"
            for container in template["spec"]["containers"]:
                environ = container_environment(container)
                assert environ.get("RECSYS_CONFIG") == CONFIG_PATH, f"{name}:{group}"
                load_strictly(path, environ)


def test_train_tables_are_valid_training_specifications(tmp_path: Path) -> None:
    from offline.spec import TrainSpec

    for path in (COMPOSE_TOML, configmap_toml(tmp_path)):
        TrainSpec.from_table(load_strictly(path, {}).tables["train"])


def test_recsys_config_rejects_an_unknown_setting(tmp_path: Path) -> None:
    text = COMPOSE_TOML.read_text().replace("learners = 2", "learner = 2")
    (tmp_path / "typo.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"'stream\.learner'.*stream\.learners"):
        load_strictly(tmp_path / "typo.toml", {})
    with pytest.raises(ConfigWarning, match="RECSYS_SERVE_AUTH_TOKN"):
        load_strictly(COMPOSE_TOML, {"RECSYS_SERVE_AUTH_TOKN": "x"})
    section = tomllib.loads(COMPOSE_TOML.read_text())
    assert "learners" in section["stream"]  # the replacement above did change the file


# -- recsys command lines -------------------------------------------------------------------------

def test_every_file_runs_recsys_commands() -> None:
    commands = {(where.split(":")[0], argv[0]) for where, argv in COMMAND_LINES}
    assert {("docker-compose.yml", "serve"), ("docker-compose.yml", "stream"),
            ("docker-compose.yml", "train"), ("raycluster-stream.yaml", "stream"),
            ("raycluster-serve.yaml", "serve"), ("rayservice-serve.yaml", "stream"),
            ("rayjob-train.yaml", "train")} <= commands


@pytest.mark.parametrize("where,argv", COMMAND_LINES,
                         ids=[f"{where}:{argv[0]}" for where, argv in COMMAND_LINES])
def test_recsys_command_line_parses(where: str, argv: list[str]) -> None:
    args = parse_recsys(argv)
    assert args.command == argv[0]
    if getattr(args, "config", None) is not None:
        assert args.config == CONFIG_PATH, where


def test_cli_parser_rejects_a_misspelt_flag() -> None:
    with pytest.raises(AssertionError, match=r"--metric-port.*--metrics-port"):
        parse_recsys(["stream", "--metric-port", "9100"])


RAY_START_LINES = ray_start_lines()


@pytest.mark.parametrize("where,argv", RAY_START_LINES, ids=[w for w, _ in RAY_START_LINES])
def test_ray_start_options_parse(where: str, argv: list[str]) -> None:
    parse_ray_start(argv)


def test_ray_start_parser_rejects_a_misspelt_option() -> None:
    import click

    assert len(RAY_START_LINES) >= 10  # three compose services and every KubeRay node group
    with pytest.raises(click.NoSuchOption, match="dashbord-host"):
        parse_ray_start(["--head", "--dashbord-host=0.0.0.0"])
