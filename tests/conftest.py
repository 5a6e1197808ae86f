from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streamproxy.config import Config
from streamproxy.server.app import create_app, http_limits
from streamproxy.server.front import make_runner
from streamproxy.server.state import STATE
from tests.helpers import FakeUpstream, make_config


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`STREAMPROXY_RERUN=1` (the Makefile's second and third runs, on aiohttp's upstream
    client and on its front): only the coroutine tests, which serve requests through them. The
    synchronous ones are pure (translators, decoders, their property tests): they ran in the
    first run already, and the other client or front cannot change what they check."""
    if not os.environ.get("STREAMPROXY_RERUN"):
        return
    served, pure = [], []
    for item in items:
        coroutine = inspect.iscoroutinefunction(getattr(item, "function", None))
        (served if coroutine else pure).append(item)
    if pure:
        config.hook.pytest_deselected(items=pure)
        items[:] = served


class ProxyTestServer(TestServer):
    """aiohttp's TestServer with the runner production uses: the lean front for chat
    requests unless the config or STREAMPROXY_FRONT says aiohttp, and the parser limits
    `serve()` gives it (`http_limits`; aiohttp's defaults would refuse a long target as a
    431, where production answers 414)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return make_runner(self.app, **{**http_limits(self.app[STATE].config), **kwargs})


@pytest.fixture
async def proxy(aiohttp_client: Any) -> Callable[[Config], Awaitable[TestClient]]:
    """Start the proxy for a config; the server cancels handlers on disconnect as in prod."""

    async def start(config: Config) -> TestClient:
        server = ProxyTestServer(create_app(config), handler_cancellation=True)
        return await aiohttp_client(server)

    return start


@pytest.fixture
async def upstream(aiohttp_server: Any) -> FakeUpstream:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """The access log's lines so far, parsed: `attempts` says how many upstream requests a
    request sent, retries and fallbacks together."""
    caplog.set_level(logging.INFO, logger="streamproxy.access")
    return lambda: [orjson.loads(r.getMessage()) for r in caplog.records
                    if r.name == "streamproxy.access"]


@pytest.fixture
def default_proxy(proxy: Any) -> Callable[[], Awaitable[TestClient]]:
    """The embedded default config (in-process mock)."""
    from streamproxy.config import load_config

    async def start() -> TestClient:
        return await proxy(load_config(None))

    return start


def provider_config(kind: str, url: str, **extra: Any) -> Config:
    return make_config({"up": {"type": kind, "base_url": url, "api_key": "sk-test-secret",
                               "default_model": "m", **extra}}, default="up")


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Any, monkeypatch: Any) -> None:
    """Tests run in a temporary directory, so defaults that write files (the stored
    completions' SQLite database) never touch the checkout."""
    monkeypatch.chdir(tmp_path)
