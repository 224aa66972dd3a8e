"""Fuzzing ``extract``: any text gives a sample or a DataError, never another exception;
valid pages give the values they were built from, in both parsing modes."""

from __future__ import annotations

import math
import mmap

from hypothesis import example, given, settings
from hypothesis import strategies as st

from inference_sched.datalayer import parse
from inference_sched.datalayer.engines import BUILTIN_ENGINES
from inference_sched.datalayer.parse import EndpointSample, extract
from inference_sched.errors import DataError
from tests.fixtures.metrics_pages import vllm_page

ENGINES = sorted(BUILTIN_ENGINES)
BASE_PAGE = vllm_page(histograms=False)

# Characters that matter to the exposition format, plus anything.
_FORMAT_CHARS = st.sampled_from(list('{}=",# \t\n\\:_.+-eE0123456789aNnIf'))
_TEXT = st.text(st.one_of(_FORMAT_CHARS, st.characters()), max_size=400)
_NAMES = st.sampled_from(
    sorted({name for spec in BUILTIN_ENGINES.values() for name in spec.metric_names})
)


def _outcome(text: str, engine: str, full: bool) -> EndpointSample | DataError:
    try:
        sample = extract(text, engine, endpoint="fuzz", full=full)
    except DataError as exc:
        error = exc
    else:
        assert isinstance(sample, EndpointSample)
        return sample
    assert (error.source, error.line >= 0) == ("fuzz", True)
    return error


@settings(max_examples=300)
@given(text=_TEXT, engine=st.sampled_from(ENGINES), full=st.booleans())
@example(text='vllm:num_requests_waiting{a="\\', engine="vllm", full=False)
@example(
    text="vllm:num_requests_waiting 1 99999999999999999999999999e9999", engine="vllm", full=False
)
@example(text="vllm:num_requests_waiting " + "9" * 400, engine="vllm", full=True)
@example(text="vllm:num_requests_waiting{}} 1", engine="vllm", full=False)
def test_arbitrary_text_gives_a_sample_or_data_error(text: str, engine: str, full: bool) -> None:
    _outcome(text, engine, full)


@settings(max_examples=300)
@given(
    name=_NAMES,
    middle=_TEXT,
    engine=st.sampled_from(ENGINES),
    full=st.booleans(),
)
def test_lines_of_read_families_with_garbage(
    name: str, middle: str, engine: str, full: bool
) -> None:
    # Garbage right after a name the engines read reaches the line parser itself.
    _outcome(f"{name}{middle}\n{name} 1\n", engine, full)


@st.composite
def _mutations(draw: st.DrawFn) -> str:
    page = BASE_PAGE
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(page)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.text(_FORMAT_CHARS, min_size=1, max_size=8))
        if kind == "insert":
            page = page[:pos] + chunk + page[pos:]
        elif kind == "delete":
            page = page[:pos] + page[pos + len(chunk) :]
        else:
            page = page[:pos] + chunk + page[pos + len(chunk) :]
    return page


@settings(max_examples=300)
@given(page=_mutations(), full=st.booleans())
def test_mutated_vllm_page_gives_a_sample_or_data_error(page: str, full: bool) -> None:
    _outcome(page, "vllm", full)


_COUNT = st.integers(0, 10_000).map(float) | st.floats(0, 1e6, allow_nan=False)
_ADAPTER = st.text(st.sampled_from("abcxyz-_0123456789"), min_size=1, max_size=6)


@settings(max_examples=150)
@given(
    waiting=_COUNT,
    running=_COUNT,
    kv=st.floats(0, 1),
    block_size=st.integers(1, 1024),
    blocks=st.integers(0, 10**7),
    max_lora=st.integers(0, 64),
    running_adapters=st.lists(_ADAPTER, max_size=4),
    waiting_adapters=st.lists(_ADAPTER, max_size=4),
)
def test_valid_vllm_pages_round_trip_in_both_modes(
    waiting: float,
    running: float,
    kv: float,
    block_size: int,
    blocks: int,
    max_lora: int,
    running_adapters: list[str],
    waiting_adapters: list[str],
) -> None:
    page = vllm_page(
        waiting=waiting,
        running=running,
        kv_usage=kv,
        block_size=block_size,
        num_gpu_blocks=blocks,
        max_lora=max_lora,
        running_adapters=running_adapters,
        waiting_adapters=waiting_adapters,
        histograms=False,
    )
    expected = EndpointSample(
        waiting=waiting,
        running=running,
        kv_usage_frac=kv,
        block_size=block_size,
        num_gpu_blocks=blocks,
        max_loras=max_lora,
        running_adapters=frozenset(running_adapters),
        waiting_adapters=frozenset(waiting_adapters),
    )
    fast = extract(page, "vllm", endpoint="prop")
    assert fast == expected
    assert extract(page, "vllm", endpoint="prop", full=True) == fast


@settings(max_examples=100)
@given(
    series=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 99)),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_newest_timestamp_wins(series: list[tuple[int, int, int]]) -> None:
    page = "".join(
        f'vllm:num_requests_waiting{{model_name="m{k}"}} {v} {ts}\n' for k, ts, v in series
    )
    newest = max(series, key=lambda t: t[1])[1]
    first_newest = next(v for _, ts, v in series if ts == newest)
    for full in (False, True):
        sample = extract(page, "vllm", endpoint="ts", full=full)
        assert sample.waiting == first_newest
        assert not math.isnan(sample.waiting)


# ----------------------------------------------------------------- fast path == careful path
def _careful(page: str, engine: str) -> EndpointSample | str:
    try:
        return parse._careful_sample(page, BUILTIN_ENGINES[engine], "same", False)
    except DataError as exc:
        return str(exc)


def _default(page: parse.Page, engine: str) -> EndpointSample | str:
    try:
        return extract(page, engine, endpoint="same")
    except DataError as exc:
        return str(exc)


@st.composite
def _pages_with_moves(draw: st.DrawFn) -> str:
    """vLLM pages whose families move, repeat, gain timestamps or several series."""
    lines = vllm_page(
        waiting=draw(st.sampled_from([0.0, 1.0, 2.5, -1.0, math.nan])),
        kv_usage=draw(st.sampled_from([0.0, 0.5, 1.0, 1.5])),
        running_adapters=draw(st.sampled_from([(), ("a",), ("a", "b")])),
        histograms=draw(st.booleans()),
    ).split("\n")
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["dup", "move", "ts", "lora", "pad", "drop", "cr", "last"]))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
        elif kind == "ts" and lines[i] and not lines[i].startswith("#"):
            lines[i] += " 1700000000000"
        elif kind == "lora":
            at = next((k for k, ln in enumerate(lines) if ln.startswith("vllm:lora_req")), 0)
            t = draw(st.integers(0, 9))
            lines.insert(
                at + 1, f'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="x{t}"}} {t}'
            )
        elif kind == "last":  # a family read last on the page (no newline after it, maybe)
            at = next((k for k, ln in enumerate(lines) if ln.startswith("vllm:kv_cache")), None)
            if at is not None:
                lines.append(lines.pop(at))
        elif kind == "pad":
            lines.insert(i, "# " + "p" * draw(st.integers(0, 9000)))
        elif kind == "drop":
            lines.pop(i)
        else:
            lines[i] += "\r"
    return "\n".join(lines)


_KV_LINE = b'vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"}'


def _as(kind: str, text: str, junk: bytes) -> parse.Page:
    """The page as str, bytes, or a Span in the middle of a buffer with other bytes
    (a metric line among them) before and after it, as the scraper's buffer holds it."""
    if kind == "str":
        return text
    data = text.encode()
    if kind == "bytes":
        return data
    whole = junk + data + junk
    if kind == "span-mmap":
        buffer: mmap.mmap | bytearray = mmap.mmap(-1, len(whole))
        buffer[:] = whole
    else:
        buffer = bytearray(whole)
    return parse.Span(buffer, len(junk), len(junk) + len(data))


@settings(max_examples=250)
@given(
    pages=st.lists(_pages_with_moves(), min_size=1, max_size=3),
    kind=st.sampled_from(["str", "bytes", "span-bytearray", "span-mmap"]),
    junk=st.sampled_from(
        [b"", b"x", b"5\n", b" 5", b"vllm:num_requests_waiting 7\n", b"\n" + _KV_LINE + b" 0.9\n"]
    ),
    trailing_newline=st.booleans(),
)
def test_fast_path_equals_careful_path(
    pages: list[str], kind: str, junk: bytes, trailing_newline: bool
) -> None:
    # One endpoint name throughout: offsets remembered from one page meet the next.
    for text in pages:
        text = text if trailing_newline else text.rstrip("\n")
        expected = _careful(text, "vllm")
        page = _as(kind, text, junk)
        assert _default(page, "vllm") == expected
        assert _default(page, "vllm") == expected  # caches warm
