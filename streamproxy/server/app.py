"""Assemble the aiohttp application from a Config, and run it."""

from __future__ import annotations

import logging
import os

from aiohttp import web, web_app

from streamproxy.cache.config import parse_cache_settings
from streamproxy.config import Config, ConfigError, each_problem, raise_collected
from streamproxy.observe.access_log import parse_logging
from streamproxy.openai_api.request import Limits
from streamproxy.providers.base import Provider
from streamproxy.providers.mock import MockProvider
from streamproxy.providers.mock.server import start_mock_server
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.routing.breaker import CircuitBreakers
from streamproxy.routing.executor import Executor
from streamproxy.routing.gateway import (
    AZURE_V1_CHAT_PATH,
    DEPLOYMENT_CHAT_ROUTE,
    Gateway,
    load_settings,
)
from streamproxy.routing.router import Router
from streamproxy.server import handlers
from streamproxy.server.admission import ADMISSION, Admission
from streamproxy.server.auth import (
    AUTH,
    Auth,
    auth_middleware,
    keep_buckets,
    parse_auth,
    share_buckets,
)
from streamproxy.server.errors import (
    continue_after_refusals,
    error_middleware,
    expect_within_limit,
    name_server,
    request_id_middleware,
)
from streamproxy.server.header_limits import backstop_limits, header_limits
from streamproxy.server.observing import install_observers
from streamproxy.server.shared_breakers import SharedCircuitBreakers
from streamproxy.server.shared_memory import inherited
from streamproxy.server.state import STATE, AppState
from streamproxy.server.store_and_cache import install as install_store_and_cache
from streamproxy.storage.config import parse_storage_config
from streamproxy.upstream.client import UpstreamClient
from streamproxy.upstream.egress import EgressProxies, egress_from_setting

log = logging.getLogger("streamproxy")


def http_limits(config: Config) -> dict[str, int]:
    """aiohttp's request-parser limits (AppRunner / TestServer keyword arguments): a backstop
    above the configured limits, which `header_limits` enforces with an OpenAI-shaped 431;
    beyond the backstop aiohttp's parser refuses before any handler runs, and the connection's
    error handler answers the same 431 or 414 (`header_limits.beyond_backstop`)."""
    return backstop_limits(config.server.max_header_bytes, config.server.max_headers)


def build_providers(config: Config, egress: EgressProxies | None = None) -> dict[str, Provider]:
    providers = {
        name: PROVIDER_TYPES[cfg.type](cfg, max_event_bytes=config.server.max_event_bytes)
        for name, cfg in config.providers.items()
    }
    if egress is not None:
        for provider in providers.values():
            provider.use_egress(egress)
    return providers


def _egress(config: Config) -> EgressProxies:
    try:
        return egress_from_setting(config.server.upstream_proxy, os.environ)
    except ValueError as e:  # a malformed HTTPS_PROXY / HTTP_PROXY / ALL_PROXY
        raise ConfigError("environment", getattr(e, "variable", "HTTP(S)_PROXY"),
                          str(e)) from None


def check_sections(config: Config) -> None:
    """Raise the ConfigError that building the app would, without building it: for the master,
    before it forks (else each worker reports the mistake, and the metrics would be made
    before the master gives them their multi-process directory). Keep in step with
    create_app and install_store_and_cache. Each section is checked apart: every problem is
    collected (`ConfigErrors`), for check-config to list."""
    errors: list[ConfigError] = []
    for check in (lambda c: build_providers(c, _egress(c)), load_settings, parse_auth,
                  parse_logging, parse_storage_config, parse_cache_settings):
        try:
            check(config)
        except ConfigError as e:
            errors.extend(each_problem(e))
    raise_collected(errors)


def create_app(config: Config, breakers: CircuitBreakers | None = None,
               admission: Admission | None = None,
               running_auth: Auth | None = None) -> web.Application:
    """The app serving `config`; `breakers`, `admission` and `running_auth`: the running
    app's, when a process reloads in place (what is known to be down stays so, as with
    workers, whose table outlives a reload; the old app's requests still count against the
    process's limit, and its keys' spent tokens stay spent)."""
    server = config.server
    egress = _egress(config)
    providers = build_providers(config, egress)
    client = UpstreamClient(kind=server.upstream_client, egress=egress)
    router = Router(providers, config.default_provider, server.timeouts)
    shared = inherited()  # with workers: what they share (breakers, rate-limit buckets)
    if breakers is None:
        breakers = (SharedCircuitBreakers(shared.breakers) if shared.breakers is not None
                    else CircuitBreakers())
    state = AppState(
        config=config,
        providers=providers,
        client=client,
        router=router,
        executor=Executor(client, breakers),
        gateway=Gateway(router, load_settings(config), breakers),
        breakers=breakers,
        limits=Limits(server.max_messages, server.max_tools, server.max_json_depth),
    )
    auth = parse_auth(config)
    if auth is not None:
        keep_buckets(auth, running_auth)
        share_buckets(auth, shared.buckets)  # with workers: one rate per key for all of them
    app = web.Application(client_max_size=server.max_body_bytes,
                          middlewares=[request_id_middleware, error_middleware,
                                       header_limits(server.max_header_bytes,
                                                     server.max_headers),
                                       *([auth_middleware(auth)] if auth else []),
                                       continue_after_refusals])
    app[STATE] = state
    app.on_response_prepare.append(name_server)
    app[ADMISSION] = Admission(server.max_concurrent_streams, admission)
    if auth is not None:
        app[AUTH] = auth
    install_observers(app, state)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions,
                        expect_handler=expect_within_limit)
    # (aiohttp's on either front: the lean one hands over any other path, so neither costs
    # /v1/chat/completions anything)
    app.router.add_post(AZURE_V1_CHAT_PATH, handlers.chat_completions,
                        expect_handler=expect_within_limit)
    app.router.add_post(DEPLOYMENT_CHAT_ROUTE, handlers.deployment_chat_completions,
                        expect_handler=expect_within_limit)
    install_store_and_cache(app, state)  # stored completions' routes, the cache
    app.router.add_get("/v1/models", handlers.list_models, expect_handler=expect_within_limit)
    app.router.add_get("/v1/models/{model:.+}", handlers.retrieve_model,
                       expect_handler=expect_within_limit)
    app.router.add_get("/healthz", handlers.healthz, expect_handler=expect_within_limit)
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
    _forget_middleware_chains()


def _forget_middleware_chains() -> None:
    """aiohttp caches each route's middleware chain process-wide, keyed by the app (up to
    1,024): an app reloaded away in place would stay in memory with all it holds. Emptied
    when an app stops; the running one's chains are built again on first use."""
    cached = getattr(web_app, "_cached_build_middleware", None)  # (aiohttp's private name)
    if cached is not None:
        cached.cache_clear()
