# Runs after boot.py on the device; on a PC: `micropython main.py path/to/config.json`.
import sys

import app

app.main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
