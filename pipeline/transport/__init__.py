"""Transports: one interface (`channel.Channel`), three implementations (local shared
memory, zmq, dist) plus an in-memory one for tests. Nothing here knows what a stage
does with a message: that is `pipeline.runtime`."""

from pipeline.transport.channel import Channel

__all__ = ["Channel"]
