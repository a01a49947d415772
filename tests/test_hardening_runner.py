"""Runner lifecycle: close() waits for calls in flight, a closed Session refuses to run (never reloads)."""

import threading
import time

import pytest
from hardening_support import feed, shared_bundle

from fusionrt.errors import BackendError, SessionClosedError
from fusionrt.runtime import BACKENDS, Session


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


@pytest.fixture
def gated(bundle, monkeypatch):
    monkeypatch.setitem(BACKENDS, "gated", "hardening_support:GatedRunner")
    return Session(bundle, "gated")


def test_close_waits_for_a_call_in_flight(gated):
    results, errors = [], []

    def call():
        try:
            results.append(gated.run(feed()))
        except Exception as exc:  # the assertion inside infer_impl lands here if close() did not wait
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert gated.runner.entered.wait(5)
    closer = threading.Thread(target=gated.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive(), "close() returned while a call was still running"
    gated.runner.gate.set()
    caller.join(5)
    closer.join(5)
    assert not errors and len(results) == 1
    assert gated.runner.engine is None and not gated.runner.is_active


def test_run_after_close_raises_and_never_reloads(gated):
    gated.runner.gate.set()
    gated.run(feed())
    gated.close()
    with pytest.raises(SessionClosedError, match="closed") as info:
        gated.run(feed())
    assert isinstance(info.value, BackendError)
    assert gated.runner.activations == 1 and gated.runner.engine is None
    gated.close()  # idempotent


def test_a_call_starting_during_close_is_refused_not_crashed(gated):
    caller = threading.Thread(target=gated.run, args=(feed(),))
    caller.start()
    assert gated.runner.entered.wait(5)
    closer = threading.Thread(target=gated.close)
    closer.start()
    time.sleep(0.1)  # close() has begun: it waits for the first call
    with pytest.raises(SessionClosedError):
        gated.run(feed())
    gated.runner.gate.set()
    caller.join(5)
    closer.join(5)


def test_onnxruntime_threads_racing_close_get_results_or_the_typed_error(bundle):
    session = Session(bundle)
    expected = session.run(feed())["logits"]
    unexpected, done = [], []
    start = threading.Barrier(5)

    def worker():
        start.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until close() stops it: every worker must see the typed error
            try:
                out = session.run(feed())["logits"]
            except SessionClosedError:
                done.append(1)
                return
            except Exception as exc:
                unexpected.append(repr(exc))
                return
            if not (out == expected).all():
                unexpected.append("different result")
                return
        done.append(0)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(0.05)
    session.close()
    for t in threads:
        t.join(30)
    assert unexpected == []
    assert done == [1, 1, 1, 1]
