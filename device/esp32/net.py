"""Wi-Fi, behind one function so the unix port (no `network` module) can skip it."""

try:
    import network
except ImportError:
    network = None

from time import sleep_ms


def connect_wifi(cfg, timeout_ms=20000):
    """Join cfg["wifi"] = {"ssid", "password"}; a no-op without Wi-Fi hardware. True when up."""
    wifi = cfg.get("wifi")
    if network is None or not wifi:
        return True
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if sta.isconnected():
        return True
    sta.connect(wifi["ssid"], wifi.get("password", ""))
    waited = 0
    while not sta.isconnected() and waited < timeout_ms:
        sleep_ms(200)
        waited += 200
    return sta.isconnected()
