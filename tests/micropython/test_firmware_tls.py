"""The firmware over mutual TLS with DER files, as on a device talking to AWS IoT Core on 8883."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig
from tests.micropython.conftest import StartFirmware
from tests.micropython.harness import ShadowPeer, command

pytestmark = pytest.mark.micropython
THING = "esp32-tls"


@pytest.fixture
def stack_config(tmp_path: Path) -> StackConfig:
    return StackConfig.free(tmp_path / "stack", tls=True)


def tls_config(broker: Broker, thing: str) -> dict[str, object]:
    paths = broker.device_cert_paths(thing)
    return {
        "thing": thing, "host": "127.0.0.1", "port": broker.config.mqtts_port, "tls": True,
        "server_hostname": "localhost",  # the broker's certificate names localhost
        "ca": str(paths.ca_der), "cert": str(paths.cert_der), "key": str(paths.key_der),
    }


def test_device_with_its_certificate_completes_a_command_over_mutual_tls(
    start_firmware: StartFirmware, broker: Broker
) -> None:
    # GIVEN the firmware configured with its DER certificate, key and the CA
    peer = ShadowPeer(broker.service_endpoint(), THING)
    try:
        # WHEN it connects to the mutual-TLS listener
        start_firmware(tls_config(broker, THING))
        # THEN the broker accepts it under its certificate's name and a command completes
        peer.send_commands({"tls-1": command("ping")})
        update = peer.next_outcome()
        assert update["state"]["reported"]["tls-1"]["result"] == {"pong": True}
    finally:
        peer.close()


def test_device_presenting_another_things_certificate_cannot_touch_this_things_shadow(
    start_firmware: StartFirmware, broker: Broker
) -> None:
    # GIVEN a firmware configured as THING but holding the certificate of another thing
    cfg = tls_config(broker, "someone-else")
    cfg["thing"] = THING
    # WHEN it connects and subscribes to THING's shadow topics
    fw = start_firmware(cfg, wait_ready=False)
    # THEN the broker turns it away (the certificate CN decides, not the config): it never gets ready
    fw.wait_for("disconnected")
    assert not any("ready" in line for line in fw.lines)
