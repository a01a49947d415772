"""``fusionrt serve REPO``: run a real Triton server on a repository until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys

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
    parser.set_defaults(handler=run)


class _Stop(Exception):
    """Raised by the SIGTERM / SIGINT handler to leave the wait and shut the server down."""


def run(args: argparse.Namespace) -> int:
    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    server = TritonServer(args.repository, http_port=args.http_port, grpc_port=args.grpc_port, python=args.python,
                          log=sys.stderr if args.server_log else None)
    try:
        server.start(args.timeout)
        print(server.ready_line(), flush=True)
        code = server.process.wait()
        print(f"fusionrt serve: tritonserver exited with status {code}:\n{server.failure()}", file=sys.stderr)
        return 1
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
