"""Configuration precedence (defaults < file < environment < CLI) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.cli import main
from recsys.config import ConfigError, ConfigWarning, load_settings, parse_assignments


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
        "client": "kafka-python",  # kafka.client; kafka_python_options() drops it
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[kafka]\npartitons = 3\n", {},
         "recsys.toml: expected a known setting, got 'kafka.partitons'; "
         "did you mean kafka.partitions[?]"),
        ("[kafak]\npartitions = 3\n", {}, r"got \[kafak\]; did you mean kafka[?]"),
        ("[kafka]\npartitions = 'many'\n", {},
         "^kafka.partitions: expected int, got 'many'; set in .*recsys.toml$"),
        ("", {"RECSYS_KAFKA_PARTITIONS": "0"},
         "^kafka.partitions: expected an integer >= 1, got 0$"),
        ("", {"RECSYS_KAFKA_COMPRESSION": "rar"},
         "^kafka.compression: expected one of none, gzip, lz4, zstd, snappy, got 'rar'$"),
        ("", {"RECSYS_RAY_ADDRESS": "nowhere"}, "^ray.address: expected 'auto', "),
        ("[kafka\n", {}, "recsys.toml: expected valid TOML, got "),
        ("", {"RECSYS_STREAM_SHARDS": "0"}, "^stream.shards: expected an integer >= 1, got 0$"),
        ("", {"RECSYS_STREAM_UPDATE_MODE": "windw"},
         "^stream.update_mode: expected one of fresh, window, got 'windw'; did you mean window"),
        ("[stream]\nlayout = 'graph'\n", {},
         "^stream.graph_file: expected .* got none; stream.layout = 'graph' needs it$"),
        ("", {"RECSYS_STREAM_REWARD_MAPPING": "click=1,clik=1"},
         "^stream.reward_mapping: expected feedback types .*, got unknown type 'clik'; "
         "did you mean click[?]$"),
        ("", {"RECSYS_STREAM_REWARD_MAPPING": "click"},
         "^stream.reward_mapping: expected type=value pairs, got 'click'$"),
        ("", {"RECSYS_STREAM_REWARD_MAPPING": "click=1,click=0"}, "got 'click' mapped twice"),
        ("", {"RECSYS_SERVE_PORT": "70000"}, "^serve.port: expected a port in 1..65535"),
        ("", {"RECSYS_SERVE_BACKEND": "jax"}, "^serve.backend: expected one of numpy, torch"),
        ("", {"RECSYS_SERVE_INGRESS": "nginx"}, "^serve.ingress: expected one of haproxy, proxy"),
        ("", {"RECSYS_SERVE_TRAFFIC": "ts=-1"}, "^serve.traffic: expected name=share"),
        ("", {"RECSYS_SERVE_TRAFFIC": "ts=0"}, "^serve.traffic: expected at least one positive"),
        ("", {"RECSYS_SERVE_TRAFFIC": "diag_lin_tss=1"},
         "^serve.traffic: expected policy names among diag_lin_ts, uniform "
         r"\(serve.policies\), got 'diag_lin_tss'; did you mean diag_lin_ts[?]$"),
        ("[serve]\npolicies = '{\"ucb\": {}}'\ntraffic = 'ucb=1,uniform=1'\n", {},
         "got 'uniform'$"),
        ("", {"RECSYS_SERVE_POLICIES": "{ucb: 1}"}, "^serve.policies: expected a JSON object"),
        ("[serve]\nmax_staleness_ms = 100\nrefresh_interval_ms = 150\n", {},
         r"^serve.refresh_interval_ms: expected at most serve.max_staleness_ms \(100\), got 150"),
    ],
)
def test_bad_configuration_says_what_to_fix(tmp_path, text, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=write(tmp_path, text), environ=env)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: expected an existing TOML file, got "):
        load_settings(config_file=tmp_path / "nope.toml", environ={})


def test_unknown_setting_names_the_nearest_keys_not_all_of_them() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_assignments(["stream.windw_ms=5"])
    text = str(caught.value)
    assert text.startswith("--set: expected a known setting, got 'stream.windw_ms'")
    assert "did you mean stream.window_ms?" in text
    assert "kafka.bootstrap" not in text  # not the whole list
    with pytest.raises(ConfigError, match=r"got 'zzz\.qqq'; `recsys info` lists every setting$"):
        parse_assignments(["zzz.qqq=1"])


def test_unknown_recsys_environment_variables_are_warned_about() -> None:
    env = {"RECSYS_STREM_LAYOUT": "graph", "RECSYS_CONFIG_DIR": "x", "RECSYS_SHARED_DATA": "d",
           "RECSYS_KAFKA_PARTITIONS": "3", "OTHER_VARIABLE": "1"}
    with pytest.warns(ConfigWarning) as caught:
        settings = load_settings(environ=env)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages  # settings, RECSYS_SHARED_DATA and others are not
    assert messages[0].startswith("environment: expected RECSYS_<SECTION>_<KEY> of a known "
                                  "setting, got RECSYS_CONFIG_DIR (ignored); did you mean "
                                  "RECSYS_CONFIG?")
    assert "got RECSYS_STREM_LAYOUT (ignored); did you mean RECSYS_STREAM_LAYOUT?" in messages[1]
    assert settings.stream.layout == "dense" and settings.kafka.partitions == 3


def test_set_assignments() -> None:
    assert parse_assignments(["kafka.partitions=8", "mlflow.experiment=a=b"]) == {
        "kafka.partitions": "8",
        "mlflow.experiment": "a=b",
    }
    with pytest.raises(ConfigError, match=r"^--set: expected section\.key=value"):
        parse_assignments(["kafka.partitions"])
    with pytest.raises(ConfigError, match=r"^--set: expected a known setting"):
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
