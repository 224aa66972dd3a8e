"""Prometheus text exposition → one :class:`EndpointSample` per scrape.

Parsing is prometheus-client's (``prometheus_client.parser``); this module decides *which*
lines it parses and what the values mean, as GIE's metrics extractor does
(kubernetes-sigs/gateway-api-inference-extension,
``pkg/epp/datalayer/metrics/extractor.go``; ``docs/datalayer.md`` has the details):

* among the series matching a selector, the newest wins (largest timestamp; a series
  without one counts as 0; ties keep the first), except LoRA info, where the largest
  *value* wins, since vLLM writes the creation time there;
* a family that is missing leaves its field ``None`` (the caller keeps the previous
  value) and its selector is listed in :attr:`EndpointSample.missing`;
* adapters come from comma lists, trimmed, empty entries dropped.

Speed. prometheus-client parses about 0.4 µs per character in pure Python: 16 ms for a
38 KB vLLM page (``vllm_page`` in ``tests/fixtures/metrics_pages.py``), 300 times the
~50 µs a scrape of one endpoint may cost (256 endpoints every 50 ms in a quarter of a
core). So :func:`extract` reads only the families the engine needs, in two steps. The
*fast path* takes the page as received (``str``, ``bytes`` or a :class:`Span` of the
scraper's buffer), finds each family with one ``find`` (families are contiguous in the
exposition format; the search starts near the family's offset on the endpoint's previous
page) and looks each line up in a cache of parsed lines; a new line reuses a label block
prometheus-client parsed before and reads a lone-number value with ``float``. Anything
else (a new label block, a timestamp, a duplicate, a failed validation) hands the page to
the *careful path*: every line of the families read through prometheus-client, errors
located by line. Measured: 15-35 µs per page on the CI box. ``full=True`` parses the
whole page instead, which also rejects malformed lines in families nobody reads (GIE's
behaviour).

Bad input raises :class:`~inference_sched.errors.DataError` naming the endpoint and,
when it can be found, the line.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from inference_sched.datalayer.engines import BUILTIN_ENGINES, EngineSpec, Selector
from inference_sched.errors import DataError

__all__ = [
    "MAX_LINE_CHARS",
    "EndpointSample",
    "Page",
    "Series",
    "Span",
    "extract",
    "page_text",
    "read_series",
]

MAX_LINE_CHARS: Final = 64 * 1024
"""Longest line accepted (label values this long are not metrics; the parser is
quadratic in escaped quotes)."""

_BOUNDARY: Final = frozenset("{ \t")
_CACHE_MAX_ENTRIES: Final = 8192
_CACHE_MAX_KEY: Final = 2048  # don't pin huge label blocks in memory
_HINT_SLACK: Final = 4096  # characters a family may move up between two pages


def _value_parser() -> Callable[[str], tuple[float, Any]]:
    # prometheus-client's own value/timestamp parser; a private helper, so fall back to
    # parsing a one-sample line through the public API if a release renames it.
    try:
        from prometheus_client.parser import _parse_value_and_timestamp

        return _parse_value_and_timestamp
    except ImportError:  # pragma: no cover - depends on the installed release

        def parse(rest: str) -> tuple[float, Any]:
            families = list(text_string_to_metric_families("x " + rest.strip()))
            if len(families) != 1 or len(families[0].samples) != 1:
                raise ValueError(f"not a value and timestamp: {rest!r}")
            sample = families[0].samples[0]
            if sample.name != "x" or sample.labels:
                raise ValueError(f"not a value and timestamp: {rest!r}")
            return sample.value, sample.timestamp

        return parse


_parse_value_ts: Final = _value_parser()
_Labels = tuple[dict[str, str], frozenset[tuple[str, str]]]
_labels_cache: dict[str, _Labels] = {}
"""Label block text → parsed labels (prometheus-client is slow; label blocks repeat)."""
_line_cache: dict[str, tuple[dict[str, str], frozenset[tuple[str, str]], float, float]] = {}
"""Whole sample line → parsed sample (most lines repeat between scrapes)."""

_offset_hints: dict[tuple[str, str], int] = {}
"""(endpoint, family) → offset of the family on that endpoint's last page."""


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    # Bounded without bookkeeping: clear when full (a cache refills in one scrape cycle).
    if not isinstance(key, str) or len(key) <= _CACHE_MAX_KEY:
        if len(cache) >= _CACHE_MAX_ENTRIES:
            cache.clear()
        cache[key] = value


class Span(NamedTuple):
    """``buffer[start:end]`` without the copy: how the scraper hands over a page it
    received into its reusable buffer (a fresh 40 KB ``bytes`` per page made the
    allocator return and re-fault memory each cycle: ~9 page faults per page). An
    anonymous ``mmap`` slices to ``bytes`` as cheaply as ``bytes`` does, which the line
    cache needs; a ``bytearray`` works too (its lines are copied once more)."""

    buffer: mmap.mmap | bytearray
    start: int
    end: int


Page = str | bytes | bytearray | memoryview | Span
"""A ``/metrics`` body, decoded or as received (UTF-8)."""


class EndpointSample(NamedTuple):
    """What one scrape says about one endpoint; ``None`` = not found (keep the old value)."""

    waiting: float | None = None
    """WaitingQueueSize."""
    running: float | None = None
    """RunningRequestsSize."""
    kv_usage_frac: float | None = None
    """KVCacheUsagePercent, a 0..1 fraction."""
    block_size: int | None = None
    """Tokens per KV block (CacheBlockSize)."""
    num_gpu_blocks: int | None = None
    """KV blocks (CacheNumBlocks)."""
    max_loras: int | None = None
    """MaxActiveModels (``max_lora``)."""
    running_adapters: frozenset[str] | None = None
    """Running LoRA adapters (``None`` when the engine has no LoRA info)."""
    waiting_adapters: frozenset[str] | None = None
    """Waiting LoRA adapters."""
    missing: tuple[str, ...] = ()
    """Configured selectors that matched no series (GIE logs these as errors)."""
    attributes: Mapping[str, float] | None = None
    """The engine's ``customMetrics`` found on the page: attribute key
    (``<attributeKey>/core-metrics-extractor``) → value; ``None`` when it has none."""

    @property
    def is_empty(self) -> bool:
        """No field was found (GIE does not bump ``UpdateTime`` then)."""
        return self[:8] == _NOTHING and not self.attributes


_NOTHING: Final = (None,) * 8


class _Series(NamedTuple):
    labels: Mapping[str, str]
    key: frozenset[tuple[str, str]]
    value: float
    timestamp: float
    offset: int
    """Character offset of the line in the page (line numbers are computed on error)."""


def extract(
    text: Page, spec: EngineSpec | str, *, endpoint: str, full: bool = False
) -> EndpointSample:
    """Read ``spec``'s metrics from a Prometheus text page.

    Args:
        text: the ``/metrics`` body, decoded or as received (UTF-8 bytes: the fast path
            never decodes the whole page).
        spec: the engine mapping, or the name of a built-in engine.
        endpoint: endpoint name for error messages.
        full: parse and validate the whole page (slow: ~0.3 µs per character) instead
            of only the engine's families.

    Raises:
        DataError: malformed lines (in the families read, or anywhere with ``full``), a
            line over :data:`MAX_LINE_CHARS`, the same series twice, NaN / infinite /
            negative counts, a KV usage outside [0, 1], a non-integer block size, block
            count or ``max_lora``.
    """
    engine = BUILTIN_ENGINES[spec] if isinstance(spec, str) else spec
    if not full:
        try:
            if isinstance(text, Span):
                return _fast_sample(text.buffer, engine, endpoint, text.start, text.end)
            return _fast_sample(text, engine, endpoint)
        except _Fallback:
            pass  # anything unusual: the careful path decides (and words the error)
    if isinstance(text, Span):
        text = bytes(text.buffer[text.start : text.end])
    return _careful_sample(text, engine, endpoint, full)


def _careful_sample(
    page: str | bytes | bytearray | memoryview, engine: EngineSpec, endpoint: str, full: bool
) -> EndpointSample:
    """Every line read through prometheus-client's parsers, errors located by line."""
    text = page if isinstance(page, str) else str(page, "utf-8", "replace")
    reader = _Reader(text, endpoint)
    if full:
        families = reader.parse_whole_page()
        reader.collect_all(engine.metric_names)  # lines of the families read, with numbers
        reader.check_duplicates(families)
    return _Fields(reader, engine).sample()


class Series(NamedTuple):
    """One sample line of a family: labels, value, timestamp (0 when absent) and the
    1-based line number."""

    labels: Mapping[str, str]
    value: float
    timestamp: float
    line: int


def page_text(page: Page) -> str:
    """A page as text (UTF-8, undecodable bytes replaced)."""
    if isinstance(page, str):
        return page
    if isinstance(page, Span):
        return str(page.buffer[page.start : page.end], "utf-8", "replace")
    return str(page, "utf-8", "replace")


def read_series(page: Page, name: str, *, endpoint: str) -> list[Series]:
    """Every sample line of family ``name`` (the sample name, as selectors use it), in
    page order; the rest of the page is not parsed. For extractors of other exporters
    than model servers (DCGM, peer EPPs).

    Raises:
        DataError: a malformed line of the family, a line over :data:`MAX_LINE_CHARS`, or
            the same series twice; the message names the endpoint and the line.
    """
    reader = _Reader(page_text(page), endpoint)
    text = reader.text
    return [
        Series(s.labels, s.value, s.timestamp, text.count("\n", 0, s.offset) + 1)
        for s in reader.series(name)
    ]


class _Fallback(DataError):
    """The fast path met something it does not handle; the careful path takes over."""


_INT_BOUNDARY: Final = frozenset(b"{ \t")
"""Bytes that may follow a metric name (ints: what indexing bytes gives)."""
_Parsed = tuple[dict[str, str], frozenset[tuple[str, str]], float, float]
"""A sample line's labels, their set, value and timestamp (0 when absent)."""
_bline_cache: dict[bytes | str, _Parsed] = {}
"""Raw sample line (as received) → parsed sample, for the fast path."""

_INF: Final = math.inf
_NO_ROWS: Final[list[_Parsed]] = []
_plans: dict[tuple[int, bool], tuple[EngineSpec, dict[str, tuple[Any, Any, int]]]] = {}
"""(id(engine), bytes page) → (engine, {family: (name, "\\n" + name, len)}) in the page's type."""
_selector_text: dict[Selector, str] = {}
_adapter_sets: dict[str, frozenset[str]] = {}


def _plan(engine: EngineSpec, is_bytes: bool) -> dict[str, tuple[Any, Any, int]]:
    entry = _plans.get((id(engine), is_bytes))
    if entry is None or entry[0] is not engine:
        names: dict[str, tuple[Any, Any, int]] = {}
        for name in engine.metric_names:
            key: Any = name.encode() if is_bytes else name
            names[name] = (key, (b"\n" if is_bytes else "\n") + key, len(key))
        entry = (engine, names)
        _remember(_plans, (id(engine), is_bytes), entry)
    return entry[1]


def _fast_sample(
    page: str | bytes | bytearray | memoryview | mmap.mmap,
    engine: EngineSpec,
    endpoint: str,
    lo: int = 0,
    hi: int | None = None,
) -> EndpointSample:
    """The common case in as few Python steps as possible, straight from the page as
    received (``str``, ``bytes``, or ``page[lo:hi]`` of a ``bytearray`` the scraper
    fills and reuses); :class:`_Fallback` for anything else.

    Each family is found with one ``find`` from near its offset on this endpoint's last
    page; its lines are taken raw, and a line is parsed only when its text is new (the
    value of a changed line goes through ``float`` when it is a lone number: what
    prometheus-client does then). Anything unusual (a malformed or duplicate line, a
    label block not parsed before, a family at the very start of the page, a timestamp,
    a value that fails validation) raises :class:`_Fallback`, and the careful path
    redoes the page, so results and errors are the careful path's (a property test
    compares the two paths on generated pages).
    """
    buf: Any = bytes(page) if isinstance(page, memoryview) else page
    if hi is None:
        hi = len(buf)
    is_text = isinstance(buf, str)
    copy_lines = isinstance(buf, bytearray)  # its slices are unhashable bytearrays
    # (an mmap's slices are bytes; it has no startswith, hence the slice compares)
    plan = _plan(engine, not is_text)
    nl: Any = "\n" if is_text else b"\n"
    boundary = _BOUNDARY if is_text else _INT_BOUNDARY  # str[i] is a str, bytes[i] an int
    hints, cache = _offset_hints, _bline_cache

    def group(name: str) -> list[_Parsed]:
        key, needle, n = plan[name]
        hint_key = (endpoint, name)
        hint = hints.get(hint_key, 0)  # relative to lo
        pos = -1
        if hint > _HINT_SLACK:
            pos = buf.find(needle, lo + hint - _HINT_SLACK, hi)
            while pos >= 0 and not (pos + 1 + n < hi and buf[pos + 1 + n] in boundary):
                pos = buf.find(needle, pos + 1, hi)  # a longer name: go on
            if pos >= 0:
                # Started late: this must be the group's first line, not one in its middle.
                prev = buf.rfind(nl, lo, pos) + 1 or lo
                if buf[prev : prev + n] == key and prev + n < hi and buf[prev + n] in boundary:
                    pos = -1
        if pos < 0:
            pos = buf.find(needle, lo, hi)
            while pos >= 0 and not (pos + 1 + n < hi and buf[pos + 1 + n] in boundary):
                pos = buf.find(needle, pos + 1, hi)
            if pos < 0:
                if buf[lo : lo + n] == key:
                    raise _Fallback("family at offset 0")
                return _NO_ROWS
        pos += 1
        if pos - lo != hint:
            _remember(hints, hint_key, pos - lo)
        rows: list[_Parsed] = []
        while True:
            eol = buf.find(nl, pos, hi)
            if eol < 0:
                eol = hi
            line = bytes(buf[pos:eol]) if copy_lines else buf[pos:eol]
            hit = cache.get(line)
            if hit is None:
                hit = _parse_raw_line(line, name)
                _remember(cache, line, hit)
            rows.append(hit)
            pos = eol + 1
            if not (pos + n < hi and buf[pos : pos + n] == key and buf[pos + n] in boundary):
                break
        if len(rows) > 1 and len({r[1] for r in rows}) != len(rows):
            raise _Fallback("duplicate series")
        return rows

    missing: list[str] = []

    def pick(selector: Selector | None, report: bool = True) -> _Parsed | None:
        """The newest matching series (largest timestamp, first on ties)."""
        if selector is None:
            return None
        best: _Parsed | None = None
        wanted = selector.labels
        for row in group(selector.name):
            if (not wanted or selector.matches(row[0])) and (best is None or row[3] > best[3]):
                best = row
        if best is None and report:
            missing.append(_text(selector))
        return best

    def count(selector: Selector | None) -> float | None:
        row = pick(selector)
        if row is None:
            return None
        value = row[2]
        if not 0.0 <= value < _INF:  # NaN fails too
            raise _Fallback("bad count")
        return value

    def int_label(row: _Parsed, label: str, low: int) -> int | None:
        raw = row[0].get(label, "")
        if raw == "":
            return None
        text = raw.strip()
        if not (text.isascii() and text.isdigit()) or int(text) < low:
            raise _Fallback("bad integer label")
        return int(text)

    def int_value(selector: Selector | None, low: int) -> int | None:
        row = pick(selector)
        if row is None:
            return None
        v = row[2]
        if not (low <= v < _INF and v == int(v)):
            raise _Fallback("bad integer")
        return int(v)

    waiting = count(engine.waiting)
    running = count(engine.running)

    kv = pick(engine.kv_usage, report=False)
    if kv is None and engine.kv_usage_fallback is not None:
        kv = pick(engine.kv_usage_fallback, report=False)
    if kv is None and engine.kv_usage is not None:
        missing.append(_text(engine.kv_usage))
    kv_usage = None
    if kv is not None:
        kv_usage = kv[2]
        if not 0.0 <= kv_usage <= 1.0:
            raise _Fallback("bad fraction")

    running_adapters = waiting_adapters = None
    max_loras = None
    lora_selector = engine.lora_info
    if lora_selector is not None:
        lora: _Parsed | None = None
        for row in group(lora_selector.name):
            if lora_selector.labels and not lora_selector.matches(row[0]):
                continue
            if not -_INF < row[2] < _INF:
                raise _Fallback("bad LoRA timestamp")
            if lora is None or row[2] > lora[2]:
                lora = row
        if lora is None:
            missing.append(_text(lora_selector))
        else:
            labels = lora[0]
            running_adapters = _adapter_set(labels.get("running_lora_adapters", ""))
            waiting_adapters = _adapter_set(labels.get("waiting_lora_adapters", ""))
            max_loras = int_label(lora, "max_lora", 0)

    block_size = num_blocks = None
    info = pick(engine.cache_info)
    if info is not None:
        block_size = int_label(info, engine.cache_info_block_size_label, 1)
        num_blocks = int_label(info, engine.cache_info_num_blocks_label, 0)
    if engine.block_size is not None:
        gauge = int_value(engine.block_size, 1)
        if gauge is not None:
            block_size = gauge
    if engine.num_blocks is not None:
        gauge = int_value(engine.num_blocks, 0)
        if gauge is not None:
            num_blocks = gauge
    attributes: dict[str, float] | None = None
    if engine.custom_metrics:
        attributes = {}
        for custom in engine.custom_metrics:
            hit = pick(custom.selector)
            if hit is not None:
                attributes[custom.table_key] = hit[2]
    return EndpointSample(
        waiting,
        running,
        kv_usage,
        block_size,
        num_blocks,
        max_loras,
        running_adapters,
        waiting_adapters,
        tuple(missing),
        attributes,
    )


def _text(selector: Selector) -> str:
    text = _selector_text.get(selector)
    if text is None:
        text = _selector_text[selector] = str(selector)
    return text


def _adapter_set(csv: str) -> frozenset[str]:
    found = _adapter_sets.get(csv)
    if found is None:
        found = _adapters(csv)
        _remember(_adapter_sets, csv, found)
    return found


def _parse_raw_line(raw: str | bytes, name: str) -> _Parsed:
    """Parse one sample line for the fast path; :class:`_Fallback` when in doubt."""
    if len(raw) > MAX_LINE_CHARS:
        raise _Fallback("line too long")
    line = (raw if isinstance(raw, str) else str(raw, "utf-8", "replace")).strip()
    n = len(name)
    rest: str
    if line[n : n + 1] == "{":
        close = line.rfind("}")
        if close < n:
            raise _Fallback("unterminated labels")
        head, rest = line[: close + 1], line[close + 1 :]
    elif line[n : n + 1] in (" ", "\t"):
        head, rest = name, line[n:]
    else:
        raise _Fallback("unusual line")
    labels = _labels_cache.get(head)
    if labels is None:
        raise _Fallback("label block not seen yet")  # the careful path parses and caches it
    value = rest.strip()
    if not value or "_" in value or " " in value or "\t" in value:
        raise _Fallback("not a lone number")  # timestamps, junk: prometheus-client decides
    try:
        number = float(value)
    except ValueError:
        raise _Fallback("bad number") from None
    return labels[0], labels[1], number, 0.0


class _Reader:
    """Finds, parses and locates the lines of one page."""

    def __init__(self, text: str, endpoint: str) -> None:
        self.text = text
        self.endpoint = endpoint
        self._series: dict[str, list[_Series]] = {}

    def series(self, name: str) -> list[_Series]:
        """Samples of ``name`` (found on first use: a fallback family costs nothing
        unless it is needed)."""
        found = self._series.get(name)
        if found is None:
            found = self._series[name] = self.collect_group(name)
        return found

    def error(self, message: str, offset: int | None = None) -> DataError:
        line = 0 if offset is None else self.text.count("\n", 0, offset) + 1
        return DataError(message, source=self.endpoint, line=line)

    # ------------------------------------------------------------- line finding
    def _first(self, name: str) -> int:
        """Offset of the first line that is a sample of ``name``, or -1.

        Scanning a 40 KB page costs ~10 µs per family, so the search starts a little
        before where the family was on this endpoint's previous page (pages of one
        server keep their layout). Starting late is safe: the format keeps a family's
        lines together, so a match after the start is the family's only group unless
        the line before it belongs to the family too (then, and when nothing matches
        from there, the whole page is searched).
        """
        hint_key = (self.endpoint, name)
        hint = _offset_hints.get(hint_key, 0)
        pos = self._find_from(name, max(0, hint - _HINT_SLACK)) if hint else -1
        if pos > 0:
            # Started late: this must be the group's first line, not one in its middle.
            prev = self.text.rfind("\n", 0, pos - 1) + 1
            n = len(name)
            if self.text.startswith(name, prev) and self.text[prev + n : prev + n + 1] in _BOUNDARY:
                pos = -1
        if pos < 0:
            pos = self._find_from(name, 0)
        if pos >= 0 and pos != hint:
            _remember(_offset_hints, hint_key, pos)
        return pos

    def _find_from(self, name: str, start: int) -> int:
        text, n = self.text, len(name)
        if start == 0 and text.startswith(name):
            pos = 0
        else:
            pos = _after_newline(text.find("\n" + name, max(0, start - 1)))
        while pos >= 0 and text[pos + n : pos + n + 1] not in _BOUNDARY:
            pos = _after_newline(text.find("\n" + name, pos))  # a longer name: go on
        return pos

    def collect_group(self, name: str) -> list[_Series]:
        """Samples of ``name`` from its first line to the end of its contiguous group."""
        text, n = self.text, len(name)
        out: list[_Series] = []
        pos = self._first(name)
        while pos >= 0 and text.startswith(name, pos) and text[pos + n : pos + n + 1] in _BOUNDARY:
            end = text.find("\n", pos)
            if end < 0:
                end = len(text)
            out.append(self.parse_line(text[pos:end].strip(), name, pos))
            pos = end + 1 if end < len(text) else -1
        return self._no_duplicates(out)

    def collect_all(self, names: Sequence[str]) -> None:
        """Samples of each name anywhere in the page (lines as prometheus-client sees
        them: stripped)."""
        found: dict[str, list[_Series]] = {name: [] for name in names}
        offset = 0
        for raw in self.text.split("\n"):
            line = raw.strip()
            for name in names:
                if line.startswith(name) and line[len(name) : len(name) + 1] in _BOUNDARY:
                    found[name].append(self.parse_line(line, name, offset))
            offset += len(raw) + 1
        for name, series in found.items():
            self._series[name] = self._no_duplicates(series)

    def _no_duplicates(self, series: list[_Series]) -> list[_Series]:
        if len(series) > 1:
            seen: dict[frozenset[tuple[str, str]], _Series] = {}
            for s in series:
                first = seen.setdefault(s.key, s)
                if first is not s:
                    where = self.text.count("\n", 0, first.offset) + 1
                    raise self.error(f"duplicate series (first on line {where})", s.offset)
        return series

    # ------------------------------------------------------------------ parsing
    def parse_line(self, line: str, name: str, offset: int) -> _Series:
        """Parse one sample line of ``name`` (prometheus-client parses both halves)."""
        if len(line) > MAX_LINE_CHARS:
            raise self.error(
                f"line of {len(line)} characters; the limit is {MAX_LINE_CHARS}", offset
            )
        hit = _line_cache.get(line)
        if hit is not None:
            return _Series(*hit, offset)
        n = len(name)
        brace = line.find("{", n)
        if brace >= 0 and not line[n:brace].strip():
            close = line.rfind("}")  # values never hold '}': the last one ends the labels
            if close < brace:  # unterminated: let the parser say what is wrong
                close = len(line) - 1
            head, rest = line[: close + 1], line[close + 1 :]
        else:
            head, rest = name, line[n:]
        labels = _labels_cache.get(head)
        if labels is None:
            labels = self._parse_head(head, name, offset)
            _remember(_labels_cache, head, labels)
        try:
            value, timestamp = _parse_value_ts(rest)
            value = float(value)
            timestamp = 0.0 if timestamp is None else float(timestamp)
        except Exception as exc:  # the parser raises ValueError, OverflowError, ...
            raise self.error(
                f"malformed sample {_short(line)}: bad value or timestamp {rest.strip()!r}",
                offset,
            ) from exc
        parsed = (labels[0], labels[1], value, timestamp)
        _remember(_line_cache, line, parsed)
        return _Series(*parsed, offset)

    def _parse_head(self, head: str, name: str, offset: int) -> _Labels:
        try:
            families = list(text_string_to_metric_families(head + " 0"))
        except Exception as exc:  # prometheus-client raises ValueError, IndexError, ...
            raise self.error(f"malformed sample {_short(head)}: {exc}", offset) from exc
        samples = [s for f in families for s in f.samples]
        # A head that only parses with the sentinel " 0" read as something else (a value,
        # a timestamp) is not a name and label block.
        if (
            len(samples) != 1
            or samples[0].name != name
            or samples[0].value != 0
            or samples[0].timestamp is not None
        ):
            raise self.error(f"malformed sample {_short(head)}", offset)
        labels = dict(samples[0].labels)
        return labels, frozenset(labels.items())

    def parse_whole_page(self) -> list[Metric]:
        """Parse every line with prometheus-client (``full=True``)."""
        offset = 0
        for raw in self.text.split("\n"):
            if len(raw) > MAX_LINE_CHARS:
                raise self.error(
                    f"line of {len(raw)} characters; the limit is {MAX_LINE_CHARS}", offset
                )
            offset += len(raw) + 1
        try:
            families = list(text_string_to_metric_families(self.text))
        except Exception as exc:  # any parser failure is the page's fault
            raise self.error(f"malformed exposition text: {exc}", self._locate()) from exc
        return families

    def check_duplicates(self, families: list[Metric]) -> None:
        """No series twice anywhere in the page (``full=True``)."""
        seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        for family in families:
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                if key in seen:
                    raise self.error(
                        f"duplicate series {sample.name}{_braces(sample.labels)}",
                        self._second_line_of(key),
                    )
                seen.add(key)

    def _second_line_of(self, key: tuple[str, frozenset[tuple[str, str]]]) -> int | None:
        """Offset of the line that repeats the series ``key`` (for the error's line)."""
        offset, found = 0, 0
        for raw in self.text.split("\n"):
            if raw.startswith(key[0]):
                try:
                    samples = [s for f in text_string_to_metric_families(raw) for s in f.samples]
                except Exception:  # noqa: BLE001 - probing: a line that does not parse
                    samples = []
                if any((s.name, frozenset(s.labels.items())) == key for s in samples):
                    found += 1
                    if found == 2:
                        return offset
            offset += len(raw) + 1
        return None

    def _locate(self) -> int | None:
        """Offset of the first line prometheus-client rejects on its own."""
        offset = 0
        for raw in self.text.split("\n"):
            try:
                list(text_string_to_metric_families(raw))
            except Exception:  # noqa: BLE001 - probing: any failure marks the line
                return offset
            offset += len(raw) + 1
        return None


def _after_newline(pos: int) -> int:
    return pos + 1 if pos >= 0 else -1


def _short(line: str, limit: int = 120) -> str:
    return repr(line if len(line) <= limit else line[: limit - 3] + "...")


def _braces(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class _Fields:
    """Turns the collected series into sample fields, validating what it uses."""

    def __init__(self, reader: _Reader, engine: EngineSpec) -> None:
        self.reader = reader
        self.engine = engine
        self.missing: list[str] = []

    def pick(self, selector: Selector | None, *, report: bool = True) -> _Series | None:
        """The newest matching series (largest timestamp, first on ties)."""
        if selector is None:
            return None
        best: _Series | None = None
        for s in self.reader.series(selector.name):
            if selector.matches(s.labels) and (best is None or s.timestamp > best.timestamp):
                best = s
        if best is None and report:
            self.missing.append(str(selector))
        return best

    def pick_largest_value(self, selector: Selector | None) -> _Series | None:
        """The matching series with the largest value (LoRA info: a creation time)."""
        if selector is None:
            return None
        best: _Series | None = None
        for s in self.reader.series(selector.name):
            if not selector.matches(s.labels):
                continue
            if not math.isfinite(s.value):
                raise self.fail(f"{selector.name}: expected a timestamp value, got {s.value}", s)
            if best is None or s.value > best.value:
                best = s
        if best is None:
            self.missing.append(str(selector))
        return best

    def fail(self, message: str, s: _Series) -> DataError:
        return self.reader.error(message, s.offset)

    def count(self, selector: Selector | None) -> float | None:
        s = self.pick(selector)
        if s is None:
            return None
        if not (math.isfinite(s.value) and s.value >= 0):
            raise self.fail(f"{_name(selector)}: expected a count >= 0, got {s.value}", s)
        return s.value

    def fraction(self, s: _Series | None, selector: Selector | None) -> float | None:
        if s is None:
            return None
        if not (math.isfinite(s.value) and 0.0 <= s.value <= 1.0):
            raise self.fail(f"{_name(selector)}: expected a fraction in [0, 1], got {s.value}", s)
        return s.value

    def int_value(self, selector: Selector | None, low: int) -> int | None:
        s = self.pick(selector)
        if s is None:
            return None
        v = s.value
        if not (math.isfinite(v) and v == int(v) and v >= low):
            raise self.fail(f"{_name(selector)}: expected an integer >= {low}, got {v}", s)
        return int(v)

    def int_label(self, s: _Series, selector: Selector | None, label: str, low: int) -> int | None:
        raw = s.labels.get(label, "")
        if raw == "":
            return None
        text = raw.strip()
        if not (text.isascii() and text.isdigit()) or int(text) < low:
            raise self.fail(
                f"{_name(selector)}: label {label} must be an integer >= {low}, got {_short(raw)}",
                s,
            )
        return int(text)

    def sample(self) -> EndpointSample:
        engine = self.engine
        waiting = self.count(engine.waiting)
        running = self.count(engine.running)

        kv = self.pick(engine.kv_usage, report=False)
        kv_selector = engine.kv_usage
        if kv is None and engine.kv_usage_fallback is not None:
            kv = self.pick(engine.kv_usage_fallback, report=False)
            kv_selector = engine.kv_usage_fallback
        if kv is None and engine.kv_usage is not None:
            self.missing.append(str(engine.kv_usage))
        kv_usage = self.fraction(kv, kv_selector)

        running_adapters = waiting_adapters = None
        max_loras = None
        lora = self.pick_largest_value(engine.lora_info)
        if lora is not None:
            running_adapters = _adapters(lora.labels.get("running_lora_adapters", ""))
            waiting_adapters = _adapters(lora.labels.get("waiting_lora_adapters", ""))
            max_loras = self.int_label(lora, engine.lora_info, "max_lora", 0)

        block_size = num_blocks = None
        info = self.pick(engine.cache_info)
        if info is not None:
            block_size = self.int_label(
                info, engine.cache_info, engine.cache_info_block_size_label, 1
            )
            num_blocks = self.int_label(
                info, engine.cache_info, engine.cache_info_num_blocks_label, 0
            )
        gauge_block_size = self.int_value(engine.block_size, 1)
        gauge_num_blocks = self.int_value(engine.num_blocks, 0)
        attributes: dict[str, float] | None = None
        if engine.custom_metrics:
            attributes = {}
            for custom in engine.custom_metrics:
                found = self.pick(custom.selector)
                if found is not None:
                    attributes[custom.table_key] = found.value
        return EndpointSample(
            waiting=waiting,
            running=running,
            kv_usage_frac=kv_usage,
            block_size=block_size if gauge_block_size is None else gauge_block_size,
            num_gpu_blocks=num_blocks if gauge_num_blocks is None else gauge_num_blocks,
            max_loras=max_loras,
            running_adapters=running_adapters,
            waiting_adapters=waiting_adapters,
            missing=tuple(self.missing),
            attributes=attributes,
        )


def _name(selector: Selector | None) -> str:
    return "?" if selector is None else str(selector)


def _adapters(csv: str) -> frozenset[str]:
    return frozenset(a for a in (part.strip() for part in csv.split(",")) if a)
