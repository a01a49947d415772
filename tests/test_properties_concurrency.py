"""8 threads x 1,000 calls on one Session with close() racing at the end, and a short soak (RSS growth)."""

import threading

import numpy as np
import pytest
from hardening_support import feed, shared_bundle

from fusionrt.bench.soak import soak
from fusionrt.runtime import Session, SessionClosedError

THREADS, CALLS = 8, 1000


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


def test_threads_match_single_threaded_results_and_close_races_cleanly(bundle):
    session = Session(bundle, threads=1)
    feeds = [feed(batch=1 + k % 3, text=3 + k % 5, visual=1 + k % 4, seed=k) for k in range(THREADS)]
    expected = [session.run(f) for f in feeds]  # single-threaded reference
    done = [0] * THREADS
    unexpected: list[str] = []
    closed: list[int] = []
    near_end = threading.Event()

    def worker(k: int) -> None:
        for i in range(CALLS):
            try:
                out = session.run(feeds[k])
            except SessionClosedError:
                closed.append(k)
                return
            except Exception as exc:  # anything else is a failure
                unexpected.append(f"thread {k} call {i}: {exc!r}")
                return
            if not all(np.array_equal(out[n], expected[k][n]) for n in out):
                unexpected.append(f"thread {k} call {i}: a different result")
                return
            done[k] = i + 1
            if sum(done) >= THREADS * CALLS * 0.9:
                near_end.set()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    near_end.wait(600)
    session.close()  # races the last calls
    for t in threads:
        t.join(120)
    assert unexpected == []
    assert sum(done) >= THREADS * CALLS * 0.9
    assert all(done[k] == CALLS or k in closed for k in range(THREADS))  # who stopped early saw the typed error
    with pytest.raises(SessionClosedError):
        session.run(feeds[0])


def test_short_soak_resident_memory_stays_flat(bundle):
    result = soak(bundle, calls=3000, warmup=500)
    assert result["calls"] == 3000 and result["rss_after_warmup"] > 0
    assert result["rss_growth"] < 0.05, result
