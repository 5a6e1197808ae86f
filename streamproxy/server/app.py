"""Assemble the aiohttp application from a Config, and run it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from streamproxy.config import Config
from streamproxy.openai_api.request import Limits
from streamproxy.providers.base import Provider
from streamproxy.providers.mock import MockProvider
from streamproxy.providers.mock.server import start_mock_server
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.record import Observer
from streamproxy.routing.executor import Executor
from streamproxy.routing.router import Router
from streamproxy.server import handlers
from streamproxy.server.errors import error_middleware
from streamproxy.upstream.client import UpstreamClient

log = logging.getLogger("streamproxy")


@dataclass(slots=True)
class AppState:
    config: Config
    providers: dict[str, Provider]
    client: UpstreamClient
    router: Router
    executor: Executor
    limits: Limits
    observers: list[Observer] = field(default_factory=list)
    mock_runner: web.AppRunner | None = None


STATE = web.AppKey("streamproxy_state", AppState)


def build_providers(config: Config) -> dict[str, Provider]:
    return {
        name: PROVIDER_TYPES[cfg.type](cfg, max_event_bytes=config.server.max_event_bytes)
        for name, cfg in config.providers.items()
    }


def create_app(config: Config) -> web.Application:
    server = config.server
    providers = build_providers(config)
    client = UpstreamClient()
    state = AppState(
        config=config,
        providers=providers,
        client=client,
        router=Router(providers, config.default_provider, server.timeouts),
        executor=Executor(client),
        limits=Limits(server.max_messages, server.max_tools, server.max_json_depth),
    )
    app = web.Application(client_max_size=server.max_body_bytes,
                          middlewares=[error_middleware])
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/healthz", handlers.healthz)
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    return app


async def _startup(app: web.Application) -> None:
    state = app[STATE]
    await state.client.start()
    local = [p for p in state.providers.values() if isinstance(p, MockProvider) and p.in_process]
    if local:
        state.mock_runner, url = await start_mock_server()
        for provider in local:
            provider.attach_local(url)


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    await state.client.close()
    if state.mock_runner is not None:
        await state.mock_runner.cleanup()


async def serve(config: Config, host: str, port: int) -> None:
    """Run until cancelled (Ctrl-C / SIGTERM)."""
    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    log.info("streamproxy listening on http://%s:%d (config: %s)", host, port, config.source)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
