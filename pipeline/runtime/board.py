"""Version boards: where each stage publishes its current version (number of updates),
so a downstream stage can tell how stale an input is:

    staleness_j = (stage j's version now) - (stage j's version stamped in the message)

`SharedBoard` (local transport) is a shared-memory array: exact. `StoreBoard` (zmq and
dist) publishes through a torch.distributed key-value store every few updates, so its
staleness is accurate to that interval. Without a board, staleness is measured from the
stamps alone (newest stamp seen minus this message's stamp): a lower bound.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def publish_interval(log_every: int) -> int:
    """Stage updates between two store publications (and cached reads) of a StoreBoard:
    four per log interval keeps store traffic far below the message rate."""
    return max(1, log_every // 4)


class StampBoard:
    """No shared state: the newest stamp seen for each upstream stands in for 'now'."""

    def __init__(self) -> None:
        self.newest: dict[int, int] = {}

    def publish(self, k: int, version: int) -> None:
        pass

    def observe(self, versions: list[int]) -> None:
        for j, v in enumerate(versions):
            self.newest[j] = max(self.newest.get(j, 0), v)

    def current(self, j: int) -> int:
        return self.newest.get(j, 0)

    @property
    def exact(self) -> bool:
        """Staleness measured against the upstream stages' real versions (False: from the
        stamps alone, a lower bound)."""
        return False

    def staleness(self, versions: list[int]) -> list[int]:
        self.observe(versions)
        return [max(self.current(j) - v, 0) for j, v in enumerate(versions)]


class SharedBoard(StampBoard):
    def __init__(self, array) -> None:
        super().__init__()
        self.array = array  # multiprocessing.Array('q', K, lock=False)

    exact = True

    def publish(self, k: int, version: int) -> None:
        self.array[k] = version

    def current(self, j: int) -> int:
        return max(self.array[j], self.newest.get(j, 0))


class StoreBoard(StampBoard):
    """Versions through a c10d Store (TCPStore): one set per `every` updates, reads cached
    for `every` calls. Store errors (peer restarting) fall back to stamps, logged once."""

    def __init__(self, store, every: int = 10) -> None:
        super().__init__()
        self.store, self.every = store, max(every, 1)
        self.cache: dict[int, int] = {}
        self.calls = 0
        self.broken = store is None  # not connected (yet): stamps only
        self.dialling: threading.Thread | None = None  # connect_later's thread

    @classmethod
    def connect_later(cls, connect, every: int = 10) -> "StoreBoard":
        """A board whose store is dialled in a background thread, so a store that is
        slow to come up (or never does) never holds up training."""
        board = cls(None, every)

        def dial():
            try:
                board.store = connect()
                board.broken = False
            except Exception as exc:
                log.warning("version store unreachable (%s); staleness from stamps", exc)

        board.dialling = threading.Thread(target=dial, name="version-store", daemon=True)
        board.dialling.start()
        return board

    def close(self, wait: float) -> bool:
        """Drop the store client; False if it is still being dialled after `wait` seconds.
        A TCPStore client that interpreter shutdown destroys in the middle of its
        constructor (a run shorter than the dial) aborts the process with "terminate
        called without an active exception": the caller must then leave with os._exit."""
        if self.dialling is not None:
            self.dialling.join(wait)
            if self.dialling.is_alive():
                return False
        self.store, self.broken = None, True
        return True

    @property
    def exact(self) -> bool:
        return not self.broken  # to within `every` updates

    def publish(self, k: int, version: int) -> None:
        if version % self.every == 0 and not self.broken:
            self._guard(lambda: self.store.set(f"ffpipe/version/{k}", str(version)))

    def current(self, j: int) -> int:
        if self.calls % self.every == 0 and not self.broken:
            self._guard(lambda: self._refresh(j))
        return max(self.cache.get(j, 0), self.newest.get(j, 0))

    def _refresh(self, j: int) -> None:
        """Read stage j's published version into the cache (0 until it has published)."""
        key = f"ffpipe/version/{j}"
        self.cache[j] = int(self.store.get(key)) if self.store.check([key]) else 0

    def staleness(self, versions: list[int]) -> list[int]:
        self.calls += 1
        return super().staleness(versions)

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # store gone (source restarting): keep training
            self.broken = True
            log.warning("version board unavailable (%s); staleness from stamps only", exc)
