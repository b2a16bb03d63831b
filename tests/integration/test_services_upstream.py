"""The gateway's upstream wire (djscale.services.upstream) against scripted HTTP servers.

Each test runs a small asyncio server on a free port that answers with exact bytes, so
the framings a real upstream may use (chunked with trailers, read-to-close, interim 1xx)
and its misbehaviour (closing a kept-alive connection, stalling mid-body) are on the wire
as they would be, and the client's parsing, reuse and budgets are what is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from djscale.cluster.supervisor import free_port
from djscale.errors import ServiceTimeout, ServiceUnavailable
from djscale.services.policy import RetryPolicy
from djscale.services.upstream import UpstreamClient, UpstreamResponse

pytestmark = pytest.mark.integration

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def _serve(script: Script, body: Callable[[UpstreamClient], Awaitable[None]],
                 **client: object) -> list[int]:
    """Run ``script`` for each connection (numbered); run ``body`` with a client of it."""
    port = free_port()
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await script(reader, writer, connections[-1])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    upstream = UpstreamClient(name="up", urls=[f"http://127.0.0.1:{port}"],
                              **client)  # type: ignore[arg-type]
    try:
        await body(upstream)
    finally:
        upstream.close()
        server.close()
        await server.wait_closed()
    return connections


async def _get(upstream: UpstreamClient, method: str = "GET",
               idempotent: bool = True) -> UpstreamResponse:
    base = upstream.next_base()
    head = f"{method} /x HTTP/1.1\r\nhost: {base.host_header.decode()}\r\n".encode()
    if method == "POST":
        head += b"content-length: 2\r\n"
    return await upstream.send(base, method, "/x", head + b"\r\n",
                               b"{}" if method == "POST" else b"", idempotent=idempotent)


def test_a_chunked_answer_with_trailers_is_unchunked_and_its_connection_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        for _ in range(2):
            await _read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                         b"5;ext=1\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()
        await reader.read()

    async def body(upstream: UpstreamClient) -> None:
        for _ in range(2):
            response = await _get(upstream)
            assert response.status == 200
            assert (b"X-A", b"1") in response.headers
            assert not any(k.lower() == b"transfer-encoding" for k, _ in response.headers)
            assert await response.read() == b"hello world"

    assert asyncio.run(_serve(script, body)) == [0]  # both answers on one connection


def test_an_answer_without_length_is_read_to_the_close_and_interim_answers_are_skipped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                     b"Connection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"part two")
        await writer.drain()

    async def body(upstream: UpstreamClient) -> None:
        response = await _get(upstream)
        assert response.status == 201
        assert not response.keep_alive
        assert await response.read() == b"part one, part two"

    asyncio.run(_serve(script, body))


async def _drops_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                n: int) -> None:
    """Connection 0 answers one request, then closes on the next without answering (the
    race of a kept-alive connection closed by the server as a request goes out)."""
    while True:
        head = await _read_head(reader)
        if b"content-length: 2" in head:
            await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if n == 0:
            await _read_head(reader)
            return


def test_a_get_whose_kept_alive_connection_is_closed_goes_out_again_on_a_new_one() -> None:
    async def body(upstream: UpstreamClient) -> None:
        assert await (await _get(upstream)).read() == b"ok"
        assert await (await _get(upstream)).read() == b"ok"
        assert upstream.breaker.state == "closed"

    assert asyncio.run(_serve(_drops_second_request, body, retry=RetryPolicy(retries=0))) == [0, 1]


def test_a_post_is_not_sent_again_when_its_kept_alive_connection_is_closed() -> None:
    async def body(upstream: UpstreamClient) -> None:
        assert await (await _get(upstream, "POST", idempotent=False)).read() == b"ok"
        with pytest.raises(ServiceUnavailable, match="closed a kept-alive connection"):
            await _get(upstream, "POST", idempotent=False)

    assert asyncio.run(_serve(_drops_second_request, body, retry=RetryPolicy(retries=0))) == [0]


def test_an_answer_that_stalls_mid_body_ends_with_a_timeout_at_the_budget() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        await asyncio.sleep(5)

    async def body(upstream: UpstreamClient) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await _get(upstream)
        assert await response.chunk() == b"only part"
        with pytest.raises(httpx.ReadTimeout):
            await response.chunk()
        assert 0.25 <= loop.time() - started < 2
        response.release()

    asyncio.run(_serve(script, body, timeout=0.3))


def test_a_silent_upstream_gives_a_service_timeout_at_the_budget() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        await _read_head(reader)
        await asyncio.sleep(5)

    async def body(upstream: UpstreamClient) -> None:
        with pytest.raises(ServiceTimeout):
            await _get(upstream)

    asyncio.run(_serve(script, body, timeout=0.3, retry=RetryPolicy(retries=0)))
