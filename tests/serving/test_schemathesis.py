"""The served OpenAPI schema against the live app: a schemathesis run over every operation with
every check, on the raw schema the replica serves at ``/openapi.json``, with zero failures.

One live stack for the module (real Kafka, Ray Serve and the streaming pipeline, as in
``test_serving.py``); ``st run`` is schemathesis's own command line, run as a subprocess with a
bounded number of examples per operation and a fixed seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from recsys.bandits import DiagLinUCB, EpsilonGreedy, policy_spec
from tests.serving.live import serving_stack

pytestmark = pytest.mark.integration

N_ITEMS, DIM = 12, 4
EXAMPLES = 100
TOKEN = "schemathesis-token"  # with a token, the 401s and the security schemes are checked too
# Valid data that the schema cannot tell from invalid: k above the catalogue, candidates outside
# it, a context norm above serve.max_context_norm, cluster ids and weights of different lengths,
# no context for a user without a user-feature row. Each gets a 422 naming the field; the
# schema's 422 description lists them.
# Invalid data may also be too large to read: a list of 10,001 events is over
# serve.max_body_bytes and gets the documented 413 before it is parsed.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"]
"""


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    policies = {"ucb": policy_spec(DiagLinUCB(alpha=0.5, epsilon=0.2)),
                "uniform": policy_spec(EpsilonGreedy(epsilon=1.0))}
    # one request at a time: a queueing delay budget far above any pause of a shared machine,
    # so that no request is shed (any 5xx, 503 included, fails the run)
    with serving_stack(kafka_bootstrap, tmp, "st", n_items=N_ITEMS, dim=DIM, policies=policies,
                       stream={"batch_size": 500, "window_ms": 1000, "allowed_lateness_ms": 0},
                       serve={"traffic": "ucb=0.5,uniform=0.5", "max_queue_delay_ms": 30_000,
                              "auth_token": TOKEN}) as (live, _):
        yield live, tmp


def test_the_served_schema_holds_for_every_operation_and_check(stack) -> None:
    live, tmp = stack
    schema = requests.get(f"{live.url}/openapi.json", timeout=10).json()
    dense = schema["components"]["schemas"]["ContextIn"]["properties"]["dense"]
    assert dense["minItems"] == dense["maxItems"] == DIM  # the replica's snapshot is loaded
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    config = Path(tmp / "schemathesis.toml")
    config.write_text(CONFIG)
    command = [str(Path(sys.executable).parent / "st"), "--no-color", "--config-file",
               str(config), "run",
               f"{live.url}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
               "--seed", "17", "--workers", "1", "--request-timeout", "30",
               "--suppress-health-check", "all", "--header", f"Authorization: Bearer {TOKEN}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "NO_COLOR": "1"}, cwd=tmp)
    output = "\n".join(line[:300] for line in (run.stdout + run.stderr).splitlines())
    assert run.returncode == 0, output[-12000:]
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert operations >= 4 and {"/recommend", "/feedback", "/health", "/metrics"} <= set(
        schema["paths"])
    assert re.search(rf"Operations:\s+{operations} selected / {operations} total", output), output
    assert re.search(rf"Tested:\s+{operations}\b", output), output
    # the run reached the routes (the token worked) and met every kind of answer it documents
    metrics = requests.get(f"{live.url}/metrics", timeout=10).text
    answered = {(m[0], m[1]): float(m[2]) for m in re.findall(
        r'recsys_serve_requests_total\{endpoint="([^"]+)",status="(\d+)"\} (\S+)', metrics)}
    for path, status in (("/recommend", "200"), ("/recommend", "401"), ("/recommend", "422"),
                         ("/recommend", "400"), ("/feedback", "202"), ("/feedback", "401"),
                         ("/feedback", "422"), ("/health", "200"), ("/metrics", "200")):
        assert answered.get((path, status), 0) > 0, (path, status, answered)
