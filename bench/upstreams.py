"""Bench-only upstreams in recorded wire formats the built-in mock does not speak.

- Gemini `streamGenerateContent?alt=sse`: `data:` lines only, CRLF separators, no `[DONE]`
  (provider-streams.md §4.1), 200 text chunks, the last one with `finishReason: STOP`.
- Bedrock ConverseStream: AWS event-stream binary frames with both CRCs (§5.2, §5.3):
  messageStart, 200 contentBlockDelta, contentBlockStop, messageStop, metadata.

Bodies are built once and sent in one write, like the mock's unpaced bodies.
Run alone: `python -m bench.upstreams --port 9200`.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import zlib
from functools import cache

import orjson
from aiohttp import web

WORDS = ("Hello", " from", " the", " bench", " upstream", ",", " token", " by", " token", ".")
DELTAS = 200


# -- Gemini -------------------------------------------------------------------------------------

def gemini_chunk(i: int, text: str, finish: bool) -> bytes:
    """One `alt=sse` event as Gemini writes it: the key order and separators of real output
    (provider-streams.md §4.3), which the translator's fast path recognises."""
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    usage = {"promptTokenCount": 10, "candidatesTokenCount": i + 1, "totalTokenCount": 11 + i,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]}
    msg = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash",
           "responseId": "5HTPaPmNLuS7nvgPx9u_kAk"}
    # Google separates keys from values with `": "` and items with a bare `,` (no key or text
    # here contains `":`, so a replace on orjson's compact output gives exactly that).
    spaced = orjson.dumps(msg).replace(b'":', b'": ')
    return b"data: " + spaced + b"\r\n\r\n"


@cache
def gemini_body(deltas: int = DELTAS, texts: tuple[str, ...] = WORDS) -> bytes:
    return b"".join(gemini_chunk(i, texts[i % len(texts)], i == deltas - 1)
                    for i in range(deltas))


# -- Bedrock event stream -----------------------------------------------------------------------

def _header(name: str, value: str) -> bytes:
    raw = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw


def event_frame(event_type: str, payload: dict[str, object]) -> bytes:
    headers = (_header(":event-type", event_type) + _header(":content-type", "application/json")
               + _header(":message-type", "event"))
    body = orjson.dumps({**payload, "p": "abcdefgh"})  # Bedrock pads every payload
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return head + struct.pack(">I", zlib.crc32(head))


@cache
def bedrock_body(deltas: int = DELTAS) -> bytes:
    frames = [event_frame("messageStart", {"role": "assistant"})]
    frames += [event_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                                 "delta": {"text": WORDS[i % len(WORDS)]}})
               for i in range(deltas)]
    frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(event_frame("messageStop", {"stopReason": "end_turn"}))
    frames.append(event_frame("metadata", {
        "usage": {"inputTokens": 9, "outputTokens": deltas, "totalTokens": 9 + deltas},
        "metrics": {"latencyMs": 100}}))
    return b"".join(frames)


# -- serving ------------------------------------------------------------------------------------

async def handle(request: web.Request) -> web.StreamResponse:
    await request.read()
    path = request.path
    if "streamGenerateContent" in path:
        body, ctype = gemini_body(), "text/event-stream"
    elif "converse-stream" in path:
        body, ctype = bedrock_body(), "application/vnd.amazon.eventstream"
    else:
        return web.json_response({"error": {"message": f"no bench upstream at {path}"}},
                                 status=404)
    resp = web.StreamResponse(headers={"content-type": ctype})
    await resp.prepare(request)
    await resp.write(body)
    await resp.write_eof()
    return resp


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    print(f"bench upstream on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstreams")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
