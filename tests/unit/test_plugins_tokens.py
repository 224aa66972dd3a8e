"""token-producer: the default estimate backend (auto-created), the vllm render backend
against a loopback server, the local tokenizer.json backend, pass-through ids, parameter
errors, a failing body not taking the cycle down, and the precise producer reading ids
(estimated, rendered, local)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ConfigError, DataError, ParameterError
from inference_sched.framework.config import load_config
from inference_sched.framework.contracts import (
    TOKENIZED_PROMPT,
    MultiModalFeature,
    TokenizedRequest,
    read_tokenized,
    request_token_ids,
)
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Request
from inference_sched.plugins.tokens import TokenProducer, TokenProducerParams
from inference_sched.prefix.precise.params import PrecisePrefixParams
from inference_sched.sim.kvcache import BlockStored
from tests.helpers import make_table

pytestmark = pytest.mark.unit

WORDS = ["[UNK]", "[BOS]"] + [f"w{i}" for i in range(64)]

CONTEXT_CONFIG = """
plugins:
- type: context-length-aware
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: context-length-aware}, {pluginRef: max-score-picker}]
"""


def _cycle() -> CycleState:
    return CycleState(np.random.default_rng(0))


def _produce(producer: TokenProducer, request: Request) -> TokenizedRequest | None:
    cycle = _cycle()
    table = make_table(1)
    producer.prepare_request_data(cycle, request, table, table.candidates())
    return read_tokenized(cycle)


def _producer(**params: Any) -> TokenProducer:
    from inference_sched.params import parse_params

    parsed = parse_params(TokenProducerParams, params, "plugins[0].parameters")
    return TokenProducer("token-producer", parsed, None)  # type: ignore[arg-type]


class RenderServer:
    """A vLLM render endpoint on loopback answering every render with fixed ids."""

    def __init__(self, ids: list[int]) -> None:
        self.bodies: list[tuple[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.bodies.append((self.path, body))
                item = {"token_ids": ids}
                payload = json.dumps(
                    [item]
                    if "completions/render" in self.path and "chat" not in self.path
                    else item
                ).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def render_server() -> Iterator[RenderServer]:
    server = RenderServer(list(range(100, 132)))
    yield server
    server.close()


# ------------------------------------------------------------------ estimate (default)
def test_a_consumer_gets_the_estimate_producer_by_default() -> None:
    scheduler = Scheduler.from_config(CONTEXT_CONFIG, make_table(2))
    producer = scheduler.plugins["token-producer"]
    assert type(producer) is TokenProducer
    assert producer.backend == "estimate"
    assert producer.stability == "beta"
    cycle = _cycle()
    request = Request.create("m", body={"messages": [{"role": "user", "content": "hello"}]})
    producer.prepare_request_data(cycle, request, scheduler.table, scheduler.table.candidates())
    tokenized = read_tokenized(cycle)
    assert tokenized is not None
    assert tokenized.estimated
    # "userhello" = 9 bytes → 3 pseudo-tokens
    assert tokenized.token_ids().tolist() == [0x72657375, 0x6C6C6568, 0x6F]
    assert tokenized.token_count() == 3
    scheduler.schedule(request)
    assert producer.stats["estimate"] == 2


def test_estimate_features_reach_the_contract() -> None:
    producer = _producer(estimate={"image": {"mode": "static", "static": {"staticToken": 3}}})
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
        ]
    }
    tokenized = _produce(producer, Request.create("m", body=body))
    assert tokenized is not None
    assert tokenized.token_count() == 1 + 3  # "user", then 3 placeholder tokens
    (feature,) = tokenized.mm_features
    assert isinstance(feature, MultiModalFeature)
    assert (feature.modality, feature.offset, feature.length) == ("image", 1, 3)


def test_ids_pass_through_and_a_present_result_is_kept() -> None:
    producer = _producer()
    by_request = _produce(producer, Request.create("m", prompt="x", token_ids=[5, 6]))
    assert by_request is not None
    assert not by_request.estimated
    assert by_request.token_ids().tolist() == [5, 6]
    by_body = _produce(producer, Request.create("m", body={"prompt_token_ids": [7]}))
    assert by_body is not None
    assert by_body.token_ids().tolist() == [7]
    bare = _produce(producer, Request.create("m", prompt="abcd"))
    assert bare is not None
    assert bare.token_ids().tolist() == [0x64636261]
    assert _produce(producer, Request.create("m")) is None
    assert _produce(producer, Request.create("m", body={"prompt": [""]})) is None
    cycle = _cycle()
    existing = TokenizedRequest((np.array([1], np.uint32),))
    cycle.write(TOKENIZED_PROMPT, existing)
    producer.prepare_request_data(
        cycle, Request.create("m", prompt="zz"), make_table(1), np.zeros(1, np.int32)
    )
    assert read_tokenized(cycle) is existing
    assert dict(producer.stats) == {
        "passed_through": 2,
        "estimate": 1,
        "empty": 2,
        "already_present": 1,
    }


def test_a_bad_body_is_counted_and_the_cycle_goes_on() -> None:
    scheduler = Scheduler.from_config(CONTEXT_CONFIG, make_table(2))
    producer = scheduler.plugins["token-producer"]
    with pytest.raises(DataError, match="unsupported request body"):
        _produce(producer, Request.create("m", body={"model": "m"}))
    result = scheduler.schedule(Request.create("m", body={"model": "m"}))
    assert result.primary.endpoints  # scheduled without TokenizedPrompt
    (stats,) = [s for p, s in scheduler._producers if p is producer]
    assert stats.errors == 1
    assert producer.stats["failed"] == 2


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    ("parameters", "match"),
    [
        ("{estimate: {}, vllm: {url: 'http://x'}, modelName: m}", r"vllm: expected only one of"),
        ("{estimate: {}, modelName: m}", r"modelName: expected only one of"),
        ("{vllm: {}}", r"modelName: expected a model name when vllm is set"),
        ("{udsTokenizerConfig: {socketFile: ''}, modelName: m}", r"udsTokenizerConfig\.socketFile"),
        ("{estimate: {image: {mode: fixed}}}", r"estimate\.image\.mode: expected one of"),
        ("{estimate: {video: {frames: {mode: x}}}}", r"estimate\.video\.frames\.mode"),
        ("{estimate: {video: {maxVideoTokens: -1}}}", r"estimate\.video\.maxVideoTokens"),
        ("{vllm: {timeout: 5}, modelName: m}", r"vllm\.timeout: expected a duration"),
        (
            "{vllm: {clientCertPath: /nope}, modelName: m}",
            r"vllm\.clientCertPath: expected the path",
        ),
        (
            "{vllm: {ur: x}, modelName: m}",
            r"vllm\.ur: expected one of the keys .*did you mean 'url'",
        ),
        ("{vllm: {messagesRenderMode: legacy}, modelName: m}", r"messagesRenderMode"),
        ("{tokenizerFile: /nope/tokenizer.json}", r"tokenizerFile: expected the path"),
        ("{bogus: 1}", r"unknown key 'bogus'"),
    ],
)
def test_bad_parameters_name_the_key(parameters: str, match: str) -> None:
    config = f"plugins:\n- type: token-producer\n  parameters: {parameters}\n"
    with pytest.raises(ConfigError, match=match):
        load_config(config)


def test_a_vllm_tokenizer_endpoint_loads(render_server: RenderServer) -> None:
    config = f"""
plugins:
- type: token-producer
  parameters:
    modelName: served
    vllm: {{url: '{render_server.url}', timeout: 2s, mmTimeout: 3s}}
- type: context-length-aware
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: context-length-aware}}, {{pluginRef: max-score-picker}}]
"""
    scheduler = Scheduler.from_config(config, make_table(2))
    producer = scheduler.plugins["token-producer"]
    assert producer.backend == "vllm"
    body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}
    tokenized = _produce(producer, Request.create("alias", body=body))
    assert tokenized is not None
    assert not tokenized.estimated
    assert tokenized.token_ids().tolist() == list(range(100, 132))
    bare = _produce(producer, Request.create("alias", prompt="hi"))
    assert bare is not None
    assert bare.token_count() == 32
    assert render_server.bodies == [
        ("/v1/chat/completions/render", {**body, "model": "served"}),
        ("/v1/completions/render", {"prompt": "hi", "model": "served"}),
    ]
    # modelName alone selects vllm (llm-d-router); the old key `http` still works
    assert _producer(modelName="m").backend == "vllm"
    assert _producer(modelName="m", vllm={"http": "http://h:1"})._render.base_url == "http://h:1"  # type: ignore[union-attr]


# ------------------------------------------------------------------ tokenizer.json
@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _precise_config(path: Path, extra: str = "") -> str:
    return f"""
plugins:
- type: precise-prefix-cache-producer
- type: token-producer
  parameters: {{tokenizerFile: '{path}'{extra}}}
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: prefix-cache-scorer}}, {{pluginRef: max-score-picker}}]
"""


def test_tokens_of_completion_prompts_reach_the_precise_match(tokenizer_file: Path) -> None:
    scheduler = Scheduler.from_config(_precise_config(tokenizer_file), make_table(2))
    names = [type(p).__name__ for p, _ in scheduler._producers]
    assert names == ["TokenProducer", "PrecisePrefixCacheProducer"]  # ids before the match
    tokens = scheduler.plugins["token-producer"]
    text = " ".join(f"w{i}" for i in range(31))  # [BOS] + 31 words = 32 ids = 2 blocks
    ids = tokens.tokenize(text)
    np.testing.assert_array_equal(ids, [1, *range(2, 33)])
    precise = scheduler.plugins["precise-prefix-cache-producer"]
    precise.events_in_process()
    precise.kv_event("10.0.0.1:8000", BlockStored([7, 8], None, ids.tolist(), 16, None, "GPU"), "m")
    request = Request.create("m", prompt=text, body={"model": "m", "prompt": text})
    result = scheduler.schedule(request)
    assert result.primary.endpoints[0].name == "e1"
    assert result.primary.scores[0] == pytest.approx(1.0)
    assert tokens.stats["tokenizerFile"] == 1


def test_what_the_local_tokenizer_leaves_alone(tokenizer_file: Path) -> None:
    scheduler = Scheduler.from_config(
        _precise_config(tokenizer_file, ", addSpecialTokens: false"), make_table(1)
    )
    tokens = scheduler.plugins["token-producer"]
    assert tokens.tokenize("w0 w1 nope").tolist() == [2, 3, 0]
    multi = _produce(tokens, Request.create("m", body={"prompt": ["w0", "w1 w2"]}))
    assert multi is not None
    assert [p.tolist() for p in multi.prompts] == [[2], [3, 4]]
    for request in (
        Request.create("m", prompt="w0", token_ids=[5, 6]),
        Request.create("m", body={"prompt_token_ids": [5, 6]}),
        Request.create("m", body={"token_ids": [5, 6]}),
    ):
        cycle = _cycle()
        tokens.prepare_request_data(cycle, request, scheduler.table, scheduler.table.candidates())
        assert request_token_ids(request, cycle).tolist() == [5, 6]  # type: ignore[union-attr]
    chat = Request.create("m", body={"messages": [{"role": "user", "content": "w0"}]})
    assert _produce(tokens, chat) is None
    assert tokens.stats["skipped_chat_completions"] == 1


def test_bad_tokenizer_files_are_config_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not a tokenizer\.json"):
        Scheduler.from_config(_precise_config(junk), make_table(1))
    with pytest.raises(ConfigError, match=r"tokenizerFile: expected only one of"):
        load_config(_precise_config(junk, ", estimate: {}"))


def test_tokenizer_is_a_deprecated_alias_of_token_producer(
    tokenizer_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from inference_sched.plugins.tokens import TokenizerProducer

    config = _precise_config(tokenizer_file).replace("type: token-producer", "type: tokenizer")
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.tokens"):
        scheduler = Scheduler.from_config(config, make_table(1))
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'tokenizer': type 'tokenizer' is deprecated; use 'token-producer' (same parameters)"
    ]
    alias = scheduler.plugins["tokenizer"]
    assert type(alias) is TokenizerProducer
    assert alias.type == "tokenizer"
    tokenized = _produce(alias, Request.create("m", prompt="w2"))
    assert tokenized is not None
    assert tokenized.token_ids().tolist() == [1, 4]
    with pytest.raises(ParameterError, match=r"modelName: expected a model name"):
        load_config(config.replace(f"tokenizerFile: '{tokenizer_file}'", "vllm: {}"))


# ------------------------------------------------------------------ precise + render
def test_the_precise_producer_renders_when_it_only_has_estimated_ids(
    render_server: RenderServer,
) -> None:
    from inference_sched.params import parse_params
    from inference_sched.plugins.precise_prefix import PrecisePrefixCacheProducer

    pool = {"modelName": "served", "vllm": {"url": render_server.url, "timeout": "2s"}}
    raw = {"indexerConfig": {"tokenizersPoolConfig": pool}}
    params = parse_params(PrecisePrefixParams, raw, "plugins[0].parameters")
    table = make_table(2)
    from inference_sched.framework.handle import PluginHandle

    precise = PrecisePrefixCacheProducer("precise", params, PluginHandle(table))
    precise.events_in_process()
    ids = list(range(100, 132))
    precise.kv_event("10.0.0.1:8000", BlockStored([7, 8], None, ids, 16, None, "GPU"), "m")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    request = Request.create("m", body=body)
    cycle = _cycle()
    _producer().prepare_request_data(cycle, request, table, table.candidates())
    assert read_tokenized(cycle).estimated  # type: ignore[union-attr]
    precise.prepare_request_data(cycle, request, table, table.candidates())
    info = cycle.read("PrefixCacheMatchInfo")
    assert info.total_blocks == 2
    assert info.match_blocks[1] == 2
    assert render_server.bodies[0][0] == "/v1/chat/completions/render"
    # a request carrying its own ids is not rendered
    own = Request.create("m", token_ids=ids, body=body)
    precise.prepare_request_data(_cycle(), own, table, table.candidates())
    assert len(render_server.bodies) == 1
    # a failed render falls back to the estimated ids, counted
    render_server.close()
    cycle = _cycle()
    _producer().prepare_request_data(cycle, request, table, table.candidates())
    precise.prepare_request_data(cycle, request, table, table.candidates())
    assert precise.stats["render_failures"] == 1
    precise.close()
