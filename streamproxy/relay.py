"""Carry a committed stream: upstream read → translate → client write, until the end.

Two ways, one behaviour. **Piped** (the native upstream client): the work runs inside the
upstream connection's `data_received`: translate the read, write the frames to the client's
transport, return; no task wake-up and no await per read. The relay task only waits for the
end, and for the client's buffer to drain when it is full. **Pulled** (the aiohttp client):
`await read()`, translate, `await write()`.

Either way: one write per upstream read (every frame that read produced leaves together), no
queues, no sleeps, no per-chunk timers; the body's end leaves with the last frames where the
client's writer can frame it (the lean front), and a stream that came whole before the commit
is one write, head to end. Backpressure: while a slow client's socket buffer is full we do
not read, so the upstream's TCP window closes instead of memory growing. Any failure after
commit becomes one OpenAI error frame and the stream ends; a client that goes away cancels
this task, and leaving the `finally` closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from streamproxy.errors import ProxyError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.base import StreamTranslator
from streamproxy.record import RequestRecord
from streamproxy.routing.executor import OpenedStream
from streamproxy.server.sse_writer import SSEWriter
from streamproxy.upstream.client import map_client_error
from streamproxy.upstream.deadline import Deadline
from streamproxy.upstream.http11 import BodySink, Response

log = logging.getLogger("streamproxy.relay")

KEEPALIVE_COMMENT = b": keep-alive\n\n"


class _KeepAlive:
    """`server.keepalive_interval` once the stream runs, so a pause is not cut by a load
    balancer's idle timeout (an ALB's, nginx's: 60 s). Two ways, neither per read:

    - `run()`: one timer a stream, firing about once an interval. When the interval has
      passed since the latest upstream read (the deadline's clock, which every read stores
      already) and since the latest comment, it sends one: an upstream silent in a pause
      (Gemini, Bedrock, an OpenAI-compatible server, a reasoning model thinking after its role
      chunk) gives no read to send one on. A busy stream's timer only re-arms, once an
      interval.
    - `due()`: an upstream read that gives the client nothing (Anthropic's `ping`, a relay's
      comment, part of an event) sends one when the interval passed since the last one, as
      those reads keep the timer from firing. Only such reads look at the clock."""

    __slots__ = ("_due", "_handle", "_interval", "_loop", "sent")

    def __init__(self, interval: float, loop: asyncio.AbstractEventLoop) -> None:
        self._interval = interval
        self._loop = loop
        self._due = loop.time() + interval
        self._handle: asyncio.TimerHandle | None = None
        self.sent = 0

    def due(self) -> bool:
        now = self._loop.time()
        if now < self._due:
            return False
        self._due = now + self._interval
        self.sent += 1
        return True

    def run(self, client: SSEWriter, translator: StreamTranslator, deadline: Deadline) -> None:
        """Send a comment if the client got nothing for an interval; re-arm for the next."""
        if translator.done:  # the body's end may be written (the piped relay's callback)
            self._handle = None
            return
        now = self._loop.time()
        quiet_until = max(deadline.last_read + self._interval, self._due)
        if now + 0.001 >= quiet_until:  # (a timer may fire a hair early)
            # A full client is not reading what it has: a comment would only queue.
            if not client.full:
                try:
                    client.write_now(KEEPALIVE_COMMENT)
                except (ConnectionError, OSError):  # the client is gone: the relay hears of it
                    self._handle = None
                    return
                self.sent += 1
            self._due = quiet_until = now + self._interval
        self._handle = self._loop.call_at(quiet_until, self.run, client, translator, deadline)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def relay(stream: OpenedStream, client: SSEWriter, record: RequestRecord,
                keepalive: float | None = None) -> None:
    encoder, translator, deadline = stream.encoder, stream.translator, stream.deadline
    upstream = stream.response
    kept = None if not keepalive else _KeepAlive(keepalive, deadline.loop)
    try:
        try:
            first = encoder.take()  # the response head leaves with these frames
            # Committed on the role chunk alone, the first token is still to come: the reads
            # before it note its time (`_FirstToken`, `_pull`'s `before_answer`), none after it.
            waiting = deadline.first_token_due and not translator.done
            # A pass-through upstream's chunks may carry nothing (`content: ""`) before its
            # first token; a translator's never do, so only those are looked at.
            blanks = stream.target.provider.passthrough
            if not waiting:
                record.first_token = record.first_byte
            if translator.done:  # the whole stream came before the commit: one write
                await client.finish(first)
            else:
                await client.write(first)
                if kept is not None and client.direct:  # (after the head went out)
                    kept.run(client, translator, deadline)
                if isinstance(upstream, Response) and client.direct:
                    pump = _Pump(translator, encoder, deadline, client, upstream, kept)
                    await pump.run(_FirstToken(pump, encoder, deadline, upstream, record,
                                               blanks)
                                   if waiting else pump)
                else:
                    await _pull(translator, encoder, deadline, upstream.content.readany,
                                client.write, kept, record if waiting else None, blanks)
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
        tail = encoder.take()  # an error frame, or what the upstream's end flushed
        if tail and client.direct:
            # With the body's end, not awaiting a full client: a stream whose total runs out
            # while a slow client holds it must end, and its upstream close, now.
            client.end_with(tail)
        elif tail:
            await client.write(tail)
    except (ConnectionResetError, BrokenPipeError):
        record.client_disconnected = True
    finally:
        deadline.cancel()
        if kept is not None:
            kept.stop()
        if translator.done:
            # Back to the pool; the native client first reads the body's end if it is still
            # on its way (typically the chunked terminator, one read behind the last event).
            upstream.release()
        else:
            upstream.close()
        record.bytes_out += encoder.bytes_taken  # after any keep-alive comments
        if kept is not None:
            record.bytes_out += kept.sent * len(KEEPALIVE_COMMENT)
        record.chunks = encoder.chunks
        if record.first_token is None and encoder.answered():
            # (an empty answer that ended on the upstream's close, which does not ask: now)
            record.first_token = time.monotonic()
        record.finish_reason = encoder.finish_reason
        ended = encoder.ended and encoder.failure is None
        record.note_usage(encoder.usage_data, translator, ended=ended,
                          sent=0 if ended else encoder.tokens_sent())
        record.upstream_reads, record.gap_max, record.gap_mean = deadline.gap_stats(
            cut=not translator.done)
        if encoder.failure is not None:
            record.error_type = encoder.failure.error_type
            record.error_code = encoder.failure.code
            record.note_upstream_error(encoder.failure)


async def _pull(translator: StreamTranslator, encoder: ChunkEncoder, deadline: Deadline,
                read: Callable[[], Awaitable[bytes]],
                write: Callable[[bytes], Awaitable[None]],
                kept: _KeepAlive | None = None,
                before_answer: RequestRecord | None = None, blanks: bool = False) -> None:
    """`before_answer`: committed on the role chunk alone, the record whose first token's time
    the first write of one notes (then None: a written chunk after it asks no more); `blanks`:
    chunks with nothing in them may come before it, and are no token."""
    while not translator.done:
        data = out = b""  # nothing held while an idle stream waits (10,000 of them)
        data = await read()
        if not data:
            translator.close()  # raises StreamTruncated if the end never came
            return
        deadline.progress()
        translator.feed(data)
        out = encoder.take()
        if not out and kept is not None and kept.due():
            out = KEEPALIVE_COMMENT
        if out:
            if before_answer is not None:
                if blanks:
                    encoder.skip_empty(out)
                if encoder.answered():
                    before_answer.first_token = time.monotonic()
                    deadline.token_came()
                    before_answer = None
            deadline.hold()  # a write that waits for a slow client is not the provider's gap
            await write(out)
            deadline.release()


class _FirstToken:
    """The piped relay's sink until the first token after a commit on the role chunk alone:
    each read goes to the pump, whose frames it looks at (`_take`: chunks with nothing in them
    are no token), then asks whether the answer began; once it did, the time is noted and the
    pump takes the reads itself, so no read after the first token asks."""

    __slots__ = ("_deadline", "_encoder", "_pump", "_record", "_upstream")

    def __init__(self, pump: _Pump, encoder: ChunkEncoder, deadline: Deadline,
                 upstream: Response, record: RequestRecord, blanks: bool = False) -> None:
        self._pump, self._encoder, self._deadline = pump, encoder, deadline
        self._upstream, self._record = upstream, record
        if blanks:  # (a pass-through upstream's: see relay())
            pump.take = self._take

    def _take(self) -> bytes:
        out = self._encoder.take()
        self._encoder.skip_empty(out)
        return out

    def data(self, data: bytes) -> None:
        # (the time after the pump wrote the token: the client's, as the first chunk's is)
        self._pump.data(data)
        if self._encoder.answered():
            self._record.first_token = time.monotonic()
            self._deadline.token_came()
            self._pump.take_over()

    def end(self, exc: BaseException | None) -> None:
        self._pump.end(exc)


class _Pump:
    """The piped relay: `data()` and `end()` run in the upstream connection's callbacks; the
    task in `run()` sleeps until the stream ends or fails, or the client's buffer fills (then
    reading pauses, reads already on their way are held, and the task resumes reading once
    the client has drained)."""

    __slots__ = ("_client", "_deadline", "_encoder", "_ended", "_held", "_kept", "_outcome",
                 "_sink", "_translator", "_upstream", "_waiter", "take")

    def __init__(self, translator: StreamTranslator, encoder: ChunkEncoder, deadline: Deadline,
                 client: SSEWriter, upstream: Response, kept: _KeepAlive | None = None) -> None:
        self._translator = translator
        self._encoder = encoder
        self._deadline = deadline
        self._client = client
        self._upstream = upstream
        self._kept = kept
        self._outcome: BaseException | bool | None = None  # True: ended; an error: failed
        self._held: list[bytes] | None = None  # reads that came while the client was full
        self._ended: tuple[BaseException | None] | None = None  # an end that came then
        self._waiter: asyncio.Future[None] | None = None
        self._sink: BodySink = self  # what the upstream pipes to: held reads go there too
        # The read's frames: the encoder's, or while the first token is due `_FirstToken`'s
        # look at them first (so no read after it pays for the look)
        self.take: Callable[[], bytes] = encoder.take

    async def run(self, sink: BodySink | None = None) -> None:
        """`sink`: what the upstream pipes to, the pump itself unless given (a `_FirstToken`
        that hands the reads over)."""
        loop = self._deadline.loop
        if sink is not None:
            self._sink = sink
        try:
            self._upstream.pipe(self._sink)
            while self._outcome is None:
                if self._held is not None:
                    await self._client.drain()
                    self._release_held()
                    continue
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
        finally:
            if self._outcome is None:  # cancelled: later reads are not ours to write
                self._outcome = True
        if self._outcome is not True:
            raise self._outcome  # type: ignore[misc]

    def data(self, data: bytes) -> None:
        if self._outcome is not None:
            return
        if self._held is not None:
            self._held.append(data)
            return
        try:
            self._deadline.progress()
            self._translator.feed(data)
            out = self.take()
            done = self._translator.done
            if done:
                self._client.end_with(out)  # [DONE] and the body's end: one write
            elif out:
                self._client.write_now(out)
            elif self._kept is not None and self._kept.due():
                self._client.write_now(KEEPALIVE_COMMENT)
        except Exception as e:
            self._stop(e)
            return
        if done:
            self._stop(True)
        elif self._client.full:
            self._held = []
            self._upstream.pause_reading()
            self._deadline.hold()  # the wait for the client is not the provider's gap
            self._wake()

    def end(self, exc: BaseException | None) -> None:
        if self._outcome is not None:
            return
        if self._held is not None:
            self._ended = (exc,)
            return
        if exc is None:
            try:
                self._translator.close()  # raises StreamTruncated if the end never came
            except Exception as e:
                exc = e
        self._stop(exc or True)

    def take_over(self) -> None:
        """The reads come to the pump itself from now on (the first token came)."""
        self._sink = self
        self.take = self._encoder.take
        self._upstream.handover(self)

    def _release_held(self) -> None:
        held, self._held = self._held or [], None
        self._deadline.release()
        if held:  # through the sink: the first token may be among them (`_FirstToken`)
            self._sink.data(b"".join(held))
        if self._held is None:
            if self._ended is not None:
                self.end(self._ended[0])
            elif self._outcome is None:
                self._upstream.resume_reading()

    def _stop(self, outcome: BaseException | bool) -> None:
        self._outcome = outcome
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
