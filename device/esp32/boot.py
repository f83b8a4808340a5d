# Runs first on every boot: join Wi-Fi (a no-op on the unix port), then main.py runs.
import config
import net

try:
    net.connect_wifi(config.load())
except (OSError, ValueError) as e:
    print("boot: no network yet:", e)
