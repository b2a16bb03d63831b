"""The chaos load client: which failed requests it sends again, and that it says so.

A small HTTP/1.1 server on a loopback socket plays the app server that dies mid-answer:
it sends the head of an answer (``Content-Length: 10``) and closes after 2 bytes of body.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from djscale.chaos.load import run_load
from djscale.chaos.scenarios import ChaosReport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01"


class _Server:
    """Answers each request with the next of ``answers`` (then OK), one per connection
    for a cut answer (the connection is closed after it)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(head.split(b"\r\n", 1)[0])
                answer = self.answers.pop(0) if self.answers else OK
                conn.sendall(answer)
                if answer is CUT:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[_Server]:
    srv = _Server(list(request.param))
    yield srv
    srv.close()


@pytest.mark.parametrize("server", [[CUT]], indirect=True)
def test_a_read_cut_short_is_sent_again_and_counted(server: _Server) -> None:
    result = run_load("127.0.0.1", server.port, lambda i: ("GET", "/r"), requests=3,
                      max_seconds=10, concurrency=1)
    assert [s.status for s in result.samples] == [200, 200, 200]
    assert [s.retried for s in result.samples] == ["cut short", "", ""]
    assert [s.tag for s in result.samples] == ["", "", ""]  # the retry's answer counts
    assert result.retried() == {"cut short": 1}
    assert len(server.requests) == 4


@pytest.mark.parametrize("server", [[CUT]], indirect=True)
def test_a_write_cut_short_is_not_sent_again(server: _Server) -> None:
    result = run_load("127.0.0.1", server.port, lambda i: ("POST", "/w"), requests=2,
                      max_seconds=10, concurrency=1)
    assert [s.status for s in result.samples] == [0, 200]
    assert result.samples[0].tag == "no answer: IncompleteRead"
    assert result.retried() == {}
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [[CUT, CUT]], indirect=True)
def test_a_read_is_sent_again_once_only(server: _Server) -> None:
    result = run_load("127.0.0.1", server.port, lambda i: ("GET", "/r"), requests=1,
                      max_seconds=10, concurrency=1)
    (sample,) = result.samples
    assert (sample.status, sample.tag, sample.retried) == (
        0, "no answer: IncompleteRead", "cut short")


def test_a_refused_connection_is_a_failure_not_a_retry() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = run_load("127.0.0.1", port, lambda i: ("GET", "/r"), requests=1,
                          max_seconds=10, concurrency=1)
    (sample,) = result.samples
    assert (sample.status, sample.tag, sample.retried) == (
        0, "no answer: ConnectionRefusedError", "")


def test_the_report_names_the_retried_reads() -> None:
    report = ChaosReport(scenario="kill-app-server", fault="f", expectation="e",
                         retried={"cut short": 1})
    assert "retried    reads sent again on a new connection: cut short 1" in report.text()
    assert "retried" not in ChaosReport(scenario="s", fault="f", expectation="e").text()
