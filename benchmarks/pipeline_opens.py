"""How often one `fusionrt pipeline` run opens and hash-verifies its bundle and creates a PyTorch reference Session.

    .venv/bin/python benchmarks/pipeline_opens.py OUT_DIR [pipeline options...]

Counts ``Bundle.open`` calls, full verifications (``Bundle.verify``: every file's size and sha256) and
``Session(..., backend="torch")`` creations during one run of the shipped model's pipeline at OUT_DIR (a new
directory runs every stage), and prints them with the run's wall time and the load average around it.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    from fusionrt.bundle.manifest import Bundle
    from fusionrt.cli import main as fusionrt_main
    from fusionrt.runtime import session as session_module

    counts = {"open": 0, "verify": 0, "torch_sessions": 0}
    real_open, real_verify, real_init = Bundle.open.__func__, Bundle.verify, session_module.Session.__init__

    def counted_open(cls, path, verify=True):
        counts["open"] += 1
        return real_open(cls, path, verify)

    def counted_verify(self):
        counts["verify"] += 1
        return real_verify(self)

    def counted_init(self, bundle, backend="onnxruntime", graph="fusion", *args, **kwargs):
        counts["torch_sessions"] += backend == "torch"
        return real_init(self, bundle, backend, graph, *args, **kwargs)

    Bundle.open = classmethod(counted_open)
    Bundle.verify = counted_verify
    session_module.Session.__init__ = counted_init
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    code = fusionrt_main(["pipeline", "--out", sys.argv[1], "-q", *sys.argv[2:]])
    print(json.dumps({"exit": code, "seconds": round(time.perf_counter() - started, 1),
                      "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2), **counts}))


if __name__ == "__main__":
    main()
