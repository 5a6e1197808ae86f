"""The one async loop that carries a committed stream: read upstream → translate → write.

One write per upstream read (every frame that read produced leaves together), no queues, no
sleeps, no per-chunk timers. `await write()` is the backpressure: while a slow client's socket
buffer is full we do not read, so the upstream's TCP window closes instead of memory growing.
Any failure after commit becomes one OpenAI error frame and the stream ends; a client that goes
away cancels this task, and leaving the `finally` closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from streamproxy.errors import ProxyError
from streamproxy.record import RequestRecord
from streamproxy.routing.executor import OpenedStream
from streamproxy.upstream.client import map_client_error

log = logging.getLogger("streamproxy.relay")


async def relay(stream: OpenedStream, client: web.StreamResponse, record: RequestRecord) -> None:
    encoder, translator, deadline = stream.encoder, stream.translator, stream.deadline
    upstream = stream.response
    read = upstream.content.readany
    write = client.write
    sent = 0
    try:
        try:
            out = encoder.take()
            sent += len(out)
            await write(out)
            while not translator.done:
                data = out = b""  # nothing held while an idle stream waits (10,000 of them)
                data = await read()
                if not data:
                    translator.close()  # raises StreamTruncated if the end never came
                    break
                deadline.progress()
                translator.feed(data)
                out = encoder.take()
                if out:
                    sent += len(out)
                    await write(out)
        except asyncio.CancelledError:
            if not deadline.owns():
                record.client_disconnected = True
                raise
            encoder.error(deadline.expired)  # type: ignore[arg-type]
        except ProxyError as e:
            encoder.error(e)
        except (ConnectionResetError, BrokenPipeError):
            record.client_disconnected = True
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            encoder.error(map_client_error(e, stream.target.provider.name,
                                           before_response=False))
        except Exception:
            log.exception("unexpected error while relaying a stream")
            encoder.error(ProxyError("internal error while relaying the stream"))
        tail = encoder.take()
        if tail:
            sent += len(tail)
            await write(tail)
    except (ConnectionResetError, BrokenPipeError):
        record.client_disconnected = True
    finally:
        deadline.cancel()
        if translator.done:
            # Back to the pool; the native client first reads the body's end if it is still
            # on its way (typically the chunked terminator, one read behind the last event).
            upstream.release()
        else:
            upstream.close()
        record.bytes_out = sent
        record.chunks = encoder.chunks
        record.finish_reason = encoder.finish_reason
        record.usage = encoder.usage_data
        record.upstream_reads, record.gap_max, record.gap_mean = deadline.gap_stats()
        if encoder.failure is not None:
            record.error_type = encoder.failure.error_type
            record.error_code = encoder.failure.code
            record.note_upstream_error(encoder.failure)
