"""`dist` transport: one hop is point-to-point `torch.distributed` send/recv between ranks.

Launched by `torchrun`, one rank per stage (plus source and sink); joining the job is
`pipeline.processes.dist.init_dist`. A message is a fixed
sequence of sends to the peer rank:

    int64[1] header length  ->  uint8[n] msgpack header  ->  one send per non-empty tensor

The receiver validates the header with `wire.unpack_header` before allocating anything
for the tensors, then allocates each tensor from the validated spec (on `device`) and
receives straight into it: no frames, no extra copy. gloo moves CPU tensors; NCCL needs
every tensor on the rank's GPU, which is what `device` is for.

Two things differ from the byte-stream transports:
- A bad header is fatal (`WireError` is raised, after counting it in `rejected`). The
  receiver cannot know how many tensor sends follow a header it cannot read, so the stream
  cannot be resynchronised; peers are ranks of one job, so this means a bug or mismatched
  versions, not a stranger on the network.
- `torch.distributed` receives have no timeout of their own; the process-group timeout
  (`net.dist_timeout`) bounds a blocking one, and `Work.wait(timeout)` is no way out:
  gloo tears the connection down when it expires. `recv(timeout)` therefore posts an
  `irecv` for the length and polls it; on timeout it returns None and keeps that pending
  receive for the next call (posting a second one would steal the next message's length).
  Once the length is in, the rest of the message follows at once, and is received
  blocking.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from pipeline.transport.channel import Channel
from pipeline.wire import (DTYPES, HEADER_CAP, Message, WireError, encode_header, message_from,
                           unpack_header)

POLL_MIN_S, POLL_MAX_S = 20e-6, 2e-3


class DistChannel(Channel):
    """One end of one hop between this rank and `peer_rank`."""

    def __init__(self, peer_rank: int, *, role: str = "send", max_bytes: int,
                 device="cpu"):
        super().__init__()
        if role not in ("send", "recv"):
            raise ValueError(f"role must be 'send' or 'recv', got {role!r}")
        self.peer, self.role, self.max_bytes = peer_rank, role, max_bytes
        self.device = torch.device(device)
        self._len_buf = None
        self._pending = None  # the irecv of the next length, kept across timed-out recvs

    def send(self, msg: Message, timeout: float | None = None) -> bool:
        """Blocks until the peer has taken the message (no timeout); always True."""
        header = encode_header(self.stamp(msg))  # tensors travel as themselves, below
        length = torch.tensor([len(header)], dtype=torch.int64, device=self.device)
        dist.send(length, self.peer)
        dist.send(torch.frombuffer(bytearray(header), dtype=torch.uint8).to(self.device),
                  self.peer)
        for t in msg.tensors.values():
            if t.numel():  # empty tensors travel in the header alone
                dist.send(t.detach().to(self.device).contiguous(), self.peer)
        return True

    def recv(self, timeout: float | None = None) -> Message | None:
        if self._pending is None:
            self._len_buf = torch.zeros(1, dtype=torch.int64, device=self.device)
            self._pending = dist.irecv(self._len_buf, self.peer)
        if timeout is None:
            self._pending.wait()
        else:
            deadline, nap = time.monotonic() + timeout, POLL_MIN_S
            while not self._length_arrived():
                if time.monotonic() >= deadline:
                    return None
                time.sleep(nap)  # back off: quick when messages stream, cheap when idle
                nap = min(2 * nap, POLL_MAX_S)
            self._pending.wait()  # completes the work (and syncs the stream for NCCL)
        self._pending = None
        n = int(self._len_buf.item())
        if not 0 < n <= HEADER_CAP:
            self._fatal(f"header length {n} outside 1..{HEADER_CAP}")
        raw = torch.empty(n, dtype=torch.uint8, device=self.device)
        dist.recv(raw, self.peer)
        try:
            header = unpack_header(raw.cpu().numpy().tobytes(), self.max_bytes)
        except WireError as exc:
            self._fatal(str(exc))
        tensors = []
        for spec in header["tensors"]:
            t = torch.empty(spec["shape"], dtype=DTYPES[spec["dtype"]], device=self.device)
            if t.numel():
                dist.recv(t, self.peer)
            tensors.append(t)
        return self.account(message_from(header, tensors))

    def _length_arrived(self) -> bool:
        if self._pending.is_completed():  # NCCL: true once the transfer finished
            return True
        # gloo's Work.is_completed() stays False until wait() is called, but gloo receives
        # straight into our CPU tensor, and a valid length is never 0: a non-zero value
        # means the length has arrived (wait() then returns at once).
        return self.device.type == "cpu" and bool(self._len_buf[0] != 0)

    def _fatal(self, reason: str):
        self.reject(reason)
        raise WireError(f"dist stream from rank {self.peer} is out of sync: {reason}")

    def close(self) -> None:
        # A pending irecv cannot be cancelled; destroy_process_group tears it down.
        self._pending = None
