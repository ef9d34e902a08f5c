"""Configuration precedence (defaults < file < environment < CLI) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.cli import main
from recsys.config import ConfigError, load_settings, parse_assignments


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recsys.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.kafka.bootstrap is None
    assert settings.ray.address is None
    assert settings.mlflow_tracking_uri.startswith("sqlite:///")
    assert settings.mlflow_tracking_uri.endswith(".recsys/mlflow.db")
    assert set(settings.sources.values()) == {"default"}


def test_file_then_env_then_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'data_dir = "/data/a"\n[kafka]\npartitions = 8\nbootstrap = "file:9092"\n'
        '[mlflow]\nexperiment = "from-file"\n',
    )
    env = {"RECSYS_KAFKA_PARTITIONS": "12", "RECSYS_KAFKA_BOOTSTRAP": "env:9092"}
    cli = {"kafka.bootstrap": "cli:9092", "ray.address": None}
    settings = load_settings(config_file=path, environ=env, cli=cli)
    assert settings.mlflow.experiment == "from-file"  # file only
    assert settings.kafka.partitions == 12  # env beats file
    assert settings.kafka.bootstrap == "cli:9092"  # cli beats env and file
    assert settings.ray.address is None  # unset flag overrides nothing
    assert settings.data_dir == Path("/data/a")
    assert settings.sources["mlflow.experiment"] == "file"
    assert settings.sources["kafka.partitions"] == "env"
    assert settings.sources["kafka.bootstrap"] == "cli"
    assert settings.sources["ray.address"] == "default"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[ray]\nnum_cpus = 3\n")
    settings = load_settings(environ={"RECSYS_CONFIG": str(path)})
    assert settings.ray.num_cpus == 3
    assert settings.config_file == path


def test_security_settings_pass_through_to_the_client() -> None:
    env = {
        "RECSYS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RECSYS_KAFKA_SASL_MECHANISM": "PLAIN",
        "RECSYS_KAFKA_SASL_PLAIN_USERNAME": "svc",
        "RECSYS_KAFKA_SASL_PLAIN_PASSWORD": "pw",
    }
    options = load_settings(environ=env).kafka.client_options()
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[kafka]\npartitons = 3\n", {}, "unknown setting 'kafka.partitons'"),
        ("[kafak]\npartitions = 3\n", {}, r"unknown section \[kafak\]"),
        ("[kafka]\npartitions = 'many'\n", {}, "kafka.partitions .*expected int, got 'many'"),
        ("", {"RECSYS_KAFKA_PARTITIONS": "0"}, "kafka.partitions must be >= 1"),
        ("", {"RECSYS_KAFKA_COMPRESSION": "rar"}, "kafka.compression must be one of"),
        ("", {"RECSYS_RAY_ADDRESS": "nowhere"}, "ray.address must be"),
        ("[kafka\n", {}, "not valid TOML"),
        ("", {"RECSYS_STREAM_SHARDS": "0"}, "stream.shards must be >= 1"),
        ("", {"RECSYS_STREAM_UPDATE_MODE": "eventually"}, "stream.update_mode must be"),
        ("[stream]\nlayout = 'graph'\n", {}, "needs stream.graph_file"),
        ("", {"RECSYS_STREAM_REWARD_MAPPING": "click=1,like=1"}, "unknown feedback type 'like'"),
        ("", {"RECSYS_STREAM_REWARD_MAPPING": "click"}, "expected type=value pairs, got 'click'"),
        ("", {"RECSYS_STREAM_REWARD_MAPPING": "click=1,click=0"}, "'click' is mapped twice"),
        ("", {"RECSYS_SERVE_PORT": "70000"}, "serve.port must be in 1..65535"),
        ("", {"RECSYS_SERVE_BACKEND": "jax"}, "serve.backend must be 'numpy' or 'torch'"),
        ("", {"RECSYS_SERVE_INGRESS": "nginx"}, "serve.ingress must be"),
        ("", {"RECSYS_SERVE_TRAFFIC": "ts=-1"}, "serve.traffic: expected name=share"),
        ("", {"RECSYS_SERVE_TRAFFIC": "ts=0"}, "give at least one policy a positive share"),
        ("[serve]\nmax_staleness_ms = 100\nrefresh_interval_ms = 150\n", {},
         "must not exceed serve.max_staleness_ms"),
    ],
)
def test_bad_configuration_says_what_to_fix(tmp_path, text, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=write(tmp_path, text), environ=env)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml", environ={})


def test_set_assignments() -> None:
    assert parse_assignments(["kafka.partitions=8", "mlflow.experiment=a=b"]) == {
        "kafka.partitions": "8",
        "mlflow.experiment": "a=b",
    }
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_assignments(["kafka.partitions"])
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_assignments(["kafka.nope=1"])


def test_info_prints_values_and_sources(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[kafka]\npartitions = 6\n")
    monkeypatch.setenv("RECSYS_MLFLOW_EXPERIMENT", "env-exp")
    monkeypatch.setenv("RECSYS_KAFKA_SASL_PLAIN_PASSWORD", "secret")
    assert main(["info", "--ray-address", "ray://head:10001", "--set", "ray.num_cpus=4"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "6" in lines["kafka.partitions"] and "[file]" in lines["kafka.partitions"]
    assert "env-exp" in lines["mlflow.experiment"] and "[env]" in lines["mlflow.experiment"]
    assert "ray://head:10001" in lines["ray.address"] and "[cli]" in lines["ray.address"]
    assert "[cli]" in lines["ray.num_cpus"]
    assert "secret" not in out


def test_cli_reports_configuration_errors(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^2$"):  # argparse's usage-error exit status
        main(["info", "--set", "kafka.partitions=zero"])
    assert "kafka.partitions" in capsys.readouterr().err


def test_stream_settings_resolve_paths_and_rewards(tmp_path: Path) -> None:
    text = "data_dir = 'state'\n[stream]\nreward_mapping = 'click=1, purchase=2.5, skip=0'\n"
    settings = load_settings(config_file=write(tmp_path, text), environ={})
    assert settings.stream.rewards() == {"click": 1.0, "purchase": 2.5, "skip": 0.0}
    assert settings.checkpoint_uri == str((Path("state") / "checkpoints").resolve())
    env = {"RECSYS_STREAM_LAKE_URI": "memory://lake", "RECSYS_STREAM_CENTRED": "false"}
    settings = load_settings(environ=env)
    assert settings.lake_uri == "memory://lake" and settings.stream.centred is False


def test_command_tables_are_kept_whole_for_their_command(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mlflow]\nexperiment = "coat"\n[train]\nseeds = [0, 1]\n[train.model]\nname = "mf"\n',
    )
    settings = load_settings(config_file=path, environ={})
    assert settings.mlflow.experiment == "coat"
    assert settings.tables["train"] == {"seeds": [0, 1], "model": {"name": "mf"}}
    assert load_settings(config_file=write(tmp_path, "[kafka]\n"), environ={}).tables == {}
