"""The server boundary where errors become OpenAI-shaped JSON responses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from streamproxy.errors import NotFound, PayloadTooLarge, ProxyError

log = logging.getLogger("streamproxy.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_headers(err: ProxyError) -> dict[str, str]:
    retry_after = getattr(err, "retry_after", None)
    if retry_after is None:
        return {}
    return {"retry-after": str(max(1, round(retry_after)))}


def internal_error() -> ProxyError:
    """A bug's answer: the details go to the log, never to the client."""
    return ProxyError("The server had an error while processing your request.",
                      code="internal_error")


def error_response(err: ProxyError) -> web.Response:
    return web.Response(body=orjson.dumps(err.to_dict()), status=err.status,
                        content_type="application/json", headers=error_headers(err))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as e:
        return error_response(e)
    except web.HTTPRequestEntityTooLarge:  # aiohttp's exception keeps no max_size attribute
        return error_response(PayloadTooLarge(
            f"The request body exceeds the limit of {request.client_max_size} bytes."))
    except web.HTTPNotFound:
        return error_response(NotFound(f"Unknown path: {request.method} {request.path}",
                                       code="unknown_url"))
    except web.HTTPMethodNotAllowed:
        return error_response(ProxyError(f"Method {request.method} is not allowed on "
                                         f"{request.path}.", status=405,
                                         error_type="invalid_request_error",
                                         code="method_not_allowed"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(internal_error())
