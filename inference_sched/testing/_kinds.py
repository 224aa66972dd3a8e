"""The direct call of each extension point, for :func:`~inference_sched.testing.check_plugin`.

:class:`KindChecks` is the half of the conformance checker that calls a plugin's
methods itself, on a :class:`~inference_sched.testing.FakeCycle`, and checks what they
return or write against the Protocols of :mod:`inference_sched.framework.interfaces`; the
other half (:mod:`inference_sched.testing.conformance`) builds the scheduler, runs it and
checks isolation.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt

from inference_sched.errors import AdmissionDeniedError, DataError, ParseError
from inference_sched.framework import registry
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Endpoint, ProfileRunResult, Request, SchedulingResult
from inference_sched.state.table import EndpointTable
from inference_sched.testing.cycles import DEFAULT_PROMPT, FakeCycle, make_cycle
from inference_sched.testing.tables import make_table

__all__ = ["SCORER_CATEGORIES", "KindChecks", "fail_check"]

SCORER_CATEGORIES: Final = ("Affinity", "Distribution", "Balance")

_VLLM_PAGE: Final = (
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{model_name="m"} 3\n'
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{model_name="m"} 2\n'
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1\n'
)


def fail_check(plugin_type: str, message: str) -> NoReturn:
    """Raise the AssertionError of a failed check."""
    raise AssertionError(f"check_plugin({plugin_type!r}): {message}")


class KindChecks:
    """Calls each extension point directly (mixed into the conformance checker)."""

    plugin_type: str
    """The plugin type under test."""
    cls: type[Any]
    kinds: tuple[str, ...]
    table: EndpointTable
    scheduler: Scheduler | None
    """Built with the plugin; its other producers feed the direct calls."""
    instance: Any
    """The instance the scheduler holds."""
    checked: list[str]

    def fail(self, kind: str, message: str) -> NoReturn:
        fail_check(self.plugin_type, f"{kind}: {message}" if kind else message)

    def call(self, kind: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; an exception becomes an AssertionError naming the call."""
        try:
            return fn(*args)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            self.fail(kind, f"{what} raised {type(exc).__name__}: {exc}")

    # ............................................................ inputs
    def request(self, i: int = 0, *, priority: int = 0) -> Request:
        """Request ``i``: three variants in turn (a prompt; a prompt with its token ids
        and SLO headers; a completions body), two prompts sharing a long prefix."""
        text = f"{DEFAULT_PROMPT} (variant {i % 2})"
        prompt = text.encode()
        headers = {"x-session-id": "conformance-session"}
        variant = i % 3
        if variant == 1:
            headers |= {"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "50"}
        return Request.create(
            "m",
            prompt=prompt,
            token_ids=np.frombuffer(prompt, dtype=np.uint8) if variant == 1 else None,
            headers=headers,
            request_id=f"conformance-{self.plugin_type}-{i}-p{priority}",
            priority=priority,
            body={"model": "m", "prompt": text} if variant == 2 else None,
        )

    def fake(self, i: int = 0) -> FakeCycle:
        return make_cycle(self.table, self.request(i), seed=i)

    def prepare(self, fake: FakeCycle, consumes: frozenset[str] | set[str]) -> None:
        """Run the scheduler's other producers of the keys a plugin consumes (and of
        their own inputs), each after the producers of what it consumes."""
        assert self.scheduler is not None
        producers = [
            p
            for p in self.scheduler.plugins.values()
            if p is not self.instance and "data-producer" in registry.kinds_of(type(p))
        ]
        wanted = set(consumes)
        for _ in range(len(producers)):  # the inputs of the inputs
            for producer in producers:
                if wanted & set(producer.produces):
                    wanted |= set(producer.consumes)
        pending = [p for p in producers if wanted & set(p.produces)]
        while pending:
            ready = [
                p
                for p in pending
                if not any(set(p.consumes) & set(q.produces) for q in pending if q is not p)
            ] or pending  # a cycle (the loader refuses them): config order
            for producer in ready:
                with contextlib.suppress(Exception):  # not the plugin under test
                    producer.prepare_request_data(
                        fake.cycle, fake.request, fake.table, fake.candidates
                    )
            pending = [p for p in pending if p not in ready]

    # ............................................................ kinds
    def exercise_scorer(self, kind: str) -> None:
        category = getattr(self.cls, "category", None)
        if category not in SCORER_CATEGORIES:
            self.fail(kind, f"category is {category!r}, not one of {SCORER_CATEGORIES}")
        for i, size in enumerate((None, 1)):
            fake = self.fake(i)
            self.prepare(fake, getattr(self.instance, "consumes", frozenset()))
            candidates = fake.candidates if size is None else fake.candidates[:size]
            before = candidates.copy()
            # NaN, not the zeros the scheduler hands over: an entry left unwritten shows.
            out = np.full(len(candidates), np.nan, dtype=np.float32)
            self.call(
                kind,
                "score()",
                self.instance.score,
                fake.cycle,
                fake.request,
                fake.table,
                candidates,
                out,
            )
            _unchanged(self, kind, "score()", before, candidates)
            if np.isnan(out).any():
                rows = candidates[np.isnan(out)].tolist()
                self.fail(
                    kind,
                    f"score() left out[i] unwritten (or NaN) for rows {rows}: write a finite "
                    "score in [0, 1] for every candidate",
                )
            bad = ~np.isfinite(out) | (out < 0.0) | (out > 1.0)
            if bad.any():
                self.fail(
                    kind,
                    f"score() wrote {out[bad].tolist()} for rows {candidates[bad].tolist()}: "
                    "scores must be finite and in [0, 1]",
                )
        self.checked.append("scorer: a finite score in [0, 1] for every candidate (4 and 1)")

    def exercise_filter(self, kind: str) -> None:
        for i, size in enumerate((None, 1)):
            fake = self.fake(i)
            self.prepare(fake, getattr(self.instance, "consumes", frozenset()))
            candidates = fake.candidates if size is None else fake.candidates[:size]
            before = candidates.copy()
            kept = self.call(
                kind,
                "filter()",
                self.instance.filter,
                fake.cycle,
                fake.request,
                fake.table,
                candidates,
            )
            _unchanged(self, kind, "filter()", before, candidates)
            rows = np.asarray(kept)
            if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
                self.fail(kind, f"filter() returned {kept!r}: expected a 1-D int array of rows")
            if not _is_ordered_subset(rows.tolist(), before.tolist()):
                self.fail(
                    kind,
                    f"filter() returned rows {rows.tolist()} from {before.tolist()}: expected "
                    "a subset of its input, in the same order",
                )
        self.checked.append("filter: an ordered int subset of its input (4 and 1 candidates)")

    def exercise_picker(self, kind: str) -> None:
        for i, size in enumerate((None, 1)):
            fake = self.fake(i)
            candidates = fake.candidates if size is None else fake.candidates[:size]
            before = candidates.copy()
            scores = np.random.default_rng(i).uniform(0.0, 3.0, len(candidates))
            scores = scores.astype(np.float32)
            positions = self.call(
                kind,
                "pick()",
                self.instance.pick,
                fake.cycle,
                fake.request,
                candidates,
                scores,
            )
            _unchanged(self, kind, "pick()", before, candidates)
            ranked = np.asarray(positions)
            n = len(candidates)
            if ranked.ndim != 1 or ranked.size == 0 or ranked.dtype.kind not in "iu":
                self.fail(kind, f"pick() returned {positions!r}: expected non-empty int positions")
            listed = ranked.tolist()
            if len(set(listed)) != len(listed) or min(listed) < 0 or max(listed) >= n:
                self.fail(
                    kind,
                    f"pick() returned positions {listed}: expected distinct positions into "
                    f"the {n} candidates (not rows), best first",
                )
        self.checked.append("picker: distinct positions into the candidates (4 and 1)")

    def exercise_data_producer(self, kind: str) -> None:
        produces = getattr(self.cls, "produces", None)
        consumes = getattr(self.cls, "consumes", None)
        for attribute, value in (("produces", produces), ("consumes", consumes)):
            if not isinstance(value, frozenset) or not all(isinstance(k, str) for k in value):
                self.fail(kind, f"{attribute} must be a frozenset of data keys, got {value!r}")
        assert isinstance(produces, frozenset)
        assert isinstance(consumes, frozenset)
        if not produces:
            self.fail(kind, "produces is empty: declare the keys it writes to the cycle")
        missing: list[str] = []
        for i in range(3):  # the request variants: one of them must get every key
            fake = self.fake(i)
            self.prepare(fake, consumes)
            self.call(
                kind,
                "prepare_request_data()",
                self.instance.prepare_request_data,
                fake.cycle,
                fake.request,
                fake.table,
                fake.candidates,
            )
            missing = sorted(k for k in produces if k not in fake.cycle)
            if not missing:
                break
        if missing:
            self.fail(
                kind,
                f"prepare_request_data() did not write {missing} to the cycle for any of "
                "three requests (prompt; prompt, token ids and SLO headers; completions body)",
            )
        self.checked.append(f"data-producer: writes {sorted(produces)} to the cycle")

    def exercise_pre_request(self, kind: str) -> None:
        # The whole lifecycle is one exercise: its hooks hold state from one to the next.
        self.lifecycle(kind)

    def exercise_deferred_work(self, kind: str) -> None:
        self.lifecycle(kind)

    def exercise_response_received(self, kind: str) -> None:
        self.lifecycle(kind)

    def exercise_response_streaming(self, kind: str) -> None:
        self.lifecycle(kind)

    def exercise_response_complete(self, kind: str) -> None:
        self.lifecycle(kind)

    def lifecycle(self, kind: str) -> None:
        if any(c.startswith("lifecycle:") for c in self.checked):
            return
        fake = self.fake()
        self.prepare(fake, getattr(self.instance, "consumes", frozenset()))
        result = fake.result()
        steps: list[tuple[str, Callable[[], Any]]] = []
        p, req = self.instance, fake.request
        if "pre-request" in self.kinds:
            steps.append(("pre_request()", lambda: p.pre_request(fake.cycle, req, result)))
        if "deferred-work" in self.kinds:
            steps.append(("run_deferred()", p.run_deferred))
        if "response-received" in self.kinds:
            response = fake.response()
            steps.append(
                ("response_received()", lambda: p.response_received(req, response, result))
            )
        if "response-streaming" in self.kinds:
            first, last = fake.response(start=True), fake.response(end=True)
            steps.append(("response_streaming()", lambda: p.response_streaming(req, first, result)))
            steps.append(("response_streaming()", lambda: p.response_streaming(req, last, result)))
        if "response-complete" in self.kinds:
            done = fake.response(end=True)
            steps.append(("response_complete()", lambda: p.response_complete(req, done, result)))
        for what, step in steps:
            self.call(kind, what, step)
        names = [what for what, _ in steps]
        self.checked.append(f"lifecycle: {' -> '.join(names)} on one request")

    def exercise_profile_handler(self, kind: str) -> None:
        assert self.scheduler is not None
        fake = self.fake()
        profiles = self.scheduler.profiles
        results: dict[str, ProfileRunResult | None] = {}
        for _ in range(2 * len(profiles) + 1):
            chosen = self.call(
                kind,
                "pick_profiles()",
                self.instance.pick_profiles,
                fake.cycle,
                fake.request,
                profiles,
                dict(results),
            )
            if not isinstance(chosen, Mapping):
                self.fail(kind, f"pick_profiles() returned {chosen!r}, not a mapping")
            if not chosen:
                break
            for name, chose in chosen.items():
                profile = profiles.get(name)
                if profile is None or profile is not chose:
                    self.fail(kind, f"pick_profiles() chose {name!r}, not a configured profile")
                try:  # as the scheduler runs it: a failed profile is a None result
                    run = profile.run(fake.cycle, fake.request, fake.table, fake.candidates)
                except Exception:  # noqa: BLE001 - the handler must cope, not us
                    run = None
                results[name] = run
        else:
            self.fail(kind, "pick_profiles() never returned an empty mapping (it must stop)")
        if not results:
            self.fail(kind, f"pick_profiles() chose no profile among {sorted(profiles)}")
        answer = self.call(
            kind,
            "process_results()",
            self.instance.process_results,
            fake.cycle,
            fake.request,
            results,
        )
        if not isinstance(answer, SchedulingResult):
            self.fail(kind, f"process_results() returned {answer!r}, not a SchedulingResult")
        primary = answer.profile_results.get(answer.primary_profile_name)
        if primary is None or not primary.endpoints:
            self.fail(
                kind,
                f"process_results() made {answer.primary_profile_name!r} primary, which did "
                "not run or found no endpoint",
            )
        self.checked.append(
            f"profile-handler: picks {sorted(results)} until it stops, then a primary result"
        )

    def exercise_decider(self, kind: str) -> None:
        fake = self.fake()
        self.prepare(fake, getattr(self.instance, "consumes", frozenset()))
        decode = fake.result(profile="decode").primary
        answer = self.call(kind, "decide()", self.instance.decide, fake.cycle, fake.request, decode)
        if not isinstance(answer, bool | np.bool_):
            self.fail(kind, f"decide() returned {answer!r}, not a bool")
        self.checked.append("decider: answers a bool")

    def exercise_saturation_detector(self, kind: str) -> None:
        fake = self.fake()
        now = fake.table.clock()
        empty = np.empty(0, dtype=np.int32)
        for what, rows in (("the pool", fake.candidates), ("no candidates", empty)):
            value = self.call(kind, "saturation()", self.instance.saturation, fake.table, rows, now)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(float(value))
                or value < 0
            ):
                self.fail(kind, f"saturation() over {what} is {value!r}: expected a finite >= 0")
        self.checked.append("saturation-detector: a finite number >= 0 (pool and empty)")

    def exercise_admitter(self, kind: str) -> None:
        fake = self.fake(1)
        self.prepare(fake, getattr(self.instance, "consumes", frozenset()))
        try:
            answer = self.instance.admit_request(
                fake.cycle, fake.request, fake.table, fake.candidates
            )
        except AdmissionDeniedError:
            answer = None
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            self.fail(
                kind,
                f"admit_request() raised {type(exc).__name__}: {exc} (deny with "
                "AdmissionDeniedError; anything else is a bug)",
            )
        if answer is not None:
            self.fail(kind, f"admit_request() returned {answer!r}: return None to admit")
        self.checked.append("admitter: admits (None) or denies with AdmissionDeniedError")

    def exercise_data_source(self, kind: str) -> None:
        for endpoint in self.table:
            url = self.call(kind, "url_for()", self.instance.url_for, endpoint)
            parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                self.fail(kind, f"url_for({endpoint.name}) is {url!r}: expected an http(s) URL")
        self.checked.append("data-source: an http(s) URL for every endpoint")

    def exercise_extractor(self, kind: str) -> None:
        endpoint = next(iter(self.table))
        as_bytes = bool(getattr(self.instance, "accepts_bytes", False))
        for page, malformed in ((_VLLM_PAGE, False), ('vllm:num_requests_waiting{ 3 "\n', True)):
            text: Any = page.encode() if as_bytes else page
            try:
                self.instance.extract(text, endpoint)
            except DataError as exc:
                if not malformed:
                    self.fail(kind, f"extract() rejected a vLLM page: {exc}")
            except Exception as exc:  # noqa: BLE001 - reported as the check's failure
                which = "a malformed page" if malformed else "a vLLM page"
                self.fail(
                    kind,
                    f"extract() on {which} raised {type(exc).__name__}: {exc} (raise DataError "
                    "for a bad page)",
                )
        self.checked.append("extractor: reads a vLLM page; a malformed one is a DataError")

    def exercise_screener(self, kind: str) -> None:
        for i, size in enumerate((None, 1)):
            fake = self.fake(i)
            candidates = fake.candidates if size is None else fake.candidates[:size]
            before = candidates.copy()
            kept = self.call(
                kind,
                "screen()",
                self.instance.screen,
                fake.cycle,
                fake.request,
                fake.table,
                candidates,
            )
            _unchanged(self, kind, "screen()", before, candidates)
            rows = np.asarray(kept)
            if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
                self.fail(kind, f"screen() returned {kept!r}: expected a 1-D int array of rows")
            if not set(rows.tolist()) <= set(before.tolist()):
                self.fail(
                    kind,
                    f"screen() returned rows {rows.tolist()} from {before.tolist()}: expected "
                    "a subset of its input",
                )
        self.checked.append("screener: an int subset of its input (4 and 1 candidates)")

    def exercise_attribute_extractor(self, kind: str) -> None:
        endpoint = next(iter(self.table))
        for page in (_VLLM_PAGE, b"\x00{not a page"):
            try:
                found = self.instance.extract_attributes(page, endpoint)
            except DataError:
                continue
            except Exception as exc:  # noqa: BLE001 - reported as the check's failure
                self.fail(
                    kind,
                    f"extract_attributes() raised {type(exc).__name__}: {exc} (raise "
                    "DataError for a page it cannot read)",
                )
            if not isinstance(found, Mapping) or not all(isinstance(k, str) for k in found):
                self.fail(kind, f"extract_attributes() returned {found!r}: expected a Mapping")
        self.checked.append("attribute-extractor: a str-keyed Mapping, or DataError")

    def exercise_endpoint_extractor(self, kind: str) -> None:
        for endpoint in self.table:
            found = self.call(kind, "extract_endpoint()", self.instance.extract_endpoint, endpoint)
            if not isinstance(found, Mapping) or not all(isinstance(k, str) for k in found):
                self.fail(kind, f"extract_endpoint() returned {found!r}: expected a Mapping")
        self.checked.append("endpoint-extractor: a str-keyed Mapping for every endpoint")

    def exercise_notification_source(self, kind: str) -> None:
        # Attach to a private table: the plugin's events must not reach the check's table.
        self.call(kind, "attach()", self.instance.attach, make_table(2), [])
        for method in ("close", "stop"):
            stop = getattr(self.instance, method, None)
            if callable(stop):
                self.call(kind, f"{method}()", stop)
                break
        self.checked.append("notification-source: attaches to a table")

    def exercise_endpoint_discovery(self, kind: str) -> None:
        found = self.call(kind, "endpoints()", self.instance.endpoints)
        if not isinstance(found, list) or not all(isinstance(e, Endpoint) for e in found):
            self.fail(kind, f"endpoints() returned {found!r}: expected a list of Endpoint")
        names = [e.name for e in found]
        if names != sorted(names):
            self.fail(kind, f"endpoints() returned {names}: expected them sorted by name")
        self.checked.append("endpoint-discovery: a sorted list of Endpoint")

    def exercise_parser(self, kind: str) -> None:
        claims = self.call(kind, "claims()", self.instance.claims)
        if not isinstance(claims, tuple) or not all(isinstance(c, str) for c in claims):
            self.fail(kind, f"claims() returned {claims!r}: expected a tuple of path suffixes")
        path = "/v1/" + claims[0] if claims else "/v1/completions"
        chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}'
        parsed = None
        for body in (chat, b"\x00{not json", b"[]"):
            try:
                result = self.instance.parse_request(path, {}, body)
            except ParseError:
                continue
            except Exception as exc:  # noqa: BLE001 - reported as the check's failure
                self.fail(
                    kind,
                    f"parse_request() raised {type(exc).__name__}: {exc} (raise ParseError "
                    "for a body it cannot read)",
                )
            parsed = parsed or result
        if parsed is not None and not parsed.skip_response_processing:
            usage = self.call(
                kind, "new_response_parser()", self.instance.new_response_parser, parsed
            )
            feed = functools.partial(usage.feed, end_of_stream=True)
            self.call(kind, "feed()", feed, b"\x00 not a response")
        self.checked.append("parser: claims, parse_request raises only ParseError")


def _unchanged(
    checker: KindChecks,
    kind: str,
    what: str,
    before: npt.NDArray[np.int32],
    after: npt.NDArray[np.int32],
) -> None:
    if not np.array_equal(before, after):
        checker.fail(kind, f"{what} modified its candidates array (it is shared: copy first)")


def _is_ordered_subset(rows: list[int], candidates: list[int]) -> bool:
    remaining = iter(candidates)
    return all(any(r == c for c in remaining) for r in rows)
