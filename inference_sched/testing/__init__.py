"""Test helpers for plugin authors: tables, a fake cycle, and a conformance check.

::

    from inference_sched.testing import check_plugin, make_cycle, make_table

    def test_scores_prefer_short_queues() -> None:
        fake = make_cycle(make_table(3, waiting=[0, 4, 9]))
        out = fake.scores()
        MyScorer("s", MyScorer.Params(), None).score(
            fake.cycle, fake.request, fake.table, fake.candidates, out
        )
        assert out[0] > out[2]

    def test_conformance() -> None:
        check_plugin(MyScorer)

:func:`check_plugin` exercises a plugin through every extension-point Protocol it
implements and checks that a scheduler isolates it when it raises (``docs/api.md``,
``docs/plugin-authoring.md``). Importing this package loads the framework but no plugin
family.
"""

from __future__ import annotations

from inference_sched.testing.conformance import (
    CheckReport,
    InjectedFailure,
    check_plugin,
    conformance_table,
)
from inference_sched.testing.cycles import DEFAULT_PROMPT, FakeCycle, make_cycle
from inference_sched.testing.tables import make_table

__all__ = [
    "DEFAULT_PROMPT",
    "CheckReport",
    "FakeCycle",
    "InjectedFailure",
    "check_plugin",
    "conformance_table",
    "make_cycle",
    "make_table",
]
