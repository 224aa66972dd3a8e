"""token-producer: a tiny tokenizer built here (nothing downloaded), the cycle's
TokenizedPrompt, what is skipped, and the precise producer reading the ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from inference_sched.errors import ConfigError  # noqa: E402
from inference_sched.framework.config import load_config  # noqa: E402
from inference_sched.framework.contracts import TOKENIZED_PROMPT, request_token_ids  # noqa: E402
from inference_sched.framework.scheduler import Scheduler  # noqa: E402
from inference_sched.framework.types import CycleState, Request  # noqa: E402
from inference_sched.sim.kvcache import BlockStored  # noqa: E402
from tests.helpers import make_table  # noqa: E402

pytestmark = pytest.mark.unit

WORDS = ["[UNK]", "[BOS]"] + [f"w{i}" for i in range(64)]


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _config(path: Path, extra: str = "") -> str:
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
    scheduler = Scheduler.from_config(_config(tokenizer_file), make_table(2))
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
    assert tokens.stats["tokenized"] == 1


def test_what_is_not_tokenized(tokenizer_file: Path) -> None:
    scheduler = Scheduler.from_config(
        _config(tokenizer_file, ", addSpecialTokens: false"), make_table(1)
    )
    tokens = scheduler.plugins["token-producer"]
    assert tokens.tokenize("w0 w1 nope").tolist() == [2, 3, 0]
    table = scheduler.table
    for request in (
        Request.create("m", prompt="w0", token_ids=[5, 6]),
        Request.create("m", body={"prompt_token_ids": [5, 6]}),
        Request.create("m", body={"messages": [{"role": "user", "content": "w0"}]}),
        Request.create("m", body={"model": "m"}),
    ):
        cycle = CycleState(np.random.default_rng(0))
        tokens.prepare_request_data(cycle, request, table, table.candidates())
        assert TOKENIZED_PROMPT not in cycle
        found = request_token_ids(request, cycle)
        assert found is None or found.tolist() == [5, 6]
    assert dict(tokens.stats) == {"already_tokenized": 2, "chat_skipped": 1, "no_prompt": 1}


def test_bad_tokenizer_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizerFile: expected the path of an existing"):
        load_config(_config(tmp_path / "missing.json"))
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not a tokenizer\.json"):
        Scheduler.from_config(_config(junk), make_table(1))


def test_tokenizer_is_a_deprecated_alias_of_token_producer(
    tokenizer_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from inference_sched.errors import ParameterError
    from inference_sched.plugins.tokens import TokenizerProducer

    config = _config(tokenizer_file).replace("type: token-producer", "type: tokenizer")
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.tokens"):
        scheduler = Scheduler.from_config(config, make_table(1))
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'tokenizer': type 'tokenizer' is deprecated; use 'token-producer' (same parameters)"
    ]
    alias = scheduler.plugins["tokenizer"]
    assert type(alias) is TokenizerProducer
    assert alias.type == "tokenizer"
    np.testing.assert_array_equal(alias.tokenize("w0 w1"), [1, 2, 3])
    cycle = CycleState(np.random.default_rng(0))
    alias.prepare_request_data(
        cycle, Request.create("m", prompt="w2"), make_table(1), np.zeros(1, np.int32)
    )
    np.testing.assert_array_equal(cycle.read(TOKENIZED_PROMPT), [1, 4])
    with pytest.raises(ParameterError, match=r"tokenizerFile: required key is missing"):
        load_config(config.replace(f"tokenizerFile: '{tokenizer_file}'", "modelName: m"))
