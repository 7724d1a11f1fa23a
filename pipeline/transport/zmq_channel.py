"""`zmq` transport: one hop is a PUSH socket (sender) connected to a PULL socket (receiver).

Downstream binds, upstream connects, so the processes may start in any order: a sender
queues up to `hwm` messages until its peer appears, then blocks (backpressure). Each
message is one multipart zmq message, exactly `wire.encode`'s frames:

    frame 0: msgpack header          frames 1..n: raw little-endian tensor bytes

Zero copy, and what it asks of the caller: tensor frames of 64 KiB and more are handed
to libzmq without a copy (smaller ones pyzmq copies, which is cheaper at that size).
pyzmq keeps a reference to each buffer until libzmq has written it out, so the memory
stays alive by itself; what it cannot stop is a write into the tensor meanwhile. So
**a tensor passed to `send` must not be modified afterwards** (stages make fresh tensors
every step, so this holds). Large frames are sent with `track=True` and the channel keeps
the trackers, with the tensors, in `self._in_flight` until libzmq is done with them:
`in_flight()` counts them and `wait_sent(timeout)` waits, for a caller that wants to reuse
a buffer. `close()` lets libzmq flush what is queued for up to the linger (1 s, or what
`finish` set), then drops it: a last "stop" gets out, a dead peer cannot hang the shutdown.

On receipt the tensors view libzmq's frame buffers (read-only; no copy). Limits against
a hostile peer: MAXMSGSIZE caps every frame at max_bytes plus a header allowance (libzmq
drops a peer that announces more, before allocating it), RCVHWM caps the number of
queued messages, and `wire.decode` checks everything else. A bad message is counted in
`rejected` and skipped; `recv` never raises for bad input.

Each channel owns its zmq context, so closing one never hangs on another's sockets, and
a CURVE receiver can run its own authenticator thread.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from pipeline.errors import ConfigError, UserError
from pipeline.transport.channel import Channel
from pipeline.transport.zmq_keys import load_curve
from pipeline.wire import HEADER_CAP, Message, WireError, decode, encode, MAX_TENSORS

LINGER_MS = 1000           # close() flushes a last "stop" for up to 1 s, never forever
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2000
ZAP_DOMAIN = "ffpipe"
IPC_PATH_MAX = 107         # sockaddr_un.sun_path on Linux, less the NUL


def endpoint_for(net_cfg, hop_index: int, n_stages: int) -> str:
    """Receiver endpoint of hop `hop_index`: 0..K-1 are the stages, K is the sink, K+1 the
    source's feedback inbox (hard negatives: the sink sends the scores back there)."""
    if not 0 <= hop_index <= n_stages + 1:
        raise ValueError(f"hop {hop_index} out of range 0..{n_stages + 1}")
    if net_cfg.endpoints:
        if len(net_cfg.endpoints) not in (n_stages + 1, n_stages + 2):
            raise ConfigError(f"net.endpoints: give one per receiver ({n_stages} stages + "
                              f"sink = {n_stages + 1}, and the source's feedback inbox last "
                              f"with hard negatives), got {len(net_cfg.endpoints)}")
        if hop_index >= len(net_cfg.endpoints):
            raise ConfigError(f"net.endpoints: hard negatives need the source's feedback "
                              f"inbox as entry {n_stages + 2}")
        return net_cfg.endpoints[hop_index]
    if net_cfg.ipc_dir:
        return f"ipc://{net_cfg.ipc_dir}/hop{hop_index}.sock"
    return f"tcp://{net_cfg.host}:{net_cfg.base_port + hop_index + 1}"


def _check_endpoint(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if len(path.encode()) > IPC_PATH_MAX:
            raise ConfigError(f"ipc endpoint {endpoint}: path longer than {IPC_PATH_MAX} "
                              f"bytes; choose a shorter net.ipc_dir")
    elif not endpoint.startswith("tcp://"):
        raise ConfigError(f"endpoint {endpoint!r}: use tcp://HOST:PORT or ipc:///PATH")


class _OnlyClientKey:
    """ZAP credentials provider: accept exactly one CURVE client public key."""

    def __init__(self, client_public: bytes):
        self.client_public = client_public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.client_public


class ZmqChannel(Channel):
    """One end of one zmq hop. Build it with `ZmqChannel.receiver` or `ZmqChannel.sender`."""

    def __init__(self, endpoint: str, *, role: str, hwm: int, max_bytes: int,
                 curve=None, linger_ms: int = LINGER_MS):
        super().__init__()
        _check_endpoint(endpoint)
        self.endpoint, self.role, self.max_bytes = endpoint, role, max_bytes
        self.linger_ms = linger_ms
        self._in_flight: collections.deque = collections.deque()  # (tracker, tensors)
        self._auth = None
        self.ctx = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.PULL if role == "recv" else zmq.PUSH)
        try:
            self._configure(hwm, curve)
            if role == "recv":
                self._bind(endpoint)
            else:
                self.sock.connect(endpoint)
        except BaseException:
            self.close()
            raise
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN if role == "recv" else zmq.POLLOUT)

    @classmethod
    def receiver(cls, endpoint: str, *, hwm: int, max_bytes: int, curve=None) -> ZmqChannel:
        """Bind a PULL socket at `endpoint` (downstream end of a hop)."""
        return cls(endpoint, role="recv", hwm=hwm, max_bytes=max_bytes, curve=curve)

    @classmethod
    def sender(cls, endpoint: str, *, hwm: int, max_bytes: int, curve=None) -> ZmqChannel:
        """Connect a PUSH socket to `endpoint` (upstream end of a hop)."""
        return cls(endpoint, role="send", hwm=hwm, max_bytes=max_bytes, curve=curve)

    def _configure(self, hwm: int, curve) -> None:
        s = self.sock
        s.sndhwm = s.rcvhwm = hwm
        s.setsockopt(zmq.MAXMSGSIZE, self.max_bytes + HEADER_CAP)
        s.linger = self.linger_ms
        s.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
        s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
        if not curve:
            return
        keys = load_curve(curve, "server" if self.role == "recv" else "client")
        s.curve_publickey, s.curve_secretkey = keys.public, keys.secret
        if self.role == "recv":
            # Without a ZAP handler libzmq would let any CURVE client in; the
            # authenticator makes the receiver accept only the client key.
            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            self._auth.configure_curve_callback(ZAP_DOMAIN, _OnlyClientKey(keys.peer_public))
            s.zap_domain = ZAP_DOMAIN.encode()
            s.curve_server = True
        else:
            s.curve_serverkey = keys.peer_public

    def _bind(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            Path(endpoint[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise UserError(f"cannot listen on {endpoint}: {exc.strerror}; is another run "
                            f"using it? change net.base_port or net.ipc_dir") from None

    # -- sending ------------------------------------------------------------------------

    def send(self, msg: Message, timeout: float | None = None) -> bool:
        frames = encode(self.stamp(msg))
        parts, tracked = [frames[0]], []
        for buf in frames[1:]:
            if len(buf) >= self.sock.copy_threshold:  # smaller ones pyzmq copies anyway
                buf = zmq.Frame(buf, copy=False, track=True)
                tracked.append(buf)
            parts.append(buf)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int(
                (deadline - time.monotonic()) * 1000))
            if self.poller.poll(wait_ms):
                try:
                    self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:  # lost a race for the last slot: poll again
                    pass
            if deadline is not None and time.monotonic() >= deadline:
                self._next_seq -= 1  # not sent: give the sequence number back
                self.sent -= 1
                return False
        self._prune()
        if tracked:
            self._in_flight.append((zmq.MessageTracker(*tracked), msg.tensors))
        return True

    def _prune(self) -> None:
        while self._in_flight and self._in_flight[0][0].done:
            self._in_flight.popleft()

    def in_flight(self) -> int:
        """Zero-copy messages libzmq still holds (their tensors must not be written)."""
        self._prune()
        return len(self._in_flight)

    def wait_sent(self, timeout: float | None = None) -> bool:
        """Wait until libzmq has released every zero-copy buffer; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.in_flight():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    # -- receiving ----------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int(
                (deadline - time.monotonic()) * 1000))
            if not self.poller.poll(wait_ms):
                if deadline is None or time.monotonic() >= deadline:
                    return None
                continue
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            try:
                if len(frames) > MAX_TENSORS + 1:
                    raise WireError(f"{len(frames)} frames; at most {MAX_TENSORS + 1}")
                # Header as bytes; tensor frames as read-only views of libzmq's buffers.
                msg = decode([frames[0].bytes] + [f.buffer for f in frames[1:]],
                             self.max_bytes)
            except WireError as exc:
                self.reject(str(exc))
                continue
            return self.account(msg)

    def finish(self, timeout: float) -> None:
        """The last messages (final evaluation, stop) may still sit in zmq's queue while
        downstream works through its backlog: close will wait up to `timeout` for them."""
        self.linger_ms = int(timeout * 1000)

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close(linger=self.linger_ms)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.ctx.term()  # returns once linger has flushed or expired
