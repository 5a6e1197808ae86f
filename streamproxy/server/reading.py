"""Timeouts on reading a request.

A client may leave at most `server.client_header_timeout` seconds between two reads of a
request's head, and `server.client_body_timeout` between two reads of its body (60 s each by
default). Like nginx's client_body_timeout they bound an idle gap, not the whole transfer: a
large body on a slow link takes as long as it takes, a stalled one is cut. The request is then
answered 408 (RFC 9110 §15.5.9) in OpenAI's error shape and the connection closes. Between
requests the keep-alive timeout applies instead (75 s, `front.KEEPALIVE_TIMEOUT`), so a
connection that sends nothing is closed too.

The lean front keeps these with the one timer it has per connection (server/front.py). It
does not re-arm a timer per read: a read stores the time, and the timer, when it fires, looks
at the time of the last read and either acts or sets itself again for when the gap could next
run out.
"""

from __future__ import annotations

from email.utils import formatdate

import orjson

from streamproxy.config import ServerConfig
from streamproxy.errors import RequestTimeout


class ReadTimeouts:
    """The two timeouts, and `step`: how far ahead a check is set when the part being read
    may change before it (a head's next read may start a body), so neither is overshot."""

    __slots__ = ("body", "header", "step")

    def __init__(self, server: ServerConfig) -> None:
        self.header = server.client_header_timeout
        self.body = server.client_body_timeout
        self.step = min(self.header, self.body)


def request_timeout(part: str, seconds: float) -> RequestTimeout:
    return RequestTimeout(f"The request {part} stopped arriving: nothing came for "
                          f"{seconds:g} seconds.")


def timeout_response(err: RequestTimeout) -> bytes:
    """The 408 as bytes, for a request no handler can answer (its head, or its body on the
    lean front, never complete)."""
    body = orjson.dumps(err.to_dict())
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\ndate: %b\r\nconnection: close\r\n\r\n%b"
            % (len(body), formatdate(usegmt=True).encode(), body))
