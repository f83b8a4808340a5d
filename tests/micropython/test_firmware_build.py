"""Every firmware file compiles with mpy-cross, and the compiled image is what the other tests run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.micropython.harness import FIRMWARE_DIR, MPY_CROSS, SOURCE_ONLY, compile_firmware

pytestmark = pytest.mark.micropython


def test_every_firmware_file_compiles_with_mpy_cross(tmp_path: Path) -> None:
    # GIVEN every .py file of the firmware, boot.py and main.py included
    sources = sorted(FIRMWARE_DIR.glob("*.py"))
    assert {"boot.py", "main.py", "app.py", "mqtt.py", "protocol.py", "ledger.py", "handlers.py", "hw.py"} <= {
        s.name for s in sources
    }
    for src in sources:
        # WHEN mpy-cross compiles it
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([MPY_CROSS, "-o", str(out), src.name], cwd=FIRMWARE_DIR, capture_output=True, text=True)
        # THEN it compiles without error into a MicroPython .mpy file
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.read_bytes()[:1] == b"M"


def test_the_deployable_image_has_mpy_modules_and_source_entry_points(tmp_path: Path) -> None:
    # GIVEN the image the tests and `mpremote` deploy
    image = compile_firmware(tmp_path / "image")
    # THEN the board's entry points stay source and everything else is compiled
    names = {p.name for p in image.iterdir()}
    assert set(SOURCE_ONLY) <= names
    modules = {p.stem for p in FIRMWARE_DIR.glob("*.py")} - {Path(s).stem for s in SOURCE_ONLY}
    assert {m + ".mpy" for m in modules} <= names
    assert not {m + ".py" for m in modules} & names
