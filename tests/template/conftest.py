"""Fixtures for the template checks: the repository, the parsed template, the SAM CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.template import cfn

REPO = Path(__file__).resolve().parents[2]
SAM = REPO / ".venv-sam" / "bin" / "sam"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return cfn.load(REPO / "template.yaml")


@pytest.fixture
def sam_cli() -> Path:
    if not SAM.exists():
        pytest.skip(f"SAM CLI not installed at {SAM}: run `make setup-test` (infra/bootstrap.sh test) to create .venv-sam")
    return SAM


@pytest.fixture
def sam_env() -> dict[str, str]:
    """The SAM CLI without AWS: no telemetry, any region, dummy credentials.

    HOME stays: pip (run by `sam build`) reads its index configuration from there.
    """
    env = dict(os.environ)
    env.update(
        SAM_CLI_TELEMETRY="0",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.pop("AWS_PROFILE", None)
    return env
