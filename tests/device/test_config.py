"""The agent's TOML configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotbridge_pi import config
from iotbridge_pi.handlers import default_registry
from iotbridge_pi.hardware import open_hardware
from iotbridge_pi.model import DeviceModel

EXAMPLE = Path(__file__).resolve().parents[2] / "device" / "pi" / "deploy" / "agent.example.toml"


def test_the_shipped_example_config_loads() -> None:
    # GIVEN the example config a Pi owner copies to /etc/iotbridge-pi/agent.toml
    # WHEN it is loaded
    cfg = config.load(EXAMPLE)

    # THEN it describes mutual TLS to AWS IoT on 8883 with a persistent state dir
    assert cfg.endpoint.port == 8883 and cfg.endpoint.tls is not None
    assert cfg.endpoint.tls.cert is not None and cfg.endpoint.tls.cert.endswith(".pem.crt")
    assert cfg.state_dir == Path("/var/lib/iotbridge-pi") and cfg.reboot == "system"


def test_port_443_uses_the_aws_alpn_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    # GIVEN a config for port 443 with certificate paths relative to the file
    path = tmp_path / "agent.toml"
    path.write_text('thing = "pi-1"\nhost = "x.iot.aws"\nport = 443\n[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n')

    # WHEN it is loaded
    cfg = config.load(path)

    # THEN ALPN x-amzn-mqtt-ca is on and the files are found next to the config
    assert cfg.endpoint.tls is not None and cfg.endpoint.tls.alpn == "x-amzn-mqtt-ca"
    assert cfg.endpoint.tls.ca == str(tmp_path / "ca.pem")


def test_plain_mqtt_with_a_username_for_a_local_stack_without_tls(tmp_path: Path) -> None:
    # GIVEN a config with [auth] and no [tls]
    path = tmp_path / "agent.toml"
    path.write_text('thing = "pi-1"\nhost = "127.0.0.1"\nport = 1883\n[auth]\nusername = "pi-1"\npassword = "-s3cret"\n')

    # WHEN it is loaded / THEN it connects plainly with those credentials
    cfg = config.load(path)
    assert cfg.endpoint.tls is None
    assert (cfg.endpoint.username, cfg.endpoint.password) == ("pi-1", "-s3cret")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('thing = "pi/1"\nhost = "h"\n', "thing name"),
        ('thing = "pi-1"\nhost = "h"\ntelemetry_interval = 0\n', "telemetry_interval"),
        ('thing = "pi-1"\nhost = "h"\nhardware = "fpga"\n', "hardware"),
        ('thing = "pi-1"\nhost = "h"\nport = "8883"\n', "port"),
        ('thing = "pi-1"\nhost = "h"\n[tls]\ncert = "c.pem"\n', "ca"),
        ("thing = ", "agent.toml"),
    ],
)
def test_bad_configs_are_refused_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    # GIVEN a config with one mistake
    path = tmp_path / "agent.toml"
    path.write_text(text)

    # WHEN it is loaded / THEN the error names the problem
    with pytest.raises(config.ConfigError, match=problem):
        config.load(path)


@pytest.mark.filterwarnings("ignore:Falling back from")  # gpiozero, when told to insist on GPIO
def test_without_gpio_auto_falls_back_to_simulated_and_gpio_insists() -> None:
    # GIVEN a machine without GPIO hardware (a Pi would rightly pick GPIO)
    if Path("/dev/gpiochip0").exists() or os.environ.get("GPIOZERO_PIN_FACTORY"):
        pytest.skip("this machine can drive GPIO")
    # WHEN hardware is opened in auto mode / THEN simulated outputs are used and say so
    hw = open_hardware("auto", led_pin=17, relay_pin=27)
    assert hw.kind == "simulated"
    hw.led.set(True)
    assert hw.led.is_on

    # AND "gpio" refuses rather than pretending
    with pytest.raises(RuntimeError, match="GPIO"):
        open_hardware("gpio", led_pin=17, relay_pin=27)


@pytest.fixture
def mock_gpio() -> Iterator[Any]:
    """gpiozero's mock pin factory: the real gpiozero code path, pins in memory."""
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    previous = gpiozero.Device.pin_factory
    factory = MockFactory()
    gpiozero.Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.close()
        gpiozero.Device.pin_factory = previous


def test_on_gpio_the_led_and_relay_commands_drive_their_pins(mock_gpio: Any, tmp_path: Path) -> None:
    # GIVEN a device on GPIO (LED on BCM 5, relay on BCM 6)
    hw = open_hardware("gpio", led_pin=5, relay_pin=6)
    device = DeviceModel(hw, interval_s=60)
    registry = default_registry()

    # WHEN the led and relay handlers run
    registry.get("led").handler(device, {"state": "on"})  # type: ignore[union-attr]
    registry.get("relay").handler(device, {"on": True})  # type: ignore[union-attr]

    # THEN the pins are high, and the device says it is real hardware
    assert mock_gpio.pin(5).state and mock_gpio.pin(6).state
    assert hw.kind == "gpio" and device.state()["led"] == "on"

    # AND toggling drives the LED pin low again
    registry.get("led").handler(device, {"state": "toggle"})  # type: ignore[union-attr]
    assert not mock_gpio.pin(5).state
