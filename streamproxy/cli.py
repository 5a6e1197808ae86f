"""Command line: `streamproxy serve | mock | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Iterator

from streamproxy.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOG_LEVELS,
    MAX_PORT,
    Config,
    ConfigError,
    ProviderConfig,
    each_problem,
    listen_host,
    load_config,
    shown_address,
    shown_env,
    unset_or_empty,
)
from streamproxy.server.cpus import default_workers


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


def _check_environment() -> None:
    """The environment's overrides of config choices, refused as a config error would be."""
    from streamproxy.server.front import FRONT_ENV, FRONTS
    from streamproxy.upstream.client import CLIENT_ENV, CLIENT_KINDS

    for name, allowed in ((FRONT_ENV, FRONTS), (CLIENT_ENV, CLIENT_KINDS)):
        value = os.environ.get(name)
        if value and value not in allowed:
            print(f"streamproxy: config error: environment: {name}={value!r}: must be one of "
                  f"{', '.join(allowed)}", file=sys.stderr)
            sys.exit(2)


def _whole(text: str, what: str, allowed: str) -> int:
    # (a ValueError would read "invalid _port value": argparse names the converter)
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}: {allowed}") from None


def _positive(text: str) -> int:
    value = _whole(text, "a whole number", "must be 1 or more")
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:  # (any case, as server.log_level)
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _host(text: str) -> str:
    """A listen address, as server.host takes it (config.listen_host)."""
    try:
        return listen_host(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    allowed = f"must be 0 to {MAX_PORT} (0: any free port)"
    value = _whole(text, "a port number", allowed)
    if not 0 <= value <= MAX_PORT:  # beyond it the socket layer wraps: 70000 listens on 4464
        raise argparse.ArgumentTypeError(allowed)
    return value


def cmd_serve(args: argparse.Namespace) -> None:
    import signal

    # A SIGHUP before the reload handler is set (a `systemctl reload` just after the start)
    # would kill the server, a death systemd counts as clean: held pending until the master
    # or the single process sets its handler and lets it through.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        _serve(args)
    finally:  # (called in-process, as by tests, the caller's mask is left as it was)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _serve(args: argparse.Namespace) -> None:
    from streamproxy.observe.access_log import LEVEL_ENV, configure_logging
    from streamproxy.server.workers import run

    config = _load(args.config)
    _check_environment()
    # ("" is every interface, as `server.host: ""` is: set, it wins over the config's host)
    host = config.server.host if args.host is None else args.host
    port = config.server.port if args.port is None else args.port  # (0: any free port)
    workers = config.server.workers if args.workers is None else args.workers
    # Set here, a reload's change in the file would not move them, nor would a restart.
    pinned = frozenset(k for k in ("host", "port", "workers") if getattr(args, k) is not None)
    if args.log_level is not None:  # (the variable wins over server.log_level: this over both,
        os.environ[LEVEL_ENV] = args.log_level  # and a master's workers inherit it)
    _install_uvloop()
    try:
        configure_logging(config)
        if args.config is not None:  # (the embedded default's are meant to be optional)
            _warn_unset_key_envs(config)
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(run(args.config, config, host, port, workers, pinned))
    except ConfigError as e:  # sections validated when the app is built (auth, logging, ...)
        print(f"streamproxy: config error: {e}", file=sys.stderr)
        sys.exit(2)


def _warn_unset_key_envs(config: Config) -> None:
    """A provider's api_key_env names a variable that is not set: serving on is documented
    (the client's key is forwarded), but a missing export must not go unnoticed until clients
    get the provider's 401. check-config says the same."""
    import logging

    for p in config.providers.values():
        if p.api_key_env and not p.api_key:
            logging.getLogger("streamproxy").warning(
                "provider %s: environment variable %s (its api_key_env) %s", p.name,
                shown_env(p.api_key_env), unset_or_empty(p.api_key_env))


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


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Stdout's reader may stop reading (`check-config FILE | head -1`): a BrokenPipeError's
    traceback then, and another as the interpreter flushed stdout at exit. The exit status
    stays the verdict on the config."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_check_config(args: argparse.Namespace) -> None:
    """Validate as `serve` would — the app is built, so every section's owner checks it — and
    print what would be served. Errors: `file: key: reason` on stderr, one line each (every
    independent problem, as a linter lists them), exit status 2."""
    from streamproxy.errors import ProxyError
    from streamproxy.observe.access_log import log_level, parse_logging
    from streamproxy.server.app import STATE, check_sections, create_app
    from streamproxy.server.auth import describe, parse_auth

    _check_environment()
    try:
        config = load_config(args.file)
        check_sections(config)
        providers = create_app(config)[STATE].providers
        auth, logs, level = parse_auth(config), parse_logging(config), log_level(config)
    except ConfigError as e:
        for problem in each_problem(e):
            print(problem, file=sys.stderr)
        sys.exit(2)
    with _reader_may_leave():
        s = config.server
        print(f"{config.source}: OK")
        print(f"listen: {shown_address(s.host, s.port)}")
        # (as serve counts them without --workers: each worker has its own limits below)
        print(f"workers: {s.workers or f'{default_workers()} (one per usable CPU)'}")
        for name, p in config.providers.items():
            default = " (default)" if name == config.default_provider else ""
            key = providers[name].auth_summary() or _key_summary(p)
            try:  # Bedrock, Vertex, Azure build it from other keys
                base_url = providers[name].base_url
            except ProxyError:  # no URL until it runs: the embedded mock
                base_url = "in-process"
            print(f"provider {name}{default}: type={p.type} base_url={_shown_url(base_url)} "
                  f"auth={key} models={', '.join(p.models) or p.default_model or '-'}")
        print(f"default provider: {config.default_provider or 'none (requests must name one)'}")
        for section, value in sorted(config.sections.items()):
            if section not in ("auth", "logging"):
                print(f"{section}: {_summary(value)}")
        print(describe(auth))
        print(f"logging: level={level} access_log={'on' if logs.access_log else 'off'} "
              f"request_bodies={'on' if logs.log_bodies else 'off'}")
        print(f"limits: body={s.max_body_bytes}B header_field={s.max_header_bytes}B "
              f"headers={s.max_headers} messages={s.max_messages} tools={s.max_tools} "
              f"json_depth={s.max_json_depth} upstream_event={s.max_event_bytes}B "
              f"concurrent_streams={s.max_concurrent_streams}/worker "
              f"header_timeout={s.client_header_timeout:g}s "
              f"body_timeout={s.client_body_timeout:g}s "
              f"send_timeout={f'{s.send_timeout:g}s' if s.send_timeout else 'off'}")
        print(f"shutdown: drain_delay={s.drain_delay:g}s grace={s.shutdown_grace:g}s")
        print(f"egress proxy: {_egress_summary(s.upstream_proxy)}")


def _egress_summary(setting: str | dict[str, object]) -> str:
    """The proxies upstream requests would leave through, as serve reads them here (the
    environment's too): their URLs without user info (ProxyRoute.url), never credentials."""
    from streamproxy.upstream.egress import egress_from_setting

    egress = egress_from_setting(setting, os.environ)  # (a malformed variable: already refused)
    https, http = (p.url if p else "direct" for p in (egress.https, egress.http))
    bypass = f" no_proxy={','.join(egress.no_proxy)}" if egress.no_proxy else ""
    if setting == "none":
        return "none"
    if isinstance(setting, dict):  # (one proxy for both schemes)
        return f"{https}{bypass}"
    if egress.https is None and egress.http is None:
        return "none (from the environment: no HTTPS_PROXY, HTTP_PROXY or ALL_PROXY)"
    return f"https={https} http={http}{bypass} (from the environment)"


# The user:password@ of a URL, or of a bare host[:port] (an allowed_custom_hosts entry):
# check-config's output goes to terminals and CI logs.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")  # (to the host part's last @)


def _shown_url(url: str) -> str:
    """`url` with its credentials, if it holds any, masked (as the metrics' labels drop them)."""
    return _USERINFO.sub(lambda m: f"{m[1] or ''}***@", url, count=1)


def _key_summary(p: ProviderConfig) -> str:
    if p.api_key:
        return "configured key"
    if p.api_key_env:  # the operator meant a key: say which variable was empty
        return (f"client's key (environment variable {shown_env(p.api_key_env)} "
                f"{unset_or_empty(p.api_key_env)})")
    return "client's key"


def _summary(value: object) -> str:
    """A section owned by another module, generically: names, never a mapping's values (a
    cache URL or a virtual key may hold a secret), nor a listed URL's user info."""
    if isinstance(value, dict):
        return ", ".join(map(str, value)) or "(empty)"
    if isinstance(value, list):
        names = [_shown_url(v) if isinstance(v, str)
                 else str(v.get("name") or v.get("id") or "?") if isinstance(v, dict) else "?"
                 for v in value]
        return ", ".join(names) or "(empty)"
    return str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="streamproxy")
    sub = parser.add_subparsers(dest="command", required=True)
    # (description too: `help` alone is said in `streamproxy --help`, not the command's own)
    serve = sub.add_parser("serve", help="run the proxy", description=(
        "Run the proxy: serve the config's providers on server.host:server.port; SIGHUP "
        "reloads the config, SIGTERM drains."))
    serve.add_argument("--config", help="YAML or JSON config file (default: the embedded default)")
    # Unset, they are the config's server.host / server.port, whose defaults these are.
    serve.add_argument("--host", type=_host, default=None,
                       help=f"listen address, \"\" for every interface (default: server.host, "
                            f"else {DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=None,
                       help=f"port, 0 for any free one (then one process; default: server.port, "
                            f"else {DEFAULT_PORT})")
    serve.add_argument("--workers", type=_positive, default=None,
                       help="worker processes (default: server.workers, else one per CPU, "
                            "or per CPU of the container's limit if lower; one with port 0; "
                            "1 = a single process, no master)")
    serve.add_argument("--log-level", type=_log_level, default=None,
                       help=f"diagnostics' level: {', '.join(LOG_LEVELS)} (default: "
                            "STREAMPROXY_LOG_LEVEL, else server.log_level, else info)")
    serve.set_defaults(func=cmd_serve)
    mock = sub.add_parser("mock", help="run the mock upstream alone (benchmarks)",
                          description="Run the mock upstream alone (benchmarks): it speaks "
                                      "Anthropic's and OpenAI's wire formats, no key needed.")
    mock.add_argument("--host", type=_host, default="127.0.0.1",
                      help="listen address (default: 127.0.0.1)")
    mock.add_argument("--port", type=_port, default=9100,
                      help="port, 0 for any free one (default: 9100)")
    mock.set_defaults(func=cmd_mock)
    check = sub.add_parser("check-config", help="validate a config and print what it serves",
                           description="Validate a config as serve would and print what it "
                                       "serves; each problem on stderr as FILE: KEY: reason, "
                                       "exit status 2.")
    check.add_argument("file", help="the YAML or JSON config file (*.json: strict JSON)")
    check.set_defaults(func=cmd_check_config)
    args = parser.parse_args(argv)
    args.func(args)
