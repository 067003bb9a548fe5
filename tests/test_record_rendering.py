"""The chat renders the turn's record as it is: cited, attributed and dangling citations apart, the routing
line, and the metrics bar's rate from the answering leg."""

import pytest

import ui
from tests.fake_openai_server import FakeOpenAIServer, Script
from tests.test_pipeline import BOTH, LARGE, SMALL, SURE, answer, collect, finished, make_pipeline, number_of, words


def chainlit_context():
    """Chainlit elements need a context; an HTTP one is what Chainlit builds for its own REST calls."""
    from chainlit.context import init_http_context

    init_http_context()


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as server:
        yield server


async def test_sources_footer_names_cited_attributed_and_dangling_apart(fake):
    fake.script(SMALL, answer("Every employee gets 25 days of paid vacation per year [1]. Rule [9] applies too."))
    probe = finished(await collect(make_pipeline(fake), question=BOTH))
    vacation, expenses = number_of(probe, "handbook.md"), number_of(probe, "expenses.md")
    text = (f"Every employee gets 25 days of paid vacation per year [{vacation}]. "
            f"Receipts are required for any expense above 20 euros. See [9].")
    fake.script(SMALL, answer(text))
    record = finished(await collect(make_pipeline(fake), question=BOTH))

    chainlit_context()
    line, elements = ui.source_elements(record)
    assert f"Cited sources: [{vacation}] handbook.md" in line
    assert f"Attributed by the app" in line and f"[{expenses}] expenses.md†" in line
    assert "Citations that point at no source: [9]" in line
    assert "none cited" not in line
    assert [e.name for e in elements] == [f"[{vacation}] handbook.md", f"[{expenses}] expenses.md"]
    assert all(e.name in line for e in elements)  # Chainlit shows a side element only if its name is in the text
    assert ui.routing_line(record) == ""  # the small model answered and nothing fired: nothing to add


async def test_no_citation_at_all_lists_the_given_sources(fake):
    fake.script(SMALL, answer("Nothing here matches any of the given texts in a meaningful way at all."))
    record = finished(await collect(make_pipeline(fake)))
    chainlit_context()
    line, elements = ui.source_elements(record)
    assert line.startswith("Sources given to the model (none cited): ")
    assert len(elements) == len(record.sources)


async def test_metrics_bar_rate_is_the_answering_legs_when_the_large_model_fails(fake):
    fake.script(SMALL, answer("25 days [1]."))
    fake.script(LARGE, Script(tokens=words("Each employee receives 25 paid vacation days a year."),
                              logprobs=[SURE] * 20, token_delay=0.05, drop_after=5))
    record = finished(await collect(make_pipeline(fake)))
    props = ui.metrics_props(record, session_cost_usd=0.5)
    small, large = record.metrics.legs
    assert props["decode_tokens_per_s"] == small.decode_tokens_per_s != large.decode_tokens_per_s
    assert props["answered_role"] == "small" and props["session_cost_usd"] == 0.5
    assert "failed; the small model's answer is kept" in ui.routing_line(record)
