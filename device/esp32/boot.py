# Runs first on every boot: join Wi-Fi (a no-op on the unix port), then main.py runs.
import sys

import config
import net

try:
    net.connect_wifi(config.load())
except (OSError, ValueError) as e:
    print("boot: no network yet:", e)
# boot.py and main.py share their globals: let config's code leave the heap (app.main loads it once more).
del config, net
sys.modules.pop("config", None)
