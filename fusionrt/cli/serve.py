"""``fusionrt serve REPO``: run a real Triton server on a repository until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time

from fusionrt.cli import arguments
from fusionrt.serve import TritonServer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve a model repository with tritonserver (nvidia-pytriton)")
    parser.add_argument("repository", help="model repository written by `fusionrt triton`")
    parser.add_argument("--http-port", type=arguments.PORT, default=None,
                        help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--grpc-port", type=arguments.PORT, default=None,
                        help="gRPC port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--python", default=None,
                        help="serving interpreter with nvidia-pytriton and fusionrt (default: this one)")
    parser.add_argument("--server-log", action="store_true", help="copy the server's log to stderr")
    parser.add_argument("--timeout", type=arguments.real(0, above=True), default=180.0,
                        help="seconds to wait for the models to load")
    parser.add_argument("--max-restarts", type=arguments.NON_NEGATIVE, default=5,
                        help="restart a server that dies at most N times per --restart-window (default 5; 0: never)")
    parser.add_argument("--restart-window", type=arguments.real(0, above=True), default=300.0, metavar="S",
                        help="seconds over which --max-restarts counts (default 300)")
    parser.set_defaults(handler=run)


class _Stop(Exception):
    """Raised by the SIGTERM / SIGINT handler to leave the wait and shut the server down."""


def supervise(server, args: argparse.Namespace) -> int:
    """Wait on the server; when it dies, say why (signal, its last log lines) and start it again on the
    same ports, at most ``--max-restarts`` times per ``--restart-window`` seconds. Returns 1 when it gives up.

    One request can abort tritonserver 2.51 (a declared shape of 1e11 elements: std::bad_alloc in its HTTP
    frontend, fixed upstream after that version); this keeps the other clients served."""
    restarts: collections.deque[float] = collections.deque()
    while True:
        server.process.wait()
        print(f"fusionrt serve: {server.exit_cause()}", file=sys.stderr, flush=True)
        now = time.monotonic()
        while restarts and now - restarts[0] > args.restart_window:
            restarts.popleft()
        if len(restarts) >= args.max_restarts:
            print(f"fusionrt serve: not restarting: {len(restarts)} restart(s) in the last {args.restart_window:g} s "
                  f"(--max-restarts {args.max_restarts})", file=sys.stderr, flush=True)
            return 1
        restarts.append(now)
        server.restart(args.timeout)
        print(f"fusionrt serve: restarted in {time.monotonic() - now:.1f} s", file=sys.stderr, flush=True)
        print(server.ready_line(), flush=True)


def run(args: argparse.Namespace) -> int:
    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    server = TritonServer(args.repository, http_port=args.http_port, grpc_port=args.grpc_port, python=args.python,
                          log=sys.stderr if args.server_log else None)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start(args.timeout)
        print(server.ready_line(), flush=True)
        return supervise(server, args)
    except _Stop as why:
        print(f"fusionrt serve: {why}: stopping the server", file=sys.stderr, flush=True)
        return 0
    finally:
        # Signals during the shutdown itself must not interrupt it halfway.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
