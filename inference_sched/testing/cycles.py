"""A scheduling cycle's inputs without a scheduler: call one plugin method directly."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.types import (
    CycleState,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
    Usage,
)
from inference_sched.state.endpoint import Candidates
from inference_sched.state.table import EndpointTable
from inference_sched.testing.tables import make_table

__all__ = ["DEFAULT_PROMPT", "FakeCycle", "make_cycle"]

DEFAULT_PROMPT = (
    "You are a careful assistant. Answer in one paragraph and cite your sources. " * 6
    + "Question: which endpoint should serve this request?"
)
"""The prompt of :func:`make_cycle`'s request: long enough for several prefix blocks."""


@attrs.frozen(eq=False)
class FakeCycle:
    """What the scheduler hands a plugin in one cycle: the state, request, table, rows.

    ::

        fake = make_cycle(make_table(3, waiting=[0, 4, 9]))
        out = fake.scores()
        scorer.score(fake.cycle, fake.request, fake.table, fake.candidates, out)
    """

    cycle: CycleState
    """The cycle's scratch state (``cycle.rng`` is seeded)."""
    request: Request
    """The request being scheduled."""
    table: EndpointTable
    """The pool's endpoint table."""
    candidates: Candidates
    """int32 rows of the request's candidates (the healthy pool, or its subset hint)."""

    def scores(self) -> npt.NDArray[np.float32]:
        """A zero-filled ``out`` buffer for :meth:`Scorer.score`, one entry per candidate."""
        return np.zeros(len(self.candidates), dtype=np.float32)

    def result(
        self, rows: Sequence[int] | None = None, profile: str = "default"
    ) -> SchedulingResult:
        """A one-profile answer, as PreRequest and response hooks receive it.

        Args:
            rows: the picked rows, best first (the first candidate by default).
            profile: the profile's name (primary).
        """
        picked = tuple(int(r) for r in (self.candidates[:1] if rows is None else rows))
        endpoints = tuple(self.table.endpoint_at(r) for r in picked)
        run = ProfileRunResult(picked, endpoints, tuple(1.0 for _ in picked))
        return SchedulingResult({profile: run}, profile)

    def response(
        self,
        *,
        status_code: int = 200,
        start: bool = False,
        end: bool = False,
        usage: Usage | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """A :class:`Response` to this cycle's request, timed on the table's clock."""
        return Response(
            request_id=self.request.request_id,
            status_code=status_code,
            headers=headers or {},
            is_start_of_stream=start,
            is_end_of_stream=end,
            usage=usage,
            time_s=self.table.clock(),
        )


def make_cycle(
    table: EndpointTable | None = None,
    request: Request | None = None,
    *,
    model: str = "m",
    prompt: str | bytes | None = DEFAULT_PROMPT,
    token_ids: npt.ArrayLike | None = None,
    headers: Mapping[str, str] | None = None,
    priority: int = 0,
    subset: Collection[str] | None = None,
    candidates: npt.ArrayLike | None = None,
    seed: int = 0,
) -> FakeCycle:
    """A fresh cycle over ``table`` for ``request``.

    Args:
        table: the endpoint table (:func:`~inference_sched.testing.make_table`'s four
            endpoints by default).
        request: the request; built from ``model``, ``prompt``, ``token_ids``,
            ``headers``, ``priority`` and ``subset`` (the gateway's hint) when omitted.
        candidates: the rows to offer; the table's candidates for the request's subset
            hint by default, as the scheduler computes them.
        seed: seeds ``cycle.rng``.
    """
    table = make_table() if table is None else table
    if request is None:
        request = Request.create(
            model,
            prompt=prompt,
            token_ids=token_ids,
            headers=headers,
            priority=priority,
            subset_hint=subset,
        )
    rows = (
        table.candidates_for(request.subset_hint)
        if candidates is None
        else np.asarray(candidates, dtype=np.int32)
    )
    cycle = CycleState(np.random.default_rng(seed), table.clock())
    return FakeCycle(cycle, request, table, rows)
