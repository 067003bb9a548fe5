"""PartialAnswerSaver: when a streaming answer is saved, and that a failed save does not break the answer."""

import asyncio

from assistant.partial_answer import PartialAnswerSaver


class Recorder:
    def __init__(self, fail: bool = False, delay_s: float = 0.0):
        self.saved: list[dict] = []
        self.started_at: list[float] = []  # loop time at which each save began
        self.fail = fail
        self.delay_s = delay_s
        self.text = ""

    def snapshot(self) -> dict:
        return {"output": self.text}

    async def save(self, step: dict) -> None:
        self.started_at.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise OSError("disk full")
        self.saved.append(step)


async def stream(saver: PartialAnswerSaver, recorder: Recorder, tokens: list[str], gap_s: float) -> None:
    for token in tokens:
        recorder.text += token
        saver.streamed()
        await asyncio.sleep(gap_s)


async def test_the_first_save_comes_an_interval_after_the_first_token_not_with_it():
    recorder = Recorder()
    saver = PartialAnswerSaver(recorder.snapshot, recorder.save, interval_s=0.2)
    recorder.text = "First"
    first_token_at = asyncio.get_running_loop().time()
    saver.streamed()
    await asyncio.sleep(0.05)
    assert recorder.saved == []  # nothing written beside the first token

    await stream(saver, recorder, [" a", " b", " c", " d", " e", " f"], gap_s=0.05)
    await saver.finish()
    assert recorder.saved, "nothing was saved while the answer streamed"
    assert recorder.started_at[0] - first_token_at >= 0.2
    assert recorder.saved[0]["output"].startswith("First ") and recorder.text.startswith(recorder.saved[0]["output"])


async def test_saves_at_most_once_per_interval_and_none_after_finish():
    recorder = Recorder()
    saver = PartialAnswerSaver(recorder.snapshot, recorder.save, interval_s=0.1)
    await stream(saver, recorder, [f" w{i}" for i in range(20)], gap_s=0.025)
    await saver.finish()
    assert len(recorder.saved) >= 2
    gaps = [later - earlier for earlier, later in zip(recorder.started_at, recorder.started_at[1:])]
    assert min(gaps) >= 0.1, gaps
    outputs = [step["output"] for step in recorder.saved]
    assert all(later.startswith(earlier) and len(later) > len(earlier) for earlier, later in zip(outputs, outputs[1:]))

    saved = len(recorder.saved)
    await stream(saver, recorder, [" late"] * 5, gap_s=0.03)
    assert len(recorder.saved) == saved  # the final message has replaced the partial one: no more saves


async def test_one_write_at_a_time_and_finish_waits_for_the_one_in_flight():
    recorder = Recorder(delay_s=1.0)  # a slow database
    saver = PartialAnswerSaver(recorder.snapshot, recorder.save, interval_s=0.05)
    await stream(saver, recorder, [f" w{i}" for i in range(8)], gap_s=0.03)
    assert len(recorder.started_at) == 1 and recorder.saved == []  # one write began; none beside it
    await saver.finish()
    assert len(recorder.saved) == 1


async def test_a_failed_save_is_logged_and_the_answer_goes_on(caplog):
    recorder = Recorder(fail=True)
    saver = PartialAnswerSaver(recorder.snapshot, recorder.save, interval_s=0.05)
    await stream(saver, recorder, [f" w{i}" for i in range(6)], gap_s=0.03)
    await saver.finish()
    assert recorder.started_at  # a save was tried
    assert "could not save the partial answer: disk full" in caplog.text
