"""Delay and drop packets in user space: a netfilter queue reader (`python -m ...nfqdelay`).

``tc netem`` is the usual tool for network delay, but some kernels are built without
``sch_netem`` (this project's CI machines among them: ``tc`` answers "Specified qdisc
kind is unknown"). :mod:`djscale.chaos.network` then sends the host's outgoing packets to
an ``NFQUEUE`` (an ``iptables`` rule with ``--queue-bypass``, so packets flow untouched
whenever no reader is bound) and runs this program inside the host's network namespace:
it holds each packet for ``--delay-ms`` (plus or minus up to ``--jitter-ms``, uniformly)
and then lets it go, or drops it with probability ``--loss`` percent. Like netem without a
rate, jitter may reorder packets.

It speaks the ``nfnetlink_queue`` protocol over a raw netlink socket (metadata only: no
packet is copied to user space, only its id comes up and a verdict goes down), because no
library in the standard library or the project's dependencies does, and the C library's
Python bindings need a compiler. On SIGTERM or SIGINT it releases every packet it still
holds before it exits (a queue whose reader goes away drops what it held).

It prints ``ready`` on stdout once it is bound to the queue.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["Delayer", "main"]

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP = 0
NF_ACCEPT = 1
_HEADER = struct.Struct("=IHHII")


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


class Delayer:
    """Holds the packets of one netfilter queue and releases them late (or drops them)."""

    def __init__(self, queue: int, *, delay_ms: float, jitter_ms: float = 0.0,
                 loss_percent: float = 0.0, rng: random.Random | None = None) -> None:
        self.queue = queue
        self.delay = delay_ms / 1000
        self.jitter = jitter_ms / 1000
        self.loss = loss_percent / 100
        self.rng = rng or random.Random()
        self.held: list[tuple[float, int]] = []
        self.stopping = False
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))

    def _send(self, msg_type: int, attrs: list[tuple[int, bytes]], *, ack: bool = False) -> None:
        self.seq += 1
        payload = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.queue) + b"".join(
            _attr(k, d) for k, d in attrs)
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.send(_HEADER.pack(_HEADER.size + len(payload),
                                    (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self.seq, 0)
                       + payload)
        if ack:
            self._read_ack()

    def _read_ack(self) -> None:
        data = self.sock.recv(65536)
        _, kind, _, _, _ = _HEADER.unpack_from(data, 0)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, _HEADER.size)
            if error:
                raise OSError(-error, f"netfilter queue {self.queue}: configuration refused "
                                      f"({errno.errorcode.get(-error, error)})")

    def bind(self) -> None:
        """Bind to the queue: metadata only, a long queue, fail open when it is full."""
        self._send(NFQNL_MSG_CONFIG, [(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND,
                                                                  0))], ack=True)
        self._send(NFQNL_MSG_CONFIG, [(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))],
                   ack=True)
        self._send(NFQNL_MSG_CONFIG, [(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536))],
                   ack=True)
        self._send(NFQNL_MSG_CONFIG, [(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)),
                                      (NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))],
                   ack=True)

    def verdict(self, packet_id: int, verdict: int) -> None:
        """Let one packet go (NF_ACCEPT) or drop it (NF_DROP)."""
        self._send(NFQNL_MSG_VERDICT, [(NFQA_VERDICT_HDR, struct.pack("!II", verdict,
                                                                       packet_id))])

    def _packets(self, data: bytes) -> list[int]:
        ids = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                at = offset + _HEADER.size + 4  # after the nfgenmsg
                while at + 4 <= offset + length:
                    alen, akind = struct.unpack_from("=HH", data, at)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, at + 4)[0])
                    at += alen + (-alen % 4)
            offset += length + (-length % 4)
        return ids

    def run(self) -> None:
        """Hold and release packets until :attr:`stopping`; then release what is held."""
        while not self.stopping:
            now = time.monotonic()
            while self.held and self.held[0][0] <= now:
                self.verdict(heapq.heappop(self.held)[1], NF_ACCEPT)
            wait = min(0.2, self.held[0][0] - now) if self.held else 0.2
            try:
                ready, _, _ = select.select([self.sock], [], [], max(0.0, wait))
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                data = self.sock.recv(1 << 20)
            except InterruptedError:
                continue
            now = time.monotonic()
            for packet_id in self._packets(data):
                if self.loss and self.rng.random() < self.loss:
                    self.verdict(packet_id, NF_DROP)
                    continue
                spread = self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
                heapq.heappush(self.held, (now + max(0.0, self.delay + spread), packet_id))
        while self.held:
            self.verdict(heapq.heappop(self.held)[1], NF_ACCEPT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the delayer on one queue until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m djscale.chaos.nfqdelay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="percent of packets dropped")
    args = parser.parse_args(argv)
    delayer = Delayer(args.queue, delay_ms=args.delay_ms, jitter_ms=args.jitter_ms,
                      loss_percent=args.loss)

    def stop(signum: int, frame: FrameType | None) -> None:
        delayer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        delayer.bind()
    except OSError as exc:
        print(f"nfqdelay: error: {exc}", file=sys.stderr)
        return 2
    print("ready", flush=True)
    delayer.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
