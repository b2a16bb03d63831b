"""Every shop API operation, fuzzed from its own OpenAPI document through the gateway.

schemathesis (its CLI, in a subprocess) reads each service's ``openapi.json`` from the
gateway and sends generated requests, valid and invalid, through the gateway:
anonymous, with a user's token and with a staff token. No answer may be a 5xx of the
service, every status must be documented for its operation, and every content type,
JSON body and documented header must match the schema. Runs are bounded in examples per
operation and in time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_shop import call, shop  # noqa: F401 - shop: the fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # boots the shop

import shopctl  # noqa: E402 - importable once test_shop put the shop on sys.path

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
SERVICES = ("users", "products", "orders")
CHECKS = ",".join([
    "not_a_server_error", "response_schema_conformance", "status_code_conformance",
    "content_type_conformance", "response_headers_conformance",
])
MAX_EXAMPLES = 20
"""Generated test cases per operation and phase."""
HANG_SECONDS = 300
"""A run that takes longer than this is stuck (a run takes seconds; with ``--max-time``
schemathesis would keep fuzzing until the time is spent, so the bound is ours)."""


@pytest.fixture(scope="module")
def tokens(shop: shopctl.Shop) -> dict[str, str]:  # noqa: F811
    """The Authorization header of each identity: none, a user's token, a staff token."""
    status, user = call("POST", f"{shop.url()}/api/users/",
                        {"email": "fuzz@shop.example", "name": "Fuzz"})
    assert status == 201, user
    return {"anonymous": "", "user": f"Bearer {user['token']}",
            "staff": f"Bearer {shopctl.staff_token()}"}


def test_the_input_middleware_turns_a_nul_into_a_400_through_the_gateway(
        shop: shopctl.Shop) -> None:  # noqa: F811
    status, body = call("GET", f"{shop.url()}/api/products/?category=%00x")
    assert status == 400, body
    assert body["fields"] == {"category": ["contains a NUL byte"]}


@pytest.mark.parametrize("identity", ["anonymous", "user", "staff"])
@pytest.mark.parametrize("service", SERVICES)
def test_schemathesis_finds_no_failure(shop: shopctl.Shop,  # noqa: F811
                                       tokens: dict[str, str],
                                       service: str, identity: str,
                                       tmp_path: Path) -> None:
    gateway = shop.url()
    command = [
        str(SCHEMATHESIS), "run", f"{gateway}/api/{service}/openapi.json", "--url", gateway,
        "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
        "--seed", "17", "--generation-database", "none",
        "--request-timeout", "10", "--no-color", "--output-truncate", "true",
        "--phases", "examples,coverage,fuzzing",
    ]
    if tokens[identity]:
        command += ["-H", f"Authorization: {tokens[identity]}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
