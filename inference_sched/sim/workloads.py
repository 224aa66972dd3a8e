"""Synthetic workloads: the request streams every compared configuration is fed.

Each generator is deterministic for its ``seed`` (one :class:`numpy.random.Generator`,
draws in a fixed order), returns a :class:`Workload` of :class:`SimRequest` sorted by
arrival with ids ``0..n-1``, and takes at least ``rate`` (requests/s), ``duration_s``
(arrivals fall in ``[0, duration_s)``) and ``seed``. The defaults (``docs/simulator/
workloads.md``) give a ~30 s, moderately loaded run for 16 H100 Llama-2-7B servers: about
1,800 requests of ~1.8k prompt tokens whose prefixes are worth routing for.

Block ids (:mod:`.prompts`): a system prompt is a chain from its group's root, so every
prompt of a group shares its *full* system blocks; the block straddling the system/question
boundary and everything after it are chained from the prompt's own key, so they are
unique to that prompt. Ids are scoped by generator name and seed (and LoRA adapter, since
vLLM's prefix cache never shares blocks across adapters).

:func:`load_workload` resolves a registry name (:data:`WORKLOADS`) or ``trace:PATH``
(:mod:`.traces`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import ConfigError
from inference_sched.sim.prompts import chain_ids, mix, mix_array, num_blocks
from inference_sched.sim.types import SIM_BLOCK_TOKENS, SimRequest

__all__ = [
    "DEFAULT_MODEL",
    "WORKLOADS",
    "Length",
    "Workload",
    "bursty",
    "hot_prefix",
    "load_workload",
    "lora_mix",
    "multi_turn_chat",
    "namespace_root",
    "shared_prefix",
]

DEFAULT_MODEL: Final = "meta-llama/Llama-2-7b-hf"
"""The model the latency tables describe (``shared/data/latency``)."""

Length: TypeAlias = int | tuple[int, int]
"""A token count: fixed, or ``(lo, hi)`` drawn uniformly from the integers ``lo..hi``."""

_IdArray: TypeAlias = npt.NDArray[np.int64]

# Default load: 16 servers x ~3.75 req/s, inside the 2-5 req/s a server does at these sizes.
_RATE: Final = 60.0
_DURATION_S: Final = 30.0


@attrs.frozen(eq=False)
class Workload:
    """A request stream, identical for every configuration compared.

    Attributes:
        name: generator name (``shared-prefix`` ...) or ``trace:<file name>``.
        requests: sorted by arrival, ``requests[i].id == i``.
        params: how it was made (generator, every parameter, counts), JSON-ready.
        model: the target model of every request (LoRA requests name an adapter too).
    """

    name: str
    requests: tuple[SimRequest, ...]
    params: dict[str, object]
    model: str = DEFAULT_MODEL

    def __attrs_post_init__(self) -> None:
        previous = -math.inf
        for i, request in enumerate(self.requests):
            if request.id != i or request.arrival_s < previous:
                raise ValueError(f"workload {self.name!r}: requests must be sorted with ids 0..n-1")
            previous = request.arrival_s

    def __len__(self) -> int:
        return len(self.requests)

    def arrivals(self) -> npt.NDArray[np.float64]:
        """Arrival times, seconds (float64, sorted)."""
        return np.array([r.arrival_s for r in self.requests], dtype=np.float64)


# ----------------------------------------------------------------------------- helpers


def namespace_root(name: str, seed: int) -> int:
    """A root id for one generator and seed: ids of different workloads never meet."""
    h = mix(0, seed)
    for byte in name.encode("utf-8"):
        h = mix(h, byte)
    return h


def _readonly(array: _IdArray) -> _IdArray:
    array.flags.writeable = False
    return array


def _segment(parent: int, key: int, count: int) -> _IdArray:
    """``count`` ids chained from ``parent``, each content salted by ``key``."""
    return chain_ids(parent, mix_array(key, np.arange(count, dtype=np.int64)))


def _extend(prefix: _IdArray, root: int, key: int, total_tokens: int) -> _IdArray:
    """``prefix`` followed by fresh ids chained from its last id up to ``total_tokens``."""
    parent = int(prefix[-1]) if prefix.shape[0] else root
    tail = _segment(parent, key, num_blocks(total_tokens) - prefix.shape[0])
    return _readonly(np.concatenate((prefix, tail)))


def _check_length(name: str, spec: Length) -> None:
    if isinstance(spec, tuple):
        lo, hi = spec
        if not 1 <= lo <= hi:
            raise ConfigError(f"expected 1 <= lo <= hi, got {spec!r}", path=name, value=spec)
    elif spec < 1:
        raise ConfigError(f"expected >= 1, got {spec!r}", path=name, value=spec)


def _draw(rng: np.random.Generator, spec: Length, size: int) -> npt.NDArray[np.int64]:
    if isinstance(spec, tuple):
        return rng.integers(spec[0], spec[1] + 1, size=size, dtype=np.int64)
    return np.full(size, spec, dtype=np.int64)


def _ints(rng: np.random.Generator, high: int, size: int) -> npt.NDArray[np.int64]:
    """``size`` integers drawn uniformly from ``0..high-1``."""
    return np.asarray(rng.integers(high, size=size), dtype=np.int64)


def _mean(spec: Length) -> float:
    return (spec[0] + spec[1]) / 2 if isinstance(spec, tuple) else float(spec)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"expected > 0, got {value!r}", path=name, value=value)


def _renewal(
    rng: np.random.Generator,
    unit_gaps: Callable[[int], npt.NDArray[np.float64]],
    rate: float,
    start_s: float,
    end_s: float,
) -> npt.NDArray[np.float64]:
    """Arrivals in ``[start_s, end_s)`` of a renewal process: gaps ``unit_gaps(n) / rate``
    (``unit_gaps`` has mean 1), the first gap counted from ``start_s``."""
    expected = rate * (end_s - start_s)
    chunks: list[npt.NDArray[np.float64]] = []
    t = start_s
    while t < end_s:
        n = int(expected + 6.0 * math.sqrt(expected) + 16)
        times = t + np.cumsum(unit_gaps(n) / rate)
        chunks.append(times)
        t = float(times[-1])
    times = np.concatenate(chunks) if chunks else np.empty(0)
    return times[times < end_s]


def _poisson(
    rng: np.random.Generator, rate: float, start_s: float, end_s: float
) -> npt.NDArray[np.float64]:
    return _renewal(rng, lambda n: rng.exponential(1.0, n), rate, start_s, end_s)


def _gamma_gaps(rng: np.random.Generator, cv: float) -> Callable[[int], npt.NDArray[np.float64]]:
    """Unit-mean Gamma gaps with coefficient of variation ``cv`` (shape ``1/cv**2``)."""
    if cv == 0:
        return lambda n: np.ones(n)
    shape = 1.0 / (cv * cv)
    return lambda n: rng.gamma(shape, 1.0 / shape, n)


def _weibull_gaps(
    rng: np.random.Generator, shape: float
) -> Callable[[int], npt.NDArray[np.float64]]:
    """Unit-mean Weibull gaps of the given shape."""
    mean = math.gamma(1.0 + 1.0 / shape)
    return lambda n: rng.weibull(shape, n) / mean


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _assemble(
    name: str,
    model: str,
    params: dict[str, object],
    arrivals: npt.NDArray[np.float64],
    prompt_tokens: Sequence[int] | npt.NDArray[np.int64],
    output_tokens: Sequence[int] | npt.NDArray[np.int64],
    blocks: Sequence[_IdArray],
    loras: Sequence[str | None] | None = None,
    sessions: Sequence[str | None] | None = None,
) -> Workload:
    """Requests sorted by arrival (stable: ties keep generation order), ids assigned."""
    order = np.argsort(arrivals, kind="stable")
    arrival_list = arrivals.tolist()
    prompt_list = [int(x) for x in prompt_tokens]
    output_list = [int(x) for x in output_tokens]
    requests = tuple(
        SimRequest(
            id=new,
            arrival_s=arrival_list[old],
            prompt_tokens=prompt_list[old],
            output_tokens=output_list[old],
            blocks=blocks[old],
            lora=None if loras is None else loras[old],
            session=None if sessions is None else sessions[old],
        )
        for new, old in enumerate(order.tolist())
    )
    params = {"generator": name, **{k: _jsonable(v) for k, v in params.items()}}
    params["num_requests"] = len(requests)
    return Workload(name=name, requests=requests, params=params, model=model)


class _PrefixPrompts:
    """System prompt + question prompts over groups, built once per distinct prompt.

    Group ``g`` of scope ``s`` has ``system_tokens // 16`` full system blocks chained from
    ``mix(root, s)``; a prompt keyed ``k`` continues them with its own ids. Identical
    keys give the very same (read-only) array, so repeats cost no memory.
    """

    def __init__(self, root: int, system_tokens: int) -> None:
        self.root = root
        self.system_tokens = system_tokens
        self._systems: dict[tuple[int, int], _IdArray] = {}
        self._prompts: dict[tuple[int, int, int], _IdArray] = {}

    def system(self, scope: int, group: int) -> _IdArray:
        ids = self._systems.get((scope, group))
        if ids is None:
            ids = _segment(mix(self.root, scope), group, self.system_tokens // SIM_BLOCK_TOKENS)
            self._systems[scope, group] = _readonly(ids)
        return ids

    def prompt(self, scope: int, group: int, key: int, question_tokens: int) -> _IdArray:
        ids = self._prompts.get((scope, group, key))
        if ids is None:
            system = self.system(scope, group)
            # The key is salted with the group so systems shorter than a block stay apart.
            salt = mix(mix(self.root ^ 1, scope), group)
            ids = _extend(system, salt, mix(salt, key), self.system_tokens + question_tokens)
            self._prompts[scope, group, key] = ids
        return ids


def _shared_prefix_requests(
    rng: np.random.Generator,
    prompts: _PrefixPrompts,
    n: int,
    scopes: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64],
    keys: npt.NDArray[np.int64],
    question_tokens: Length,
    output_tokens: Length,
) -> tuple[list[_IdArray], list[int], npt.NDArray[np.int64]]:
    """Blocks and lengths of ``n`` prompts; a repeated (scope, group, key) repeats its
    question length too (a prompt is one fixed text)."""
    outputs = _draw(rng, output_tokens, n)
    lengths: dict[tuple[int, int, int], int] = {}
    # One question length per distinct prompt, drawn in first-use order (deterministic).
    drawn = _draw(rng, question_tokens, n).tolist()
    blocks: list[_IdArray] = []
    prompt_tokens: list[int] = []
    for i, (s, g, k) in enumerate(
        zip(scopes.tolist(), groups.tolist(), keys.tolist(), strict=True)
    ):
        q = lengths.setdefault((s, g, k), drawn[i])
        blocks.append(prompts.prompt(s, g, k, q))
        prompt_tokens.append(prompts.system_tokens + q)
    return blocks, prompt_tokens, outputs


# -------------------------------------------------------------------------- generators


def shared_prefix(
    *,
    rate: float = _RATE,
    duration_s: float = _DURATION_S,
    seed: int = 0,
    num_groups: int = 64,
    prompts_per_group: int = 16,
    system_tokens: int = 1536,
    question_tokens: Length = 256,
    output_tokens: Length = 256,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """llm-d's shared-prefix benchmark: groups of prompts that share a system prompt.

    ``num_groups * prompts_per_group`` distinct prompts, each the group's system prompt
    (``system_tokens``) plus its own question (``question_tokens``, one length per
    prompt). Poisson arrivals at ``rate``; each request picks a group uniformly, then a
    prompt of that group uniformly, so a prompt recurs about ``rate * duration_s /
    (num_groups * prompts_per_group)`` times. ``output_tokens`` per request.
    """
    _check_positive(rate=rate, duration_s=duration_s, num_groups=num_groups)
    _check_positive(prompts_per_group=prompts_per_group, system_tokens=system_tokens)
    _check_length("question_tokens", question_tokens)
    _check_length("output_tokens", output_tokens)
    params = dict(locals())
    rng = np.random.default_rng(seed)
    arrivals = _poisson(rng, rate, 0.0, duration_s)
    n = arrivals.shape[0]
    groups = _ints(rng, num_groups, n)
    questions = _ints(rng, prompts_per_group, n)
    prompts = _PrefixPrompts(namespace_root("shared-prefix", seed), system_tokens)
    scopes = np.zeros(n, dtype=np.int64)
    blocks, prompt_tokens, outputs = _shared_prefix_requests(
        rng, prompts, n, scopes, groups, questions, question_tokens, output_tokens
    )
    return _assemble("shared-prefix", model, params, arrivals, prompt_tokens, outputs, blocks)


def multi_turn_chat(
    *,
    rate: float = 40.0,
    duration_s: float = _DURATION_S,
    seed: int = 0,
    turns: Length = (2, 8),
    system_tokens: int = 512,
    num_system_prompts: int = 4,
    user_tokens: Length = (64, 256),
    output_tokens: Length = (64, 384),
    think_s: float = 4.0,
    min_gap_s: float = 2.0,
    max_context_tokens: int = 4096,
    warm_start: bool = True,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """Chat sessions whose context grows turn by turn.

    Sessions start as a Poisson process at ``rate / mean(turns)``, so ``rate`` is the
    nominal request rate. A session picks one of ``num_system_prompts`` system prompts
    and a number of ``turns``. Turn 1's prompt is the system prompt plus a user message
    (``user_tokens``); turn ``k``'s prompt is turn ``k-1``'s prompt, its answer
    (``output_tokens`` of turn ``k-1``) and a new user message. Turn ``k`` reuses every
    block id of turn ``k-1`` (a partial last block is completed under the same id: its
    content depends on the id only) and chains fresh ids after them, so the answer's
    blocks are new to the KV cache, as they are to vLLM's prompt-prefix cache.

    The workload is open loop: turn ``k`` arrives ``min_gap_s + Exp(think_s)`` after turn
    ``k-1`` whatever the answer's latency (the gap stands for answer time plus think time).
    A session ends early before a turn whose prompt plus answer would exceed
    ``max_context_tokens`` (Llama-2's 4096). With ``warm_start`` sessions also start
    before 0 (over three mean session spans) and only their turns inside
    ``[0, duration_s)`` are kept, so the run starts in steady state instead of ramping up.
    """
    _check_positive(rate=rate, duration_s=duration_s, num_system_prompts=num_system_prompts)
    _check_positive(think_s=think_s, max_context_tokens=max_context_tokens)
    if min_gap_s < 0 or system_tokens < 0:
        raise ConfigError("min_gap_s and system_tokens must be >= 0")
    for name, spec in (
        ("turns", turns),
        ("user_tokens", user_tokens),
        ("output_tokens", output_tokens),
    ):
        _check_length(name, spec)
    params = dict(locals())
    rng = np.random.default_rng(seed)
    mean_turns = _mean(turns)
    pre_s = 3.0 * (mean_turns - 1.0) * (min_gap_s + think_s) if warm_start else 0.0
    starts = _poisson(rng, rate / mean_turns, -pre_s, duration_s)
    root = namespace_root("multi-turn", seed)
    prompts = _PrefixPrompts(root, system_tokens)
    arrivals: list[float] = []
    prompt_tokens: list[int] = []
    outputs: list[int] = []
    blocks: list[_IdArray] = []
    sessions: list[str | None] = []
    cut_by_context = 0
    for index, start in enumerate(starts.tolist()):
        # Draw everything of a session up front: the draw order does not depend on cuts.
        num_turns = int(_draw(rng, turns, 1)[0])
        system = int(rng.integers(num_system_prompts))
        users = _draw(rng, user_tokens, num_turns).tolist()
        answers = _draw(rng, output_tokens, num_turns).tolist()
        gaps = (min_gap_s + rng.exponential(think_s, num_turns - 1)).tolist()
        session = f"session-{index:06d}"
        session_key = mix(root ^ 2, index)
        t = start
        context = system_tokens
        ids = prompts.system(0, system)
        for turn in range(num_turns):
            if turn:
                t += gaps[turn - 1]
                context += answers[turn - 1]
            context += users[turn]
            if context + answers[turn] > max_context_tokens:
                cut_by_context += 1
                break
            if t >= duration_s:
                break
            ids = _extend(ids, root, mix(session_key, turn), context)
            if t >= 0.0:
                arrivals.append(t)
                prompt_tokens.append(context)
                outputs.append(answers[turn])
                blocks.append(ids)
                sessions.append(session)
    params["sessions_cut_by_context"] = cut_by_context
    return _assemble(
        "multi-turn",
        model,
        params,
        np.array(arrivals, dtype=np.float64),
        prompt_tokens,
        outputs,
        blocks,
        sessions=sessions,
    )


def _zipf_probabilities(count: int, s: float) -> npt.NDArray[np.float64]:
    """Finite Zipf: ``p_k ∝ 1 / (k + 1) ** s`` for ``k < count`` (rank 0 most popular)."""
    weights: npt.NDArray[np.float64] = np.arange(1, count + 1, dtype=np.float64) ** -s
    return weights / float(weights.sum())


def lora_mix(
    *,
    rate: float = _RATE,
    duration_s: float = _DURATION_S,
    seed: int = 0,
    num_adapters: int = 8,
    zipf_s: float = 1.0,
    base_fraction: float = 0.0,
    num_groups: int = 8,
    prompts_per_group: int = 16,
    system_tokens: int = 1024,
    question_tokens: Length = 256,
    output_tokens: Length = 256,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """Requests over ``num_adapters`` LoRA adapters with Zipf(``zipf_s``) popularity.

    Adapter ``adapter-<k>`` (k = 0 the most popular) is drawn with probability
    ``∝ 1/(k+1)**zipf_s``; a ``base_fraction`` of requests use the base model
    (``lora=None``). Prompts are shared-prefix ones (:func:`shared_prefix`) with
    ``num_groups`` system prompts *per adapter*: ids are scoped by adapter, since vLLM
    never shares cached blocks across adapters. Poisson arrivals at ``rate``.
    """
    _check_positive(rate=rate, duration_s=duration_s, num_adapters=num_adapters)
    _check_positive(num_groups=num_groups, prompts_per_group=prompts_per_group)
    _check_positive(system_tokens=system_tokens)
    if zipf_s < 0 or not 0.0 <= base_fraction <= 1.0:
        raise ConfigError("expected zipf_s >= 0 and 0 <= base_fraction <= 1")
    _check_length("question_tokens", question_tokens)
    _check_length("output_tokens", output_tokens)
    params = dict(locals())
    rng = np.random.default_rng(seed)
    arrivals = _poisson(rng, rate, 0.0, duration_s)
    n = arrivals.shape[0]
    adapters = rng.choice(num_adapters, size=n, p=_zipf_probabilities(num_adapters, zipf_s))
    base = rng.random(n) < base_fraction
    scopes = np.where(base, 0, adapters + 1).astype(np.int64)  # scope 0: the base model
    groups = _ints(rng, num_groups, n)
    questions = _ints(rng, prompts_per_group, n)
    prompts = _PrefixPrompts(namespace_root("lora-mix", seed), system_tokens)
    blocks, prompt_tokens, outputs = _shared_prefix_requests(
        rng, prompts, n, scopes, groups, questions, question_tokens, output_tokens
    )
    width = len(str(num_adapters - 1))
    names = [f"adapter-{k:0{width}d}" for k in range(num_adapters)]
    loras = [None if s == 0 else names[s - 1] for s in scopes.tolist()]
    return _assemble(
        "lora-mix", model, params, arrivals, prompt_tokens, outputs, blocks, loras=loras
    )


def bursty(
    *,
    rate: float = _RATE,
    duration_s: float = _DURATION_S,
    seed: int = 0,
    cv: float = 3.0,
    servegen_client: int | str | None = None,
    servegen_path: str | None = None,
    window_s: float = 10.0,
    first_window: int | None = None,
    num_groups: int = 64,
    prompts_per_group: int = 16,
    system_tokens: int = 1536,
    question_tokens: Length = 256,
    output_tokens: Length = 256,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """Shared-prefix prompts (:func:`shared_prefix`) with bursty arrivals.

    Without ``servegen_client``: a Gamma renewal process, mean rate ``rate``, inter-arrival
    coefficient of variation ``cv`` (1 is Poisson; 0 is evenly spaced).

    With ``servegen_client``: that client's ServeGen windows (:func:`.traces.
    servegen_windows`; ``servegen_path`` defaults to the shared tarball), replayed from
    ``first_window`` (default: the client's first non-empty window), each window lasting
    ``window_s`` simulated seconds (ServeGen's are 600 s; compressing them shows rate
    changes within a short run). A window's arrivals follow its own pattern (Gamma or
    Weibull with its shape; Poisson when it names none) at its rate times
    ``rate / mean(rate of the windows used)``, so the run's mean rate is about ``rate``
    while the windows keep their relative rates and their real burstiness.
    """
    _check_positive(rate=rate, duration_s=duration_s, window_s=window_s)
    _check_positive(num_groups=num_groups, prompts_per_group=prompts_per_group)
    _check_positive(system_tokens=system_tokens)
    if cv < 0:
        raise ConfigError(f"expected cv >= 0, got {cv!r}", path="cv", value=cv)
    _check_length("question_tokens", question_tokens)
    _check_length("output_tokens", output_tokens)
    params = dict(locals())
    rng = np.random.default_rng(seed)
    if servegen_client is None:
        arrivals = _renewal(rng, _gamma_gaps(rng, cv), rate, 0.0, duration_s)
    else:
        arrivals, used = _servegen_arrivals(
            rng, servegen_client, servegen_path, window_s, first_window, rate, duration_s
        )
        params["servegen_windows"] = used
    n = arrivals.shape[0]
    groups = _ints(rng, num_groups, n)
    questions = _ints(rng, prompts_per_group, n)
    prompts = _PrefixPrompts(namespace_root("bursty", seed), system_tokens)
    blocks, prompt_tokens, outputs = _shared_prefix_requests(
        rng,
        prompts,
        n,
        np.zeros(n, dtype=np.int64),
        groups,
        questions,
        question_tokens,
        output_tokens,
    )
    return _assemble("bursty", model, params, arrivals, prompt_tokens, outputs, blocks)


def _servegen_arrivals(
    rng: np.random.Generator,
    client: int | str,
    path: str | None,
    window_s: float,
    first_window: int | None,
    rate: float,
    duration_s: float,
) -> tuple[npt.NDArray[np.float64], list[dict[str, object]]]:
    from inference_sched.sim.traces import (  # traces imports this module
        default_servegen_path,
        servegen_windows,
    )

    windows = servegen_windows(path if path is not None else default_servegen_path(), client)
    if first_window is None:
        first_window = next((i for i, w in enumerate(windows) if w.rate > 0), 0)
    count = math.ceil(duration_s / window_s)
    used = windows[first_window : first_window + count]
    if len(used) < count or not any(w.rate > 0 for w in used):
        raise ConfigError(
            f"ServeGen client {client!r}: windows {first_window}..{first_window + count - 1} "
            f"are past its {len(windows)} windows or all empty",
            path="first_window",
            value=first_window,
        )
    scale = rate / (sum(w.rate for w in used) / len(used))
    chunks = []
    for i, w in enumerate(used):
        if w.rate <= 0:
            continue
        if w.pattern == "Weibull" and w.shape > 0:
            gaps = _weibull_gaps(rng, w.shape)
        elif w.pattern == "Gamma" and w.shape > 0:
            gaps = _gamma_gaps(rng, 1.0 / math.sqrt(w.shape))
        else:
            gaps = _gamma_gaps(rng, 1.0)
        start = i * window_s
        chunks.append(_renewal(rng, gaps, w.rate * scale, start, min(start + window_s, duration_s)))
    arrivals = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.float64)
    return np.asarray(arrivals, dtype=np.float64), [w._asdict() for w in used]


def hot_prefix(
    *,
    rate: float = _RATE,
    duration_s: float = _DURATION_S,
    seed: int = 0,
    num_hot: int = 2,
    hot_fraction: float = 0.8,
    cold_groups: int = 256,
    system_tokens: int = 1536,
    question_tokens: Length = 256,
    output_tokens: Length = 256,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """A few dominant prefixes take most of the traffic; a cold tail takes the rest.

    A ``hot_fraction`` of requests use one of ``num_hot`` hot system prompts (equally
    likely), the rest one of ``cold_groups`` cold ones (uniformly). Every request has its
    own question, so only system prompts are shared. Prefix affinity alone piles the hot
    groups onto a few servers: the case where prefix routing can lose to load-only
    balancing (llm-d-router #355). Poisson arrivals at ``rate``.
    """
    _check_positive(rate=rate, duration_s=duration_s, num_hot=num_hot, cold_groups=cold_groups)
    _check_positive(system_tokens=system_tokens)
    if not 0.0 <= hot_fraction <= 1.0:
        raise ConfigError(
            f"expected 0 <= hot_fraction <= 1, got {hot_fraction!r}", path="hot_fraction"
        )
    _check_length("question_tokens", question_tokens)
    _check_length("output_tokens", output_tokens)
    params = dict(locals())
    rng = np.random.default_rng(seed)
    arrivals = _poisson(rng, rate, 0.0, duration_s)
    n = arrivals.shape[0]
    hot = np.asarray(rng.random(n) < hot_fraction, dtype=np.bool_)
    # Groups 0..num_hot-1 are hot, num_hot.. cold.
    groups = np.where(
        hot,
        _ints(rng, num_hot, n),
        num_hot + _ints(rng, cold_groups, n),
    )
    prompts = _PrefixPrompts(namespace_root("hot-prefix", seed), system_tokens)
    keys = np.arange(n, dtype=np.int64)  # unique questions
    blocks, prompt_tokens, outputs = _shared_prefix_requests(
        rng, prompts, n, np.zeros(n, dtype=np.int64), groups, keys, question_tokens, output_tokens
    )
    params["hot_requests"] = int(hot.sum())
    return _assemble("hot-prefix", model, params, arrivals, prompt_tokens, outputs, blocks)


SLO_CLASSES: Final = (
    ("interactive", 0.3, 200.0, 50.0, 1),
    ("standard", 0.5, 1000.0, 0.0, 0),
    ("batch", 0.2, 0.0, 0.0, -1),
)
"""(name, share, TTFT SLO ms, TPOT SLO ms, priority) of ``mixed-slo``'s classes."""


def mixed_slo(
    *,
    rate: float = 80.0,
    duration_s: float = _DURATION_S,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """Shared-prefix traffic in three SLO classes, as GIE's SLO-aware stack expects it.

    :data:`SLO_CLASSES`: 30% interactive (TTFT <= 200 ms, TPOT <= 50 ms, priority 1), 50%
    standard (TTFT <= 1 s, priority 0) and 20% batch (no SLO, priority -1: sheddable when
    the pool saturates). The requests are :func:`shared_prefix`'s at ``rate`` (default 80
    req/s, past what 16 default servers serve comfortably), each class drawn independently.
    """
    base = shared_prefix(rate=rate, duration_s=duration_s, seed=seed, model=model)
    rng = np.random.default_rng(seed + 7)
    shares = np.array([share for _, share, _, _, _ in SLO_CLASSES])
    drawn = rng.choice(len(SLO_CLASSES), size=len(base.requests), p=shares / shares.sum())
    requests = tuple(
        attrs.evolve(
            r,
            slo_ttft_ms=SLO_CLASSES[c][2],
            slo_tpot_ms=SLO_CLASSES[c][3],
            priority=SLO_CLASSES[c][4],
        )
        for r, c in zip(base.requests, drawn.tolist(), strict=True)
    )
    params = {**base.params, "generator": "mixed-slo", "classes": [c[0] for c in SLO_CLASSES]}
    return Workload(name="mixed-slo", requests=requests, params=params, model=model)


# ---------------------------------------------------------------------------- registry

WORKLOADS: Final[dict[str, Callable[..., Workload]]] = {
    "shared-prefix": shared_prefix,
    "multi-turn": multi_turn_chat,
    "lora-mix": lora_mix,
    "bursty": bursty,
    "hot-prefix": hot_prefix,
    "mixed-slo": mixed_slo,
}
"""Synthetic generators by name; every one takes ``rate``, ``duration_s`` and ``seed``."""


def load_workload(
    spec: str,
    *,
    rate: float | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    **options: object,
) -> Workload:
    """A workload from a registry name (:data:`WORKLOADS`) or ``trace:PATH``.

    ``rate`` and ``duration_s`` override the generator's defaults when given. For a trace
    (format detected from the file, :func:`.traces.load_trace`), ``duration_s`` keeps a
    window of the trace's own timeline and ``rate`` rescales its timeline to that mean
    rate; ``seed`` is unused (trace ids are deterministic). ``options`` go to the
    generator or trace reader.

    Raises:
        ConfigError: unknown name or option.
        DataError: a malformed trace.
    """
    if spec.startswith("trace:"):
        from inference_sched.sim.traces import load_trace  # traces imports this module

        func: Callable[..., Workload] = load_trace
        kwargs: dict[str, object] = dict(options)
    elif spec in WORKLOADS:
        func = WORKLOADS[spec]
        kwargs = {"seed": seed, **options}
    else:
        raise ConfigError(
            f"unknown workload {spec!r}: expected one of {', '.join(WORKLOADS)} or trace:PATH",
            value=spec,
        )
    if rate is not None:
        kwargs["rate"] = rate
    if duration_s is not None:
        kwargs["duration_s"] = duration_s
    accepted = inspect.signature(func).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{spec}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}",
            value=unknown,
        )
    if spec.startswith("trace:"):
        return func(spec.removeprefix("trace:"), **kwargs)
    return func(**kwargs)
