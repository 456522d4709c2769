"""A fake OpenAI-compatible backend for load and fault tests where a real engine cannot reach
the needed numbers (holding every slot busy on demand, say).

    python -m tests.fake_backend --models a,b --token-delay 0.2 --tokens 20 --fail-first 0

Prints `FAKE-LISTENING <url>` once serving on 127.0.0.1. Streams `tokens` chat chunks,
one every `token-delay` seconds, then a usage event and [DONE]. The first `fail-first` chat
requests get HTTP 500 instead (an engine that fails, then recovers). `--record FILE` appends
each chat request's body and Authorization header to FILE as a JSON line (what a provider
was sent: a real engine cannot show it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web


def _app(model_ids: list[str], tokens: int, delay: float, fail_first: int = 0,
         record: str | None = None) -> web.Application:
    failures_left = fail_first

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in model_ids]})

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal failures_left
        body = await request.json()
        if record:
            await asyncio.to_thread(_append, record, json.dumps({
                "authorization": request.headers.get("Authorization"), "body": body}))
        if failures_left > 0:
            failures_left -= 1
            return web.json_response({"error": {"message": "injected failure",
                                                "type": "server_error"}}, status=500)
        model = body.get("model")
        if model not in model_ids:
            return web.json_response({"error": {"message": f"unknown model {model}",
                                                "type": "invalid_request_error"}}, status=404)
        n = min(int(body.get("max_tokens") or tokens), tokens)
        base = {"id": "fake-1", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model}
        if not body.get("stream"):
            await asyncio.sleep(delay * n)
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "tok " * n},
                 "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(n):
                await asyncio.sleep(delay)
                chunk = {**base, "choices": [{"index": 0, "delta": {"content": f"t{i} "},
                                              "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": n,
                               "total_tokens": n + 1}}
            await resp.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        except ConnectionResetError:
            pass  # the caller went away (a node killed by a fault test): stop like an engine
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def _main(args: argparse.Namespace) -> None:
    runner = web.AppRunner(_app(args.models.split(","), args.tokens, args.token_delay,
                                args.fail_first, args.record))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"FAKE-LISTENING http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="fake-model")
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--token-delay", type=float, default=0.05)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--record", default=None)
    asyncio.run(_main(p.parse_args()))
