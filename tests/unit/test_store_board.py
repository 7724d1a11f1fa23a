"""StoreBoard.close: a version-store client still being dialled when a zmq worker ends is
reported (the worker then exits without interpreter shutdown, which would destroy the
half-built TCPStore client under its thread and abort the process), and a connected one
is dropped."""

import threading

import pytest

from pipeline.runtime.board import StoreBoard

pytestmark = pytest.mark.timeout(30)


class FakeStore:
    def __init__(self):
        self.data = {}

    def set(self, key, value):
        self.data[key] = value


def test_close_reports_a_dial_still_in_progress_then_drops_the_connected_store():
    release, store = threading.Event(), FakeStore()

    def connect():
        release.wait()
        return store

    board = StoreBoard.connect_later(connect, every=1)
    assert board.close(wait=0.05) is False  # still dialling
    release.set()
    assert board.close(wait=10) is True
    assert board.store is None and board.broken
    board.publish(0, 5)  # a closed board falls back to stamps, it does not raise
    assert store.data == {}


def test_close_of_a_board_that_never_dialled_is_immediate():
    assert StoreBoard(FakeStore()).close(wait=0) is True
