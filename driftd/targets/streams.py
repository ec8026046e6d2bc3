"""Event streams that reconnect with backoff: the loop every event source shares.

Pipeline position: the trigger side of the pipeline.  An adapter's event source (the
Kubernetes pod watch and the Docker events stream) runs :meth:`Reconnecting.run`
in its own thread; what it does with each event is only ``queue.add(key)``, through the
adapter's ``consume`` callback.

May touch: nothing but the callbacks it is given and ``stop``; it imports no client
library and knows no adapter.  The adapter supplies how to open a stream (including any
relist or resume point), how to consume one, and how to report reachability.

The loop: open a stream, register it (so :meth:`Reconnecting.close` from another thread
unblocks a pending read), report the endpoint up, reset the backoff, consume it until it
ends.  An error reports the endpoint down and waits ``backoff`` (doubling up to
``max_backoff``) unless ``stop`` is set, or ``at_once(error)`` says the error only asks for
a fresh open (a Kubernetes 410: resume point too old, relist now).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Closeable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closeable)


def _never(error: Exception) -> bool:
    return False


class StreamEnded(ConnectionError):
    """A stream that is expected to run forever ended (``end_is_error``)."""


class Reconnecting(Generic[S]):
    """One event stream kept open across failures; :attr:`current` is the stream being read."""

    def __init__(self) -> None:
        self.current: S | None = None

    def run(self, open_stream: Callable[[], S], consume: Callable[[S], None], stop: threading.Event, *,
            on_up: Callable[[], None], on_down: Callable[[Exception], None],
            at_once: Callable[[Exception], bool] = _never, end_is_error: bool = False,
            max_backoff: float = 30.0, initial_backoff: float = 1.0) -> None:
        """Open, consume and reopen streams until ``stop`` is set.

        ``consume(stream)`` returns when the stream ended, ``stop`` is set, or it wants a fresh
        open; with ``end_is_error`` an end while not stopping counts as a failure (backoff).
        """
        backoff = initial_backoff
        while not stop.is_set():
            try:
                stream = open_stream()
                self.current = stream
                if stop.is_set():  # close() ran before the stream was registered
                    stream.close()
                    break
                on_up()
                backoff = initial_backoff
                consume(stream)
                if end_is_error and not stop.is_set():
                    raise StreamEnded("event stream ended")
            except Exception as e:
                if at_once(e):
                    continue
                if stop.is_set():
                    break
                on_down(e)
                stop.wait(backoff)
                backoff = min(max_backoff, backoff * 2)

    def close(self) -> None:
        """Unblock the read of the current stream (best effort; the loop then sees ``stop``)."""
        stream = self.current
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
