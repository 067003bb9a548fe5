"""A fair queue in front of one model server: at most ``limit`` requests in flight, the rest wait in order.

llama.cpp's server (and Foundry Local on a CPU) answers one request at a time: requests sent at
once queue inside the server, invisibly, and one abandoned by its client still holds the server
until its prompt is read. Here they wait in the app instead, where a waiting chat can be told its
place and the expected wait, and a chat that stops waiting leaves without reaching the server.

    ticket = queue.ticket()
    try:
        async for status in ticket.wait(update_every_s=1.0):
            show(status)                  # position, requests ahead, expected wait
        ...send the request...            # the slot is held from here
    finally:
        ticket.release()                  # frees the slot, or leaves the line if still waiting

The expected wait comes from how long recent requests held a slot (a moving average).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

# Weight of the newest hold time in the moving average: recent requests say most about the next ones.
_AVERAGE_WEIGHT = 0.3


@dataclass(frozen=True)
class QueueStatus:
    position: int  # 1 = next to be admitted
    waiting: int  # requests waiting, this one included
    running: int  # requests holding a slot
    limit: int
    expected_wait_s: float | None  # None until a request has finished (nothing to estimate from)


class Ticket:
    """One request's place in a :class:`ServerQueue`."""

    def __init__(self, queue: "ServerQueue"):
        self._queue = queue
        self._admitted = asyncio.Event()
        self.admitted_at: float | None = None
        self.released = False
        self.enqueued_at = time.perf_counter()

    @property
    def admitted(self) -> bool:
        return self._admitted.is_set()

    @property
    def waited_s(self) -> float:
        end = self.admitted_at if self.admitted_at is not None else time.perf_counter()
        return end - self.enqueued_at

    async def wait(self, update_every_s: float = 1.0) -> AsyncIterator[QueueStatus]:
        """Yield this ticket's status at once if it must wait, then every ``update_every_s`` seconds and
        whenever the line moves, until it holds a slot. Yields nothing when a slot is free.

        Cancelling the waiting task (the user pressed stop) leaves the line: :meth:`release` in a
        ``finally`` is still needed to free the slot once admitted.
        """
        last: QueueStatus | None = None
        last_sent = 0.0
        while not self.admitted:
            status = self._queue.status(self)
            now = time.perf_counter()
            if status != last or now - last_sent >= update_every_s:
                last, last_sent = status, now
                yield status
                if self.admitted:
                    break
            waiters = {asyncio.ensure_future(self._queue._changed.wait()), asyncio.ensure_future(self._admitted.wait())}
            try:
                await asyncio.wait(
                    waiters,
                    timeout=max(update_every_s - (time.perf_counter() - last_sent), 0.05),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def acquire(self) -> None:
        """Wait for a slot without status updates."""
        async for _ in self.wait(update_every_s=3600):
            pass

    def release(self) -> None:
        """Free the slot (admitted) or leave the line (still waiting). Safe to call twice."""
        if self.released:
            return
        self.released = True
        self._queue._release(self)


class ServerQueue:
    def __init__(self, limit: int = 1, *, initial_hold_s: float | None = None):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.average_hold_s = initial_hold_s
        self.completed = 0
        self._waiting: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._changed = asyncio.Event()
        self.max_running_seen = 0

    def ticket(self) -> Ticket:
        ticket = Ticket(self)
        self._waiting.append(ticket)
        self._admit()
        return ticket

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def status(self, ticket: Ticket) -> QueueStatus:
        if ticket.admitted:
            position = 0
        else:
            position = self._waiting.index(ticket) + 1
        return QueueStatus(
            position=position,
            waiting=len(self._waiting),
            running=len(self._running),
            limit=self.limit,
            expected_wait_s=self.expected_wait_s(position),
        )

    def expected_wait_s(self, position: int) -> float | None:
        """When the ``position``-th waiting request should get a slot: each running request is assumed to
        hold its slot for the average time (at least a little longer than it has so far), each request
        ahead for the average time, slots freeing in order."""
        if position <= 0:
            return 0.0
        if self.average_hold_s is None:
            return None
        average = self.average_hold_s
        now = time.perf_counter()
        free_at = [max(average - (now - t.admitted_at), 0.1 * average) for t in self._running]
        free_at += [0.0] * (self.limit - len(free_at))
        heapq.heapify(free_at)
        for _ in range(position - 1):
            heapq.heappush(free_at, heapq.heappop(free_at) + average)
        return free_at[0]

    def _admit(self) -> None:
        moved = False
        while self._waiting and len(self._running) < self.limit:
            ticket = self._waiting.popleft()
            ticket.admitted_at = time.perf_counter()
            self._running.append(ticket)
            ticket._admitted.set()
            moved = True
        self.max_running_seen = max(self.max_running_seen, len(self._running))
        if moved:
            self._notify()

    def _release(self, ticket: Ticket) -> None:
        if ticket in self._running:
            self._running.remove(ticket)
            held = time.perf_counter() - ticket.admitted_at
            self.completed += 1
            if self.average_hold_s is None:
                self.average_hold_s = held
            else:
                self.average_hold_s += _AVERAGE_WEIGHT * (held - self.average_hold_s)
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        self._notify()
        self._admit()

    def _notify(self) -> None:
        # Wake every waiter (their positions changed), then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
