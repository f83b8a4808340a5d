"""The local stack's data dir holds device keys and passwords and the API key: other users on the machine read none of it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbridge_local.cli import _only_stack_in
from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what most desktops have: new files 0644, new dirs 0755
    yield
    os.umask(old)


def test_a_device_password_is_written_for_its_owner_only(tmp_path: Path) -> None:
    # GIVEN a stack whose devices log in with a password (`iotbridge up --no-tls`)
    stack = LocalStack(StackConfig.free(tmp_path / "stack", tls=False, devices=1))
    # WHEN it writes a device's agent.toml, and its stack.json (with the API key)
    agent = stack._write_device_config("sim-1")
    stack._write_state()
    # THEN the password is in the file, and only the owner can read either
    assert "password = " in agent.read_text()
    assert _mode(agent) == 0o600
    assert _mode(stack.data_dir / "stack.json") == 0o600


def test_up_creates_a_data_dir_only_its_owner_can_enter(tmp_path: Path) -> None:
    # GIVEN no data dir yet
    data_dir = tmp_path / "new" / ".iotbridge"
    # WHEN `iotbridge up` takes it
    with _only_stack_in(data_dir):
        pass
    # THEN it is the owner's alone
    assert _mode(data_dir) == 0o700


def test_up_tightens_a_data_dir_it_made_readable_before(tmp_path: Path) -> None:
    # GIVEN a data dir of ours left world-readable (by an earlier version, or a mkdir)
    data_dir = tmp_path / ".iotbridge"
    data_dir.mkdir(mode=0o755)
    # WHEN `iotbridge up` takes it
    with _only_stack_in(data_dir):
        pass
    # THEN the group and others lose access; the owner keeps theirs
    assert _mode(data_dir) == 0o700


def test_up_refuses_a_data_dir_another_user_owns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a data dir that belongs to someone else (made in advance by another user, say in /tmp)
    data_dir = tmp_path / "theirs"
    data_dir.mkdir(mode=0o777)
    data_dir.chmod(0o777)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(data_dir).st_uid + 1)
    # WHEN `iotbridge up` is pointed at it THEN it refuses, saying why, and writes nothing there
    with pytest.raises(PermissionError, match="belongs to another user"), _only_stack_in(data_dir):
        pass
    assert list(data_dir.iterdir()) == [] and _mode(data_dir) == 0o777


def test_up_refuses_a_shared_directory_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    # GIVEN a shared directory such as /tmp (sticky, writable by all)
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    # WHEN `iotbridge up --data-dir` names it THEN it refuses, and does not lock everyone else out of it
    with pytest.raises(PermissionError, match="shared directory"), _only_stack_in(shared):
        pass
    assert _mode(shared) == 0o1777
