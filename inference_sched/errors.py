"""Errors raised by inference-sched.

Every error derives from :class:`InferenceSchedError`; each branch also derives from the
builtin a caller already catches, so ``except ValueError`` keeps working::

    InferenceSchedError
    ├── ConfigError(ValueError)          .path, .value
    │   ├── UnknownPluginTypeError       .plugin_type, .suggestions
    │   └── ParameterError               (a plugin parameter failed its check)
    ├── PluginError                      .plugin_type, .plugin_name
    │   ├── PluginRegistrationError      (class rejected at register time)
    │   └── PluginLoadError              (entry point failed to import; .distribution)
    ├── NoEndpointError(LookupError)     .profile, .filter  (which filter emptied the set)
    ├── SchedulingError(RuntimeError)    .profile_errors (every profile failed)
    ├── RequestShedError(RuntimeError)   .priority, .saturation, .detector (HTTP 429)
    ├── AdmissionDeniedError(RuntimeError) .priority, .admitter, .reason   (HTTP 500)
    ├── DataError(ValueError)            .source, .line     (metrics text, events, traces)
    ├── ParseError(ValueError)           .field, .parser    (a parser refused a request: 400)
    └── state.redis.Unavailable          (Redis did not answer: the caller uses local state)

Context lives in attributes as well as in the message, so callers can branch on it
without parsing text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar, Final

__all__ = [
    "AdmissionDeniedError",
    "ConfigError",
    "DataError",
    "InferenceSchedError",
    "NoEndpointError",
    "ParameterError",
    "ParseError",
    "PluginError",
    "PluginLoadError",
    "PluginRegistrationError",
    "RequestShedError",
    "SchedulingError",
    "UnknownPluginTypeError",
    "redact",
]

_MISSING = object()

_CREDENTIALS: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/@\s:]*):[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL replaced by
    ``***``: what errors, logs and the printed effective config show of a Redis address."""
    return _CREDENTIALS.sub(r"\1:***@", text)


class InferenceSchedError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(InferenceSchedError, ValueError):
    """A configuration is invalid.

    Attributes:
        path: GIE-style path of the offending field, e.g. ``plugins[3].parameters.blockSize``
            (empty for whole-document problems).
        value: the offending value when there is one.
        errors: every problem found when several were collected (else ``[self]``).
    """

    def __init__(self, message: str, *, path: str = "", value: object = _MISSING) -> None:
        self.path = path
        self.value = None if value is _MISSING else value
        self.message = message
        self.errors: list[ConfigError] = [self]
        super().__init__(f"{path}: {message}" if path else message)


class UnknownPluginTypeError(ConfigError):
    """A config names a plugin type that no built-in or installed plugin registers."""

    def __init__(self, plugin_type: str, suggestions: list[str], *, path: str = "") -> None:
        self.plugin_type = plugin_type
        self.suggestions = suggestions
        hint = f" (did you mean {_quote_or(suggestions)}?)" if suggestions else ""
        super().__init__(
            f"unknown plugin type {plugin_type!r}{hint}; "
            "run `inference-sched plugins` to list the registered types",
            path=path,
            value=plugin_type,
        )


class ParameterError(ConfigError):
    """A plugin parameter failed its check (wrong type, out of range, unknown key)."""


class PluginError(InferenceSchedError):
    """A plugin class or instance misbehaved.

    Attributes:
        plugin_type: the plugin's registered type (kebab-case).
        plugin_name: the instance name, when an instance is involved.
    """

    def __init__(self, message: str, *, plugin_type: str = "", plugin_name: str = "") -> None:
        self.plugin_type = plugin_type
        self.plugin_name = plugin_name
        super().__init__(message)


class PluginRegistrationError(PluginError):
    """``@register`` rejected a class (bad type string, duplicate, no Protocol satisfied)."""


class PluginLoadError(PluginError):
    """A third-party plugin's entry point failed to import or named the wrong class.

    Attributes:
        distribution: ``name version`` of the distribution that declared the entry point.
    """

    def __init__(self, message: str, *, plugin_type: str, distribution: str) -> None:
        self.distribution = distribution
        super().__init__(message, plugin_type=plugin_type)


class NoEndpointError(InferenceSchedError, LookupError):
    """A profile ended with no candidate endpoint.

    Attributes:
        profile: the profile's name (``""`` when there were no candidates at all).
        filter: name of the filter that emptied the candidate set, or ``""`` when the
            set was empty before any filter ran (empty pool or gateway subset).
        screened: the screeners (llm-d-router ``Screener``) removed every candidate.
    """

    http_status: ClassVar[int] = 503
    """What GIE answers when ``schedule`` raises it with no candidates at all
    (``ServiceUnavailable``)."""

    def __init__(self, profile: str, filter: str = "", *, screened: bool = False) -> None:
        self.profile = profile
        self.filter = filter
        self.screened = screened
        if screened:
            message = "screeners eliminated all endpoint candidates"
        elif not profile:
            message = "no candidate endpoints: the pool (or the gateway's subset) is empty"
        elif filter:
            message = f"profile {profile!r}: filter {filter!r} removed every candidate"
        else:
            message = f"profile {profile!r}: no candidate endpoints"
        super().__init__(message)


class SchedulingError(InferenceSchedError, RuntimeError):
    """No profile produced a result, or the profile handler rejected the results.

    Attributes:
        profile_errors: the error of each profile that failed, by profile name.
    """

    http_status: ClassVar[int] = 429
    """What GIE answers (``ResourceExhausted``: every profile failed, or the handler
    rejected the results)."""

    def __init__(self, message: str, profile_errors: Mapping[str, Exception] | None = None) -> None:
        self.profile_errors = dict(profile_errors or {})
        super().__init__(message)


class RequestShedError(InferenceSchedError, RuntimeError):
    """A sheddable request (priority < 0) was rejected because the pool is saturated.

    GIE's legacy admission: ``ResourceExhausted``, which the gateway answers with HTTP
    429 (``http_status``). Raised before any profile runs; retrying later may succeed.

    Attributes:
        priority: the request's priority (negative).
        saturation: what the detector reported (``>= 1.0``).
        detector: name of the saturation detector instance.
    """

    http_status: ClassVar[int] = 429
    """The HTTP status GIE answers with (ResourceExhausted)."""

    def __init__(self, *, priority: int, saturation: float, detector: str) -> None:
        self.priority = priority
        self.saturation = saturation
        self.detector = detector
        super().__init__(
            f"system saturated, sheddable request dropped: priority {priority} < 0 and "
            f"saturation {saturation:.3g} >= 1 (detector {detector!r})"
        )


class AdmissionDeniedError(InferenceSchedError, RuntimeError):
    """An admission plugin (GIE ``Admitter``, e.g. ``latency-slo-admitter``) denied the
    request after the data producers ran and before any profile.

    GIE's Director answers an admitter's denial with HTTP 500 (``http_status``). Not a
    scheduling attempt: the scheduler counts it in ``denied`` only.

    Attributes:
        priority: the request's priority.
        admitter: name of the admission plugin instance.
        reason: why it denied.
    """

    http_status: ClassVar[int] = 500
    """The HTTP status GIE answers with (an admitter's error)."""

    def __init__(self, *, priority: int, admitter: str, reason: str) -> None:
        self.priority = priority
        self.admitter = admitter
        self.reason = reason
        super().__init__(f"request denied by admitter {admitter!r} (priority {priority}): {reason}")


class DataError(InferenceSchedError, ValueError):
    """Input data (metrics text, KV events, traces, request bodies) is malformed.

    Attributes:
        source: where the data came from (an endpoint name, a file path).
        line: 1-based line number, or 0 when not line-oriented.
    """

    def __init__(self, message: str, *, source: str = "", line: int = 0) -> None:
        self.source = source
        self.line = line
        where = source + (f":{line}" if line else "")
        super().__init__(f"{where}: {message}" if where else message)


class ParseError(InferenceSchedError, ValueError):
    """A request parser refused a request: its path has no parser, or its body does not
    have the shape the parser's API needs (llm-d-router answers 400, ``docs/parsers.md``).

    Attributes:
        field: the offending field (``messages``, ``prompt[2]``, ``body``, ``path``).
        parser: the parser instance's name (empty when no parser was resolved).
    """

    http_status: ClassVar[int] = 400
    """What llm-d-router answers (``BadRequest``)."""

    def __init__(self, field: str, problem: str, *, parser: str = "") -> None:
        self.field = field
        self.parser = parser
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


def _quote_or(words: list[str]) -> str:
    quoted = [repr(w) for w in words]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
