"""`fusionrt serve` supervises tritonserver: a server that dies under live traffic (SIGKILL, or the one
request that aborts tritonserver 2.51) is reported with its real cause and restarted on the same ports,
clients resume, nothing hangs; what a kill -9'd launcher left in /tmp and /dev/shm is removed on start.

Traffic goes to 127.0.0.1 only, in bounded loops with client timeouts.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from triton_support import ROOT, serving_python, shipped_bundle

from fusionrt.serve import RepositoryOptions, write_repository
from fusionrt.serve.server import WORKDIR_PREFIX, clean_stale

pytestmark = pytest.mark.slow


class Launcher:
    """``fusionrt serve REPO`` with its stdout lines (ready lines) and stderr collected by threads."""

    def __init__(self, repo: Path, python: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([str(python), "-m", "fusionrt", "serve", str(repo), *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.ready: list[dict] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read_ready, daemon=True).start()
        threading.Thread(target=lambda: self.errors.extend(self.process.stderr), daemon=True).start()

    def _read_ready(self) -> None:
        for line in self.process.stdout:
            if line.startswith("ready:"):
                words = line.split()
                self.ready.append({"http": words[2], "pid": int(words[6]), "prefix": words[8]})

    def wait_ready(self, count: int, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.ready) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no ready line #{count}: {''.join(self.errors)[-3000:]}")
            time.sleep(0.1)
        return self.ready[count - 1]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_repository(shipped_bundle(tmp_path_factory), tmp_path_factory.mktemp("supervised") / "repo",
                            RepositoryOptions(max_batch=8, queue_delay_us=0))


def fusion_request(url: str) -> bool:
    """One fusion request with a 10 s client timeout: whether it succeeded."""
    client = httpclient.InferenceServerClient(url, connection_timeout=10, network_timeout=10)
    feed = {"input_ids": np.array([[2, 5, 3]], np.int64), "text_mask": np.ones((1, 3), bool),
            "visual_feats": np.zeros((1, 2, 69), np.float32), "visual_mask": np.ones((1, 2), bool)}
    inputs = []
    for name, value in feed.items():
        tensor = httpclient.InferInput(name, list(value.shape), {"int64": "INT64", "bool": "BOOL",
                                                                  "float32": "FP32"}[value.dtype.name])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    try:
        client.infer("fusion", inputs)
        return True
    except Exception:
        return False
    finally:
        client.close()


def traffic(url: str, stop: threading.Event, log: list[tuple[float, bool]], limit: int = 2000) -> None:
    for _ in range(limit):  # bounded, whatever happens
        if stop.is_set():
            return
        log.append((time.monotonic(), fusion_request(url)))
        time.sleep(0.02)


@pytest.mark.parametrize("kill", ["sigkill", "bad_alloc_request"])
def test_a_dead_server_is_reported_and_restarted_under_live_traffic(repo, kill):
    launcher = Launcher(repo, serving_python())
    try:
        first = launcher.wait_ready(1)
        stop, logs = threading.Event(), [[], []]
        clients = [threading.Thread(target=traffic, args=(first["http"], stop, log)) for log in logs]
        for client in clients:
            client.start()
        time.sleep(2)
        killed_at = time.monotonic()
        if kill == "sigkill":
            os.kill(first["pid"], signal.SIGKILL)
        else:
            # Triton 2.51's HTTP frontend allocates the declared shape before checking it: std::bad_alloc.
            body = b'{"inputs":[{"name":"input_ids","shape":[1,99999999999],"datatype":"INT64","data":[1]}]}'
            subprocess.run(["curl", "-s", "-m", "20", "-X", "POST", f"http://{first['http']}/v2/models/fusion/infer",
                            "-d", body.decode()], capture_output=True, timeout=60)
        second = launcher.wait_ready(2, timeout=120)
        assert second["http"] == first["http"] and second["pid"] != first["pid"]
        time.sleep(3)
        stop.set()
        for client in clients:
            client.join(60)
            assert not client.is_alive(), "a client hung"
        resumed = [ok for log in logs for t, ok in log if t > killed_at and ok]
        assert resumed, "no request succeeded after the restart"
        assert all(any(ok for t, ok in log if t < killed_at) for log in logs), "traffic ran before the kill"
        report = "".join(launcher.errors)
        signal_name = "SIGKILL" if kill == "sigkill" else "SIGABRT"
        assert f"(pid {first['pid']}) was killed by {signal_name}" in report
        if kill == "bad_alloc_request":
            assert "std::bad_alloc" in report
        assert "fusionrt serve: restarted in" in report
    finally:
        assert launcher.stop() == 0


def test_restarts_are_bounded(repo):
    launcher = Launcher(repo, serving_python(), "--max-restarts", "1", "--restart-window", "600")
    try:
        os.kill(launcher.wait_ready(1)["pid"], signal.SIGKILL)
        os.kill(launcher.wait_ready(2, timeout=120)["pid"], signal.SIGKILL)
        assert launcher.process.wait(60) == 1
        assert "not restarting: 1 restart(s) in the last 600 s" in "".join(launcher.errors)
    finally:
        launcher.stop()


def test_a_killed_launchers_scratch_directory_is_removed_by_the_next_start(repo):
    launcher = Launcher(repo, serving_python())
    launcher.wait_ready(1)
    launcher.process.kill()  # kill -9: no exit handler runs
    launcher.process.wait(10)
    import tempfile

    left = list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{launcher.process.pid}-*"))
    assert left, "kill -9 leaves the scratch directory behind"
    second = Launcher(repo, serving_python())
    try:
        second.wait_ready(1)
        assert not any(path.exists() for path in left)
    finally:
        assert second.stop() == 0


def test_clean_stale_removes_only_what_dead_launchers_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, gone, other = (tmp_path / f"{WORKDIR_PREFIX}{os.getpid()}-a", tmp_path / f"{WORKDIR_PREFIX}{dead.pid}-b",
                         tmp_path / f"{WORKDIR_PREFIX}unrelated")
    for path in (mine, gone, other):
        path.mkdir()
    assert gone in clean_stale(tmp_path)
    assert mine.exists() and other.exists() and not gone.exists()
