"""Command line: `streamproxy serve | mock | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from streamproxy.config import DEFAULT_HOST, DEFAULT_PORT, ConfigError, load_config


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on supported platforms
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _load(path: str | None):
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"streamproxy: config error: {e}", file=sys.stderr)
        sys.exit(2)


def cmd_serve(args: argparse.Namespace) -> None:
    from streamproxy.server.app import serve

    config = _load(args.config)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host = args.host or config.server.host
    port = args.port or config.server.port
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port))


def cmd_mock(args: argparse.Namespace) -> None:
    from streamproxy.providers.mock.server import start_mock_server

    async def run() -> None:
        runner, url = await start_mock_server(args.host, args.port)
        print(f"mock upstream on {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def cmd_check_config(args: argparse.Namespace) -> None:
    config = _load(args.file)
    print(f"{config.source}: OK")
    print(f"listen: {config.server.host}:{config.server.port}")
    for name, p in config.providers.items():
        default = " (default)" if name == config.default_provider else ""
        key = "configured key" if p.api_key else "client's key"
        print(f"provider {name}{default}: type={p.type} base_url={p.base_url or 'in-process'} "
              f"auth={key} models={', '.join(p.models) or p.default_model or '-'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="streamproxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config file (default: the embedded default)")
    serve.add_argument("--host", default=None, help=f"listen address (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT})")
    serve.set_defaults(func=cmd_serve)
    mock = sub.add_parser("mock", help="run the mock upstream alone (benchmarks)")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9100)
    mock.set_defaults(func=cmd_mock)
    check = sub.add_parser("check-config", help="validate a config and print what it serves")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    args = parser.parse_args(argv)
    args.func(args)
