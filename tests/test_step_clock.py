"""Chainlit's messages and steps get strictly increasing timestamps without its 1 ms blocking sleep."""

import importlib
import time
from datetime import datetime

import pytest

from assistant import step_clock


@pytest.fixture
async def patched_chainlit(monkeypatch):
    """install() on Chainlit's modules, undone after the test (messages need a Chainlit context, and it a loop)."""
    from chainlit.context import init_http_context

    init_http_context()
    for name in ("chainlit.message", "chainlit.step", "chainlit.emitter"):
        module = importlib.import_module(name)
        for attribute in ("time", "utc_now"):
            if hasattr(module, attribute):
                monkeypatch.setattr(module, attribute, getattr(module, attribute))
    return monkeypatch


async def test_chainlit_blocks_the_event_loop_before_install(patched_chainlit):
    import chainlit as cl

    sleeps = []
    patched_chainlit.setattr(time, "sleep", sleeps.append)
    cl.Message(content="a")
    assert sleeps == [0.001]  # what install() is for: if Chainlit stops sleeping, this module can go


async def test_messages_and_steps_do_not_sleep_after_install(patched_chainlit):
    import chainlit as cl

    assert step_clock.install()
    sleeps = []
    patched_chainlit.setattr(time, "sleep", sleeps.append)
    cl.Message(content="a")
    cl.Step(name="b")
    assert sleeps == []


async def test_timestamps_strictly_increase_in_a_tight_loop(patched_chainlit):
    import chainlit as cl

    step_clock.install()
    made = []
    for n in range(300):
        if n % 2:
            message = cl.Message(content=str(n))
            await message.send()  # a message takes its time when sent; a step when made
            made.append(message)
        else:
            made.append(cl.Step(name=str(n)))
    stamps = [item.created_at for item in made]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(stamp.endswith("Z") for stamp in stamps)
    parsed = [datetime.fromisoformat(stamp[:-1]) for stamp in stamps]
    assert parsed == sorted(parsed) and len(set(parsed)) == len(parsed)


def test_stamps_keep_microseconds_so_strings_sort_like_times():
    # "…:00Z" would sort after "…:00.000001Z"; every stamp carries six fraction digits.
    stamps = [step_clock.increasing_utc_now() for _ in range(2000)]
    assert all(len(stamp.split(".")[-1]) == 7 for stamp in stamps)  # 6 digits and "Z"
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


async def test_install_refuses_when_chainlit_changed(patched_chainlit, caplog):
    step_module = importlib.import_module("chainlit.step")
    patched_chainlit.setattr(step_module, "time", object())
    assert not step_clock.install()
    assert "left in place" in caplog.text
