"""Fixtures for the ESP32 firmware tests: a firmware process factory and a shadow peer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig
from tests.micropython.harness import FirmwareProcess, ShadowPeer, compile_firmware

pytestmark = pytest.mark.micropython

StartFirmware = Callable[..., FirmwareProcess]


@pytest.fixture
def stack_config(tmp_path: Path) -> StackConfig:
    # Plain MQTT with a per-device password; the TLS test asks for certificates itself.
    return StackConfig.free(tmp_path / "stack", tls=False)


@pytest.fixture(scope="session")
def firmware_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware as deployed: modules compiled by mpy-cross, boot.py and main.py as source.

    Compiling the sources on the board itself needs more heap than an ESP32
    without PSRAM has to spare; devices get .mpy files.
    """
    return compile_firmware(tmp_path_factory.mktemp("esp32-image"))


@pytest.fixture
def start_firmware(tmp_path: Path, firmware_image: Path) -> Iterator[StartFirmware]:
    started: list[FirmwareProcess] = []

    def start(config: dict[str, Any], *, name: str = "esp32", wait_ready: bool = True, **kw: Any) -> FirmwareProcess:
        kw.setdefault("code_dir", firmware_image)
        fw = FirmwareProcess(tmp_path / name, config, **kw).start()
        started.append(fw)
        if wait_ready:
            fw.wait_for("ready")
        return fw

    yield start
    for fw in started:
        fw.stop()
        print(f"--- firmware log ({fw.workdir.name}, heap {fw.heap}) ---", *fw.lines[-40:], sep="\n")
    # The firmware restarts itself after an unexpected error (as a board must); a test that
    # passed anyway still fails here, so a crash is never hidden by the restart.
    fatal = [ln for fw in started if not fw.fatal_expected for ln in fw.lines if ln.startswith("iotbridge: fatal")]
    assert not fatal, f"the firmware hit an unexpected error: {fatal}"


@pytest.fixture
def peer(broker: Broker) -> Iterator[ShadowPeer]:
    p = ShadowPeer(broker.service_endpoint(), "esp32-test")
    yield p
    p.close()


@pytest.fixture
def device_config(broker: Broker) -> dict[str, Any]:
    ep = broker.device_endpoint("esp32-test")
    return {"thing": "esp32-test", "host": ep.host, "port": ep.port, "user": ep.username, "password": ep.password}
