"""Fleet simulator: judge scheduling quality on synthetic workloads and real traces.

A discrete-event simulation of vLLM-like model servers (:mod:`.engine`, :mod:`.kvcache`,
step times from :mod:`.latency`) fed by workloads (:mod:`.workloads`, :mod:`.traces`) and
routed by a real :class:`~inference_sched.framework.scheduler.Scheduler` that sees only what a
gateway's endpoint picker sees: scraped metrics and its own request hooks
(:mod:`.fleet`). :mod:`.report` turns the runs into tables, JSON and plots.
"""
