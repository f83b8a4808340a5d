"""The template passes the linters AWS uses and builds into deployable artifacts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.template import cfn


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_cfn_lint_reports_nothing(repo: Path) -> None:
    # GIVEN cfn-lint from the project venv (it applies the SAM transform itself)
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    assert cfn_lint.exists(), "cfn-lint is a test dependency (pyproject [test])"
    # WHEN it lints template.yaml
    result = _run([str(cfn_lint), "template.yaml"], cwd=repo)
    # THEN it finds no error, warning or informational issue
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.sam
def test_sam_validate_lint_passes(repo: Path, sam_cli: Path, sam_env: dict[str, str]) -> None:
    # GIVEN the SAM CLI in its own venv, with no AWS account
    # WHEN it validates and lints the template (the region only selects the lint rules' specs)
    result = _run([str(sam_cli), "validate", "--lint", "--region", "us-east-1", "-t", "template.yaml"], cwd=repo, env=sam_env)
    # THEN the template is valid
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.mark.sam
def test_sam_build_packages_every_function_with_its_dependencies(
    repo: Path, sam_cli: Path, sam_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN the template, functions/ and functions/requirements.txt
    build_dir = tmp_path / "build"
    # WHEN `sam build` runs into a temporary directory (no cache: a fresh clone's build)
    result = _run(
        [str(sam_cli), "build", "-t", str(repo / "template.yaml"), "--build-dir", str(build_dir),
         "--cache-dir", str(tmp_path / "cache"), "--region", "us-east-1"],
        cwd=repo, env=sam_env, timeout=280,
    )
    # THEN it succeeds
    assert result.returncode == 0, result.stdout + result.stderr
    built = cfn.load(build_dir / "template.yaml")
    template = cfn.load(repo / "template.yaml")
    arch = template["Globals"]["Function"]["Architectures"][0]
    for name in ("ApiFunction", "PresenceFunction", "JobsFunction"):
        # AND each function's artifact holds the shared contract, its own package and
        # the pinned dependencies, compiled for the function's architecture
        artifact = build_dir / name
        assert built["Resources"][name]["Properties"]["CodeUri"] == name
        handler_module = built["Resources"][name]["Properties"]["Handler"].split(".")[0]
        for package in ("iotbridge_contract", handler_module, "aws_lambda_powertools", "boto3", "aws_xray_sdk"):
            assert (artifact / package).is_dir(), f"{name}: {package} missing from the build"
        # AND no Pydantic: nothing imports it at runtime, and it was the largest dependency
        assert not (artifact / "pydantic").exists(), f"{name}: pydantic is packaged but unused"
        machine = {"arm64": "aarch64", "x86_64": "x86_64"}[arch]
        assert list((artifact / "wrapt").glob(f"*{machine}*.so")), f"{name}: wrapt (X-Ray) not built for {arch}"
        # AND it fits Lambda's 250 MB limit for an unzipped deployment package
        size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
        assert size < 250 * 1024 * 1024, f"{name}: {size / 2**20:.0f} MB unzipped"
