"""Fuzzing the metrics extraction a scrape runs: any page, as the scraper hands it over
(``str``, ``bytes`` or a span of its buffer), gives a sample or a DataError naming the
endpoint and the line, within the budgets; the scraper's own extraction step never
reports an unexpected error."""

from __future__ import annotations

import mmap
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from inference_sched.datalayer import plugins as datalayer_plugins
from inference_sched.datalayer.engines import BUILTIN_ENGINES, ENGINE_LABEL_KEY
from inference_sched.datalayer.parse import EndpointSample, Page, Span, extract
from inference_sched.datalayer.scraper import Scraper
from inference_sched.errors import DataError, InferenceSchedError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.state.endpoint import Endpoint
from inference_sched.state.table import EndpointTable
from tests.fixtures.metrics_pages import vllm_page
from tests.fuzz._budget import fuzz_settings, short_repr, typed_outcome

pytestmark = pytest.mark.fuzz

ENGINES = sorted(BUILTIN_ENGINES)
PAGES = [vllm_page(histograms=False), vllm_page(running_adapters=("a", "b"), histograms=True)]
METRIC_NAMES = sorted({n for spec in BUILTIN_ENGINES.values() for n in spec.metric_names})
_PIECES = st.sampled_from(
    [*'{}=",# \t\n\\:_.+-eE0123456789', "NaN", "+Inf", "-Inf", "# TYPE ", "# HELP ", "\r"]
)
_TEXT = st.lists(
    st.one_of(_PIECES, st.characters(), st.sampled_from(METRIC_NAMES)), max_size=120
).map("".join)


def _check(endpoint: str) -> Any:
    def check(error: Any) -> None:
        assert error.source == endpoint
        assert str(error).startswith(endpoint)

    return check


def _as_page(text: str, kind: str) -> Page:
    """The page as the scraper hands it to the extractor: a ``str``, the received
    ``bytes``, or a span of its mmap arena between other pages' bytes."""
    if kind == "str":
        return text
    data = text.encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return data
    junk = b"vllm:num_requests_waiting 7\n"
    arena = mmap.mmap(-1, len(data) + 2 * len(junk) + 1)
    arena[: len(junk)] = junk
    arena[len(junk) : len(junk) + len(data)] = data
    arena[len(junk) + len(data) : len(data) + 2 * len(junk)] = junk
    return Span(arena, len(junk), len(junk) + len(data))


def _extract(text: str, engine: str, kind: str, full: bool) -> EndpointSample | DataError:
    endpoint = f"fuzz-{engine}"
    page = _as_page(text, kind)
    outcome = typed_outcome(
        lambda: extract(page, engine, endpoint=endpoint, full=full),
        f"extract({short_repr(text)}, {engine!r}, {kind}, full={full})",
        expected=DataError,
        check=_check(endpoint),
    )
    assert isinstance(outcome, EndpointSample | DataError)
    return outcome


_KINDS = st.sampled_from(["str", "bytes", "span"])


@fuzz_settings()
@given(text=_TEXT, engine=st.sampled_from(ENGINES), kind=_KINDS, full=st.booleans())
@example(text="vllm:num_requests_waiting " + "9" * 5000, engine="vllm", kind="bytes", full=False)
@example(text="vllm:num_requests_waiting{" + 'a="b",' * 20000 + "} 1", engine="vllm",
         kind="span", full=False)  # fmt: skip
@example(text="vllm:num_requests_waiting 1\n" * 20000, engine="vllm", kind="bytes", full=True)
def test_arbitrary_pages_give_a_sample_or_data_error(
    text: str, engine: str, kind: str, full: bool
) -> None:
    _extract(text, engine, kind, full)


@st.composite
def _mutated_pages(draw: st.DrawFn) -> str:
    page = draw(st.sampled_from(PAGES))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(page)))
        chunk = draw(st.lists(_PIECES | st.characters(), min_size=1, max_size=8).map("".join))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line"]))
        if kind == "insert":
            page = page[:pos] + chunk + page[pos:]
        elif kind == "delete":
            page = page[:pos] + page[pos + len(chunk) :]
        elif kind == "replace":
            page = page[:pos] + chunk + page[pos + len(chunk) :]
        else:
            start = page.rfind("\n", 0, pos) + 1
            end = page.find("\n", pos)
            line = page[start : end if end >= 0 else len(page)]
            page = page[:start] + line + "\n" + page[start:]
    return page


@fuzz_settings()
@given(page=_mutated_pages(), kind=_KINDS, full=st.booleans())
def test_mutated_vllm_pages_give_a_sample_or_data_error(page: str, kind: str, full: bool) -> None:
    _extract(page, "vllm", kind, full)


# ----------------------------------------------------------------- the scraper's step
@pytest.fixture(scope="module")
def scraper() -> Scraper:
    registry.is_registered("queue-scorer")  # the built-ins first, as the scraper tests do
    table = EndpointTable(clock=lambda: 100.0)
    for engine in ENGINES:
        labels = {} if engine == "vllm" else {ENGINE_LABEL_KEY: engine}
        table.add(Endpoint(f"fuzz-{engine}", "127.0.0.1", 8000, labels=labels))
    handle = PluginHandle(table)
    source = datalayer_plugins.MetricsDataSource(
        "metrics-data-source", datalayer_plugins.MetricsDataSource.Params(), handle
    )
    extractor = datalayer_plugins.CoreMetricsExtractor(
        "core-metrics-extractor", datalayer_plugins.CoreMetricsExtractor.Params(), handle
    )
    return Scraper(table, source, extractor)


@fuzz_settings()
@given(page=st.one_of(_mutated_pages(), _TEXT), engine=st.sampled_from(ENGINES))
def test_the_scrapers_extraction_never_meets_an_unexpected_error(
    scraper: Scraper, page: str, engine: str
) -> None:
    endpoint = scraper.table.get(f"fuzz-{engine}")
    assert endpoint is not None
    handle = scraper.table.handle(endpoint.name)
    body = page.encode("utf-8", "surrogatepass")
    with_budget = typed_outcome(
        # _keep copies the body into the scrape cycle's buffer, as a received page is
        lambda: scraper._extract(scraper._keep(body), handle, endpoint),
        f"scraper extraction of {short_repr(page)}",
        expected=DataError,
    )
    scraper._arena_used = 0  # the cycle ends
    assert not isinstance(with_budget, InferenceSchedError)  # _extract never raises
    assert not with_budget.unexpected, with_budget.error
    assert (with_budget.sample is None) == bool(with_budget.error)
