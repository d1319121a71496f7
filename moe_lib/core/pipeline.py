"""Overlap a trace's host work with the model's forward: stages on threads, bounded queues.

Tracing does three kinds of work per batch: tokenizing (and decoding token strings),
the forward, and writing (dropping padding, concatenating, compressing into Zarr). Run in
series, the host work added about 5 µs a token to an H200's forward (issue 15). Here the
tokenizing runs ahead on one thread (:func:`prefetch`) and the writing behind on another
(:class:`BackgroundSink`), each through a queue of a few batches, so memory stays bounded
by the queues' depths whatever the corpus size. The forward itself releases the GIL, as do
the tokenizers' Rust code, numpy copies and the Zarr codecs, so the threads really overlap.

A failure on either thread is raised in the caller's thread, at its next call or on exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

_DONE = object()  # sentinel: the producer has nothing more
_POLL_S = 0.1  # how often a blocked put or get checks whether the other side has stopped


class _Failure:
    """An exception raised on a worker thread, carried to the caller's thread."""

    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable, depth: int = 2, name: str = "prefetch") -> Iterator:
    """Yield ``items`` as produced on a background thread, at most ``depth`` ahead.

    The producer's own work (e.g. tokenizing the next batches) overlaps the consumer's.
    Closing the iterator early (``break``, an exception in the consumer) stops the thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(_Failure(error))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundSink:
    """Call ``consume(item)`` for every ``put`` item, in order, on one background thread.

    Use as a context manager: on a clean exit every item put is consumed before the block
    ends; on an exception in the block, the items already queued are still consumed (they
    are finished work, e.g. batches whose forward ran) and the exception propagates. An
    exception in ``consume`` stops the consuming and is raised by the next ``put`` or on exit.
    """

    def __init__(self, consume: Callable, depth: int = 4, name: str = "sink"):
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # keep draining so a producer blocked on put wakes up
            try:
                self._consume(item)
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item) -> None:
        """Queue ``item``; blocks while ``depth`` items wait (memory stays bounded)."""
        self._raise_if_failed()
        self._queue.put(item)

    def __enter__(self) -> BackgroundSink:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(_DONE)
        self._thread.join()
        if exc_type is None:
            self._raise_if_failed()
