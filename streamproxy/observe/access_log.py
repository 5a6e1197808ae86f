"""The structured access log: one JSON line per request, written when it ends (an observer).

A line holds facts about the request (who, where, how long, how many tokens, how it ended) and
never a key: the record carries the proxy key's configured *name* only, and no header is read
here. Message bodies stay out unless the operator sets `logging.log_bodies: true`, which puts
the client's request body in `request_body`.

Config (validated here; the section is listed in config.EXTRA_SECTIONS):

    logging:
      access_log: true     # one line per request on stdout (default true)
      log_bodies: false    # include the request body (default false)

The diagnostic log level is `server.log_level`, overridden by env STREAMPROXY_LOG_LEVEL; it
does not silence the access log, which has its own switch.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from streamproxy.config import LOG_LEVELS, Config, ConfigError, unknown_key
from streamproxy.observe.metrics import bounded_label
from streamproxy.record import RequestRecord, cache_write_tokens
from streamproxy.upstream.passed_headers import upstream_request_id

ACCESS_LOGGER = logging.getLogger("streamproxy.access")
log = logging.getLogger("streamproxy.observe")

LEVEL_ENV = "STREAMPROXY_LOG_LEVEL"
# The model is the client's, as long as its body may be: past this, cut (with a digest of the
# whole, as the metrics' label is), so one request cannot make a line of megabytes. Room for
# the longest real ids (Vertex endpoint paths, Bedrock ARNs).
MAX_MODEL_CHARS = 256
LEVELS = LOG_LEVELS


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    access_log: bool = True
    log_bodies: bool = False


def parse_logging(config: Config) -> LoggingSettings:
    raw = config.sections.get("logging")
    if raw is None:
        return LoggingSettings()
    if not isinstance(raw, dict):
        raise ConfigError(config.source, "logging", "must be a mapping")
    known = {f.name for f in fields(LoggingSettings)}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(config.source, f"logging.{key}", unknown_key(key, known))
        if not isinstance(value, bool):
            raise ConfigError(config.source, f"logging.{key}", "must be true or false")
    return LoggingSettings(**raw)


def log_level(config: Config) -> str:
    """The diagnostic log level: env STREAMPROXY_LOG_LEVEL, else server.log_level."""
    env = os.environ.get(LEVEL_ENV)
    if env is None or env == "":
        return config.server.log_level
    if env.lower() not in LEVELS:
        raise ConfigError(f"env {LEVEL_ENV}", "", f"must be one of {', '.join(LEVELS)}")
    return env.lower()


def configure_logging(config: Config) -> None:
    """Process-wide logging for `serve`: diagnostics as text on stderr at the configured
    level; access lines as bare JSON on stdout, whatever that level."""
    logging.basicConfig(level=log_level(config).upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    handler = AccessLineHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ACCESS_LOGGER.handlers[:] = [handler]
    ACCESS_LOGGER.propagate = False
    ACCESS_LOGGER.setLevel(logging.INFO)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrorFilter) for f in server_log.filters):
        server_log.addFilter(ParserErrorFilter())


class AccessLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler under `serve`. AccessLog hands it finished lines directly
    (`write_line`) when it is the logger's only way out: a LogRecord, the caller lookup and
    the formatter cost ~50 µs per request, more than the rest of the line's work."""

    def write_line(self, line: bytes) -> None:
        """One finished line, newline included, as bytes: to the binary buffer under the text
        stream when there is one (no decode and re-encode), after anything the text layer
        still holds."""
        stream = self.stream
        try:
            buffer = getattr(stream, "buffer", None)
            if buffer is None:
                stream.write(line.decode())
                stream.flush()
            else:
                stream.flush()
                _write_all(buffer, line)
                buffer.flush()
        except Exception:  # logging's own rule: a failed log write never breaks the caller
            self.handleError(logging.makeLogRecord({"msg": line.decode(errors="replace")}))


def _write_all(out: Any, line: bytes) -> None:
    """The whole line: a raw unbuffered stream (`python -u`, PYTHONUNBUFFERED, as Docker
    images set it) may take part of a write, and the rest would be lost or glued to the next
    line. (Lines over the pipe's atomic size, 4 KiB — `log_bodies` — can still interleave
    with another worker's on a shared pipe; docs/operations.md.)"""
    view = memoryview(line)
    while view:
        written = out.write(view)
        if not written:  # None: a non-blocking stream that is full; nothing to wait on here
            return
        view = view[written:]


class ParserErrorFilter(logging.Filter):
    """aiohttp logs a request its parser refused (a header over the limits, bad framing) as
    an error with a traceback that quotes the first 100 bytes of the offending line, which may
    be an Authorization header. Keep one line naming the error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "refused a malformed request: %s (HTTP %s)", (
                type(exc).__name__, exc.code)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _count(usage: dict[str, Any], key: str) -> int | None:
    return _int(usage.get(key))


def _int(n: Any) -> int | None:
    return n if isinstance(n, int) and not isinstance(n, bool) else None


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text up to the "."
# A timestamp's ending, by millisecond: formatting the integer per line ("{:03d}" parses its
# spec each time) cost ~2.5k instructions more than this lookup.
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))


def timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds. The date and time of day are formatted once per second
    (datetime's isoformat per line cost more than the rest of the line's fields)."""
    second = int(now)
    micros = round((now - second) * 1e6)  # as datetime rounds, before isoformat truncates
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if second != _second[0]:
        _second[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second[0] = second
    return _second[1] + _MILLIS[micros // 1000]


def access_entry(r: RequestRecord, now: float | None = None) -> dict[str, Any]:
    """The log line's fields, always the same keys (null when unknown)."""
    usage = r.usage if isinstance(r.usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = _count(details, "cached_tokens") if isinstance(details, dict) else None
    output = usage.get("completion_tokens_details")
    reasoning = _count(output, "reasoning_tokens") if isinstance(output, dict) else None
    entry: dict[str, Any] = {
        "ts": timestamp(time.time() if now is None else now),
        "trace_id": r.trace_id,
        "auth_key": r.auth_key_name,
        "provider": r.provider,
        "model": r.model if r.model is None else bounded_label(r.model, MAX_MODEL_CHARS),
        "status": r.status,
        "stream": r.stream,
        "ttft_ms": _ms(r.ttft) if r.stream else None,
        # the commit (a role chunk alone, perhaps): ttft_ms less this is the model's silence
        "first_chunk_ms": _ms(r.first_chunk) if r.stream else None,
        "duration_ms": _ms(r.duration),
        "prompt_tokens": _count(usage, "prompt_tokens"),
        "completion_tokens": _count(usage, "completion_tokens"),
        "cached_tokens": cached,
        "cache_write_tokens": _int(cache_write_tokens(usage, details)),
        "reasoning_tokens": reasoning,
        "tokens_partial": r.usage_partial,  # counted before the stream failed or was left
        "finish_reason": r.finish_reason,
        "attempts": r.attempts,
        "target_index": r.target_position,  # (the plan's as configured: not by breaker state)
        "option": r.option_path,  # the config target that answered
        "fallbacks": r.fallbacks,
        "client_disconnected": r.client_disconnected,
        "error_type": r.error_type,
        "error_code": r.error_code,
        "upstream_errors": [f"{p}:{k}" for p, k in r.upstream_errors or ()],
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "chunks": r.chunks,
        "max_gap_ms": _ms(r.gap_max),
        "cache_status": r.cache_status,
        # the answering (or failing) upstream's own id, which its provider's support asks for
        "upstream_request_id": upstream_request_id(r.upstream_headers),
    }
    if r.metadata:  # the client's x-portkey-metadata, as Portkey logs it
        entry["metadata"] = r.metadata
    if r.request_body is not None:
        entry["request_body"] = _body(r.request_body)
    return entry


def _body(raw: bytes) -> Any:
    # Re-encoded compactly: a pretty-printed body must not break one-line-per-request.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class AccessLog:
    """The observer that writes one line per request."""

    def __init__(self, logger: logging.Logger = ACCESS_LOGGER) -> None:
        self.logger = logger

    def _direct(self) -> AccessLineHandler | None:
        """The handler to write to without a LogRecord, when nothing else would see one."""
        logger = self.logger
        handlers = logger.handlers
        if len(handlers) == 1 and not logger.propagate and not logger.filters:
            handler = handlers[0]
            if type(handler) is AccessLineHandler and not handler.filters:
                return handler
        return None

    def __call__(self, r: RequestRecord) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        try:
            entry = access_entry(r)
            try:
                line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
            except orjson.JSONEncodeError:  # a header with undecodable bytes (trace id), or
                # a body nested deeper than orjson writes (255; it reads 1024): its text as sent
                if r.request_body is not None:
                    entry["request_body"] = r.request_body.decode("utf-8", "replace")
                line = orjson.dumps({k: _scrub(v) for k, v in entry.items()},
                                    option=orjson.OPT_APPEND_NEWLINE)
        except Exception:  # an observer must never break the response it observes
            log.exception("access log observer failed")
            return
        direct = self._direct()
        if direct is not None:
            direct.write_line(line)
        else:
            self.logger.info(line[:-1].decode())


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value
