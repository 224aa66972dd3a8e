"""Context-length routing: ``context-length-aware`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/scorer/contextlength/``;
``docs/plugins/context-length-aware.md``).

Endpoints declare the prompt lengths they are meant for in a ``"min-max"`` label
(``llm-d.ai/context-length-range`` by default). The plugin scores endpoints by how well
the request's token count fits their range and, with ``enableFiltering``, drops those
whose range does not hold it. Labels are parsed once per endpoint whenever the table's
structure changes (``table.version``) into per-row ``min``/``max``/status arrays; each
request costs a few NumPy operations over the candidates.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import TOKENIZED_PROMPT, request_token_ids
from inference_sched.framework.interfaces import Filter, Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, ScorerCategory
from inference_sched.params import ParamCheck, boolean, param
from inference_sched.state.table import EndpointTable

__all__ = ["DEFAULT_LABEL", "ContextLengthAware", "ContextLengthAwareParams", "parse_range"]

DEFAULT_LABEL: Final = "llm-d.ai/context-length-range"
"""The label an endpoint declares its range in, unless ``label`` says otherwise."""

UNLABELED: Final = 0
"""Range status: the endpoint has no such label."""
PARSED: Final = 1
"""Range status: the label parsed as ``min-max``."""
UNPARSABLE: Final = 2
"""Range status: the label is there but is not ``min-max`` with ``0 <= min <= max``."""

_UNLABELED_SCORE: Final = 0.5


def parse_range(value: str) -> tuple[int, int] | None:
    """``"min-max"`` as two ints with ``0 <= min <= max`` (blanks around each trimmed),
    or None."""
    parts = value.split("-")
    if len(parts) != 2:
        return None
    low, high = (p.strip() for p in parts)
    if not (low.isascii() and low.isdigit() and high.isascii() and high.isdigit()):
        return None
    lo, hi = int(low), int(high)
    return (lo, hi) if lo <= hi else None


def _non_empty(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty str", value)


@attrs.frozen
class ContextLengthAwareParams:
    """Parameters of ``context-length-aware`` (llm-d-router)."""

    label: str = param(DEFAULT_LABEL, check=_non_empty)
    """The endpoint label holding the ``"min-max"`` token range."""
    enable_filtering: bool = param(False, alias="enableFiltering", check=boolean)
    """Also filter: drop endpoints whose range does not hold the request's length."""


@attrs.frozen(eq=False)
class _Ranges:
    table: EndpointTable
    version: int
    status: npt.NDArray[np.int8]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]


@register("context-length-aware")
class ContextLengthAware:
    """Fits the request's token count ``L`` to each endpoint's ``min-max`` label.

    Score: unlabeled 0.5; unparsable label 0; ``min <= L <= max``: 1 when the range has
    width 0, else ``0.3 + 0.7 * (0.7 / (1 + width / 10000) + 0.3 * (max - L) / width)``;
    outside the range ``0.3 / (1 + d / 1000)`` with ``d`` the distance to the nearer
    bound. Filter (only with ``enableFiltering``): keeps unlabeled endpoints and those
    whose range holds ``L``.
    """

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    Params = ContextLengthAwareParams
    consumes: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})

    def __init__(self, name: str, params: ContextLengthAwareParams, handle: Handle) -> None:
        self.name = name
        self._label = params.label
        self._filtering = params.enable_filtering
        self._lock = threading.Lock()
        self._cache: _Ranges | None = None

    @staticmethod
    def token_count(cycle: CycleState, request: Request) -> int:
        """``L``: the request's token count (``request_token_ids``), 0 when unknown."""
        ids = request_token_ids(request, cycle)
        return 0 if ids is None else len(ids)

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Unlabeled candidates and those whose range holds ``L``, in order; every
        candidate when ``enableFiltering`` is off."""
        if not self._filtering:
            return candidates
        ranges = self._ranges(table)
        length = float(self.token_count(cycle, request))
        status = ranges.status[candidates]
        inside = (ranges.low[candidates] <= length) & (length <= ranges.high[candidates])
        keep: npt.NDArray[np.bool_] = (status == UNLABELED) | ((status == PARSED) & inside)
        return candidates[keep]

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """The fit of ``L`` to each candidate's range (see the class docstring)."""
        ranges = self._ranges(table)
        length = float(self.token_count(cycle, request))
        status = ranges.status[candidates]
        low = ranges.low[candidates]
        high = ranges.high[candidates]
        width = high - low
        inside = (low <= length) & (length <= high)
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = 0.7 / (1.0 + width / 10000.0) + 0.3 * (high - length) / width
            in_score = np.where(width == 0.0, 1.0, 0.3 + 0.7 * raw)
        distance = np.where(length < low, low - length, length - high)
        out_score = 0.3 / (1.0 + distance / 1000.0)
        parsed = np.where(inside, in_score, out_score)
        scores = np.where(
            status == PARSED, parsed, np.where(status == UNLABELED, _UNLABELED_SCORE, 0.0)
        )
        out[: len(candidates)] = scores

    def _ranges(self, table: EndpointTable) -> _Ranges:
        cache = self._cache
        if cache is not None and cache.table is table and cache.version == table.version:
            return cache
        with self._lock, table.lock:
            version = table.version
            status = np.zeros(table.capacity, dtype=np.int8)
            low = np.zeros(table.capacity, dtype=np.float64)
            high = np.zeros(table.capacity, dtype=np.float64)
            for endpoint in table:
                row = table.row(endpoint.name)
                value = endpoint.labels.get(self._label)
                if value is None:
                    continue
                parsed = parse_range(value)
                if parsed is None:
                    status[row] = UNPARSABLE
                else:
                    status[row] = PARSED
                    low[row], high[row] = parsed
            cache = _Ranges(table, version, status, low, high)
            self._cache = cache
        return cache


_context_filter: type[Filter] = ContextLengthAware
_context_scorer: type[Scorer] = ContextLengthAware
