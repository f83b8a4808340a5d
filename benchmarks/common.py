"""What every benchmark shares: statistics, plots, progress, an HTTP client, a local stack."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]


# -- statistics ------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(samples_s: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max in milliseconds, rounded for reading."""
    values = sorted(v * 1000 for v in samples_s)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(statistics.fmean(values), 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else math.inf


# -- progress and output ---------------------------------------------------------------


def progress(iterable: Iterable[Any], *, desc: str, total: int | None = None) -> Iterator[Any]:
    """A tqdm bar on stderr, silent when stderr is not a terminal (the smoke test, CI)."""
    yield from tqdm(iterable, desc=desc, total=total, leave=False, disable=not sys.stderr.isatty())


def write_json(out: Path, name: str, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_latencies(out: Path, name: str, series: dict[str, list[float]], title: str) -> Path:
    """Histogram (log x) and CDF of latency series given in seconds, side by side."""
    plt = _pyplot()
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, samples in series.items():
        ms = sorted(s * 1000 for s in samples if s > 0)
        if not ms:
            continue
        bins = [ms[0] * (ms[-1] / ms[0]) ** (i / 60) for i in range(61)] if ms[-1] > ms[0] else 10
        hist.hist(ms, bins=bins, alpha=0.5, label=label)
        cdf.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=label)
    for ax in (hist, cdf):
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    hist.set_ylabel("count")
    cdf.set_ylabel("fraction ≤ x")
    fig.suptitle(title)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-latency.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_timeline(out: Path, name: str, series: dict[str, list[float]], title: str, ylabel: str, x_step_s: float = 1.0) -> Path:
    """Values per time bucket (e.g. commands completed per second), one line per series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for label, values in series.items():
        ax.plot([i * x_step_s for i in range(len(values))], values, label=label, marker=".")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-timeline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def per_second(done_at: list[float], start: float, end: float) -> list[float]:
    """How many events fell in each whole second of [start, end)."""
    buckets = [0.0] * max(1, math.ceil(end - start))
    for t in done_at:
        i = int(t - start)
        if 0 <= i < len(buckets):
            buckets[i] += 1
    return buckets


# -- HTTP ------------------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection (http.client sets TCP_NODELAY on connect)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 35.0) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        host, _, port = host_port.partition(":")
        self.conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=data, headers=self.headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # a broken keep-alive connection: the next request reconnects
            raise
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def close(self) -> None:
        self.conn.close()


def api_client(stack: Any) -> Http:
    return Http(stack.config.api_url, {"x-api-key": stack.config.api_key})


# -- the local stack -------------------------------------------------------------------


@contextlib.contextmanager
def local_stack(data_dir: Path, *, devices: int, prewarm: int = 1, **config: Any) -> Iterator[Any]:
    """A LocalStack on free ports; waits for its devices; always stopped.

    Without the shadow service's per-thing rate limit (AWS's 20 requests/s; StackConfig's default):
    the benchmarks measure our code, and some drive one thing back to back on purpose.
    """
    from iotbridge_local.config import StackConfig
    from iotbridge_local.stack import LocalStack

    for attempt in (1, 2):
        stack = LocalStack(StackConfig.free(data_dir / f"stack{attempt}", devices=devices, **config), prewarm=prewarm)
        try:
            stack.start()
            break
        except Exception as exc:  # a loaded machine can miss the stack's start-up timeouts: one more try
            if attempt == 2:
                raise
            print(f"local stack failed to start ({exc}); retrying once", file=sys.stderr)
    try:
        if devices:
            stack.wait_devices_ready(timeout=60)
        yield stack
    finally:
        stack.stop()


def function_env(stack: Any) -> dict[str, str]:
    """The API function's environment for running its code in this process (profiles, call counts)."""
    env: dict[str, str] = stack.config.function_env()
    return env


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- a simulated fleet in its own process ----------------------------------------------


class FleetProcess:
    """benchmarks.fleet_proc as a child: its latest progress line, and its final counts after stop()."""

    def __init__(self, stack: Any, *, prefix: str, count: int, connect_rate: float = 500.0, extra: tuple[str, ...] = ()) -> None:
        import subprocess
        import threading

        from benchmarks.fleet_proc import thing_names

        self.things = thing_names(prefix, count)
        endpoint = stack.broker.service_endpoint()
        argv = [sys.executable, "-m", "benchmarks.fleet_proc", "--host", endpoint.host, "--port", str(endpoint.port),
                "--username", endpoint.username, "--prefix", prefix,
                "--count", str(count), "--state-dir", str(stack.data_dir / f"fleet-{prefix}"),
                "--connect-rate", str(connect_rate), *extra]  # fmt: skip
        self._log = open(stack.logs / f"fleet-{prefix}.log", "ab")  # noqa: SIM115 - closed in stop()
        # The password goes through the environment: a generated one may start with '-', which argparse
        # takes for an option, and the environment keeps it out of the process list.
        env = {**os.environ, "IOTBRIDGE_MQTT_PASSWORD": endpoint.password or ""}
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT, env=env,
                                        start_new_session=True)  # fmt: skip
        self.latest: dict[str, Any] = {"connected": 0, "commands_run": 0}
        self.final: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("final"):
                    self.final = doc
                else:
                    self.latest = doc

    def wait_connected(self, timeout: float) -> float:
        """Seconds until every device is connected; TimeoutError after `timeout`."""
        start = time.monotonic()
        if not wait_until(lambda: self.latest.get("connected", 0) >= len(self.things) or self.process.poll() is not None,
                          timeout, interval=0.2):  # fmt: skip
            raise TimeoutError(f"{self.latest.get('connected')} of {len(self.things)} devices connected after {timeout}s")
        if self.process.poll() is not None:
            raise RuntimeError(f"the fleet process exited with {self.process.returncode}")
        return time.monotonic() - start

    def stop(self) -> dict[str, Any]:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self._log.close()
        return self.final or {"commands_run": self.latest.get("commands_run", 0), "per_device": {}}


def register_things(stack: Any, things: list[str], threads: int = 8) -> None:
    """create_thing for each (the API's bulk `all` lists the registry), from a few threads."""
    from concurrent.futures import ThreadPoolExecutor

    def chunk(part: list[str]) -> None:
        client = stack.boto3_client("iot")
        for thing in part:
            with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
                client.create_thing(thingName=thing)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(chunk, [things[i::threads] for i in range(threads)]))


def wait_ready(stack: Any, things: list[str], timeout: float) -> float:
    """Seconds until every thing has reported its actions (it has read its shadows and is answering)
    and its presence shadow says connected (the presence rule has caught up with the connect events:
    otherwise a benchmark started at once also times the rule working through that backlog)."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic()
    pending = set(things)
    clients = [stack.boto3_client("iot-data") for _ in range(4)]

    def ready(args: tuple[int, str]) -> str | None:
        k, thing = args
        try:
            doc = json.loads(clients[k % 4].get_thing_shadow(thingName=thing)["payload"].read())
            if not doc.get("state", {}).get("reported", {}).get("actions"):
                return None
            presence = clients[k % 4].get_thing_shadow(thingName=thing, shadowName="presence")
            connected = json.loads(presence["payload"].read()).get("state", {}).get("reported", {}).get("connected")
        except Exception:
            return None
        return thing if connected is True else None

    with ThreadPoolExecutor(4) as pool:
        while pending:
            pending -= {t for t in pool.map(ready, enumerate(sorted(pending))) if t}
            if pending and time.monotonic() - start > timeout:
                raise TimeoutError(f"{len(pending)} of {len(things)} devices not ready after {timeout}s")
            if pending:
                time.sleep(0.5)
    return time.monotonic() - start


# -- CPU accounting --------------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_processes(stack: Any, fleet: Any = None) -> dict[str, list[int]]:
    """The pids of each part of a running stack (read-only use of its bookkeeping), and of this process."""
    parts: dict[str, list[int]] = {"benchmark callers (this process)": [os.getpid()]}
    if stack.broker.pid:
        parts["mosquitto"] = [stack.broker.pid]
    for name, (process, _log) in getattr(stack, "_children", {}).items():
        parts.setdefault(name if not name.startswith("device-") else "pi agents", []).append(process.pid)
    api = getattr(stack, "_api", None)
    environments = getattr(getattr(api, "environments", None), "_all", [])
    parts["api environments"] = [e.process.pid for e in list(environments)]
    if fleet is not None:
        parts["fleet simulator"] = [fleet.process.pid]
    return parts


def cpu_seconds(parts: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(_cpu_of(pid) for pid in pids) for name, pids in parts.items()}
