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


async def test_sources_list_names_cited_attributed_and_dangling_apart(fake):
    fake.script(SMALL, answer("Every employee gets 25 days of paid vacation per year [1]. Rule [9] applies too."))
    probe = finished(await collect(make_pipeline(fake), question=BOTH))
    vacation, expenses = number_of(probe, "handbook.md"), number_of(probe, "expenses.md")
    text = (f"Every employee gets 25 days of paid vacation per year [{vacation}]. "
            f"Receipts are required for any expense above 20 euros. See [9].")
    fake.script(SMALL, answer(text))
    record = finished(await collect(make_pipeline(fake), question=BOTH))

    views = ui.source_views(record)
    line = ui.sources_line(views)
    assert f"Cited sources: [{vacation}] handbook.md" in line
    assert f"[{expenses}]† expenses.md" in line
    assert [(v.number, v.cited_by) for v in views] == [(vacation, "model"), (expenses, "app")]
    assert "none cited" not in line
    props = ui.sources_props(views, "m1", record.dangling)
    assert props["dangling"] == [9]  # named apart under the list, linked to nothing
    shown, _ = ui.render_sources(record, anchor="m1")
    assert f"[{vacation}](#source-m1-{vacation})" in shown and f"[{expenses}](#source-m1-{expenses})" in shown
    assert "See [9]." in shown
    chainlit_context()
    element = ui.sources_element(views, "m1", record.dangling)
    assert element.name == "Sources" and element.display == "inline"  # inline: nothing opens by itself
    assert ui.routing_line(record) == ""  # the small model answered and nothing fired: nothing to add


async def test_no_citation_at_all_lists_the_given_sources(fake):
    fake.script(SMALL, answer("Nothing here matches any of the given texts in a meaningful way at all."))
    record = finished(await collect(make_pipeline(fake)))
    views = ui.source_views(record)
    assert ui.sources_line(views).startswith("Sources given to the model (none cited): ")
    assert len(views) == len(record.sources) and {v.cited_by for v in views} == {"given"}
    shown, _ = ui.render_sources(record, anchor="m1")
    assert "#source-" not in shown  # nothing cited, nothing linked


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
