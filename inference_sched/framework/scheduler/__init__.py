"""The scheduler: one pool's scheduling cycle, its batches, and building it from a config.

* :mod:`~inference_sched.framework.scheduler.cycle`: :class:`Scheduler`, the cycle of
  one request (GIE's ``Scheduler.Schedule`` and the Director's steps around it,
  ``gateway-api-inference-extension: pkg/epp/scheduling/scheduler.go`` and
  ``pkg/epp/requestcontrol/director.go``) and the response hooks;
* :mod:`~inference_sched.framework.scheduler.batch`: ``schedule_batch``, shared and
  joint; :mod:`~inference_sched.framework.scheduler.joint`: the joint assignment
  (:class:`JointCost`);
* :mod:`~inference_sched.framework.scheduler.build`: the plugins of an
  ``EndpointPickerConfig`` built and wired (``Scheduler.from_config``).

docs/architecture.md describes the cycle and the batches.
"""

from __future__ import annotations

from inference_sched.framework.scheduler.build import ConfigSource
from inference_sched.framework.scheduler.cycle import Scheduler
from inference_sched.framework.scheduler.joint import JointCost

__all__ = ["ConfigSource", "JointCost", "Scheduler"]
