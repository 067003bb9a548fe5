"""The fair queue in front of a model server: order, limit, positions, expected wait, leaving the line."""

from __future__ import annotations

import asyncio

import pytest

from routing.queue import ServerQueue


async def hold(queue: ServerQueue, name: str, log: list, hold_s: float, statuses: dict | None = None):
    ticket = queue.ticket()
    try:
        async for status in ticket.wait(update_every_s=0.05):
            if statuses is not None:
                statuses.setdefault(name, []).append(status)
        log.append(("start", name, queue.running))
        await asyncio.sleep(hold_s)
        log.append(("end", name))
    finally:
        ticket.release()


async def test_requests_run_one_at_a_time_in_arrival_order():
    queue = ServerQueue(limit=1)
    log: list = []
    await asyncio.gather(*(hold(queue, f"r{i}", log, 0.02) for i in range(5)))
    starts = [entry[1] for entry in log if entry[0] == "start"]
    assert starts == ["r0", "r1", "r2", "r3", "r4"]
    assert all(entry[2] == 1 for entry in log if entry[0] == "start")
    assert queue.max_running_seen == 1 and queue.running == 0 and queue.waiting == 0
    # Each start follows the previous end: never two in flight.
    kinds = [entry[0] for entry in log]
    assert kinds == ["start", "end"] * 5


async def test_limit_two_runs_two_at_once():
    queue = ServerQueue(limit=2)
    log: list = []
    await asyncio.gather(*(hold(queue, f"r{i}", log, 0.05) for i in range(4)))
    assert queue.max_running_seen == 2
    assert [entry[1] for entry in log if entry[0] == "start"][:2] == ["r0", "r1"]


async def test_a_free_slot_admits_at_once_without_status():
    queue = ServerQueue(limit=1)
    ticket = queue.ticket()
    statuses = [s async for s in ticket.wait()]
    assert statuses == [] and ticket.admitted
    ticket.release()
    ticket.release()  # twice is harmless
    assert queue.running == 0


async def test_waiting_request_sees_its_position_at_once_and_as_the_line_moves():
    queue = ServerQueue(limit=1)
    log: list = []
    statuses: dict = {}
    tasks = [asyncio.create_task(hold(queue, f"r{i}", log, 0.1, statuses)) for i in range(4)]
    await asyncio.sleep(0)  # all four have taken a ticket
    await asyncio.gather(*tasks)
    last = statuses["r3"]
    assert last[0].position == 3 and last[0].waiting == 3 and last[0].running == 1
    positions = [s.position for s in last]
    assert positions[0] == 3 and 1 in positions and positions == sorted(positions, reverse=True)
    assert "r0" not in statuses  # the first request never waited


async def test_expected_wait_comes_from_measured_hold_times():
    queue = ServerQueue(limit=1)
    assert queue.expected_wait_s(1) == 0.0 or queue.expected_wait_s(1) is None
    first = queue.ticket()
    await first.acquire()
    second = queue.ticket()
    assert queue.status(second).expected_wait_s is None  # nothing measured yet
    await asyncio.sleep(0.2)
    first.release()  # held ~0.2 s
    await second.acquire()
    third, fourth = queue.ticket(), queue.ticket()
    expected = queue.status(fourth).expected_wait_s
    # second is running (~0.2 s left), third will hold ~0.2 s: about 0.4 s for the fourth.
    assert expected == pytest.approx(0.4, abs=0.1)
    assert queue.status(third).expected_wait_s < expected
    for ticket in (second, third, fourth):
        ticket.release()


async def test_a_cancelled_waiter_leaves_the_line_and_never_gets_a_slot():
    queue = ServerQueue(limit=1)
    log: list = []
    first = asyncio.create_task(hold(queue, "first", log, 0.2))
    await asyncio.sleep(0.01)
    abandoned = asyncio.create_task(hold(queue, "abandoned", log, 0.2))
    third = asyncio.create_task(hold(queue, "third", log, 0.01))
    await asyncio.sleep(0.05)
    assert queue.waiting == 2
    abandoned.cancel()
    await asyncio.sleep(0.01)
    assert queue.waiting == 1
    await asyncio.gather(first, third)
    assert ("start", "abandoned", 1) not in log
    assert [entry[1] for entry in log if entry[0] == "start"] == ["first", "third"]
    assert queue.running == 0 and queue.waiting == 0


async def test_a_request_cancelled_while_running_frees_its_slot():
    queue = ServerQueue(limit=1)
    log: list = []
    running = asyncio.create_task(hold(queue, "running", log, 10))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(hold(queue, "next", log, 0.01))
    await asyncio.sleep(0.01)
    running.cancel()
    await asyncio.wait_for(waiting, 1)
    assert ("start", "next", 1) in log


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        ServerQueue(limit=0)
