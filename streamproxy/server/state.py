"""What a worker's application holds (`app[STATE]`): config, providers, the upstream client,
routing, the executor, observers. Its own module so that handlers and the fronts read it
without importing the module that assembles the app."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from streamproxy.config import Config
from streamproxy.openai_api.request import Limits
from streamproxy.providers.base import Provider
from streamproxy.record import Observer
from streamproxy.routing.breaker import CircuitBreakers
from streamproxy.routing.executor import Executor
from streamproxy.routing.gateway import Gateway
from streamproxy.routing.router import Router
from streamproxy.server.drain import Drain
from streamproxy.upstream.client import UpstreamClient


@dataclass(slots=True)
class AppState:
    config: Config
    providers: dict[str, Provider]
    client: UpstreamClient
    router: Router
    executor: Executor
    limits: Limits
    gateway: Gateway
    breakers: CircuitBreakers
    observers: list[Observer] = field(default_factory=list)
    mock_runner: web.AppRunner | None = None
    drain: Drain = field(default_factory=Drain)  # graceful shutdown (server/workers.py)


STATE = web.AppKey("streamproxy_state", AppState)
