"""``token-producer``: the prompt's token ids, for plugins that match token blocks.

llm-d's ``token-producer`` asks a vLLM render endpoint; this one tokenizes in process with
the `tokenizers` library (``[tokenizer]`` extra) and a local ``tokenizer.json`` (the file
every Hugging Face model ships), so a scheduling cycle never waits on the network.

What it tokenizes: the body's ``prompt`` when it is a string (completions), else the
request's ``prompt`` bytes as UTF-8 text when there is no body. Chat requests
(``messages``) are left alone and counted: their engine token ids depend on the model's
chat template, which only the engine (or llm-d's render call) applies exactly, and keys
from other token ids would never match. Requests that already carry ``token_ids`` (from
the gateway) or a ``prompt_token_ids`` list in the body are not re-tokenized.

The ids go to the cycle as ``TokenizedPrompt`` (llm-d's data key): a uint32 array.

``tokenizer`` is the deprecated alias of ``token-producer`` (llm-d-router:
``cmd/epp/runner/runner.go`` registers the same factory under both names): same
parameters and behaviour; building one logs a deprecation warning.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import ConfigError
from inference_sched.framework.contracts import TOKENIZED_PROMPT
from inference_sched.framework.interfaces import Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import ParamCheck, boolean, param, string
from inference_sched.state.table import EndpointTable

__all__ = ["TokenProducer", "TokenizerProducer"]

log = logging.getLogger(__name__)


def _existing_file(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value or not Path(value).is_file():
        raise ParamCheck("tokenizerFile", "the path of an existing tokenizer.json", value)


@attrs.frozen
class TokenProducerParams:
    """Parameters of ``token-producer`` (llm-d's ``modelName``; the file is ours)."""

    tokenizer_file: str = param(alias="tokenizerFile", check=_existing_file)
    """A Hugging Face ``tokenizer.json`` on local disk (nothing is downloaded)."""
    model_name: str = param("", alias="modelName", check=string)
    """The model the file belongs to (informational; llm-d requires it)."""
    add_special_tokens: bool = param(True, alias="addSpecialTokens", check=boolean)
    """Add the tokenizer's special tokens (BOS, ...) as the engine does for completions."""


@register("token-producer")
class TokenProducer:
    """Tokenizes completion prompts with a local ``tokenizer.json``."""

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    consumes: ClassVar[frozenset[str]] = frozenset()
    Params = TokenProducerParams

    def __init__(self, name: str, params: TokenProducerParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "token-producer needs the [tokenizer] extra: pip install "
                "'inference-sched[tokenizer]'"
            ) from None
        try:
            self._tokenizer = Tokenizer.from_file(params.tokenizer_file)
        except Exception as exc:  # noqa: BLE001 - the library raises its own (Rust) type
            raise ConfigError(f"{params.tokenizer_file}: not a tokenizer.json ({exc})") from None
        self.stats: collections.Counter[str] = collections.Counter()
        """Requests tokenized, already tokenized, chat requests skipped, no prompt."""

    def tokenize(self, text: str) -> npt.NDArray[np.uint32]:
        """Token ids of ``text``."""
        ids = self._tokenizer.encode(text, add_special_tokens=self.params.add_special_tokens).ids
        return np.asarray(ids, dtype=np.uint32)

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Write ``TokenizedPrompt`` when the prompt can be tokenized here."""
        body = request.body
        if request.token_ids is not None or (body is not None and "prompt_token_ids" in body):
            self.stats["already_tokenized"] += 1
            return
        text: str | None = None
        if body is not None:
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                text = prompt
            elif "messages" in body:
                self.stats["chat_skipped"] += 1
                return
        elif request.prompt is not None:
            text = request.prompt.decode("utf-8", "replace")
        if not text:
            self.stats["no_prompt"] += 1
            return
        cycle.write(TOKENIZED_PROMPT, self.tokenize(text))
        self.stats["tokenized"] += 1


@register("tokenizer")
class TokenizerProducer(TokenProducer):
    """Deprecated alias of ``token-producer`` (llm-d-router); logs a warning when built."""

    def __init__(self, name: str, params: TokenProducerParams, handle: Handle) -> None:
        log.warning(
            "plugin %r: type 'tokenizer' is deprecated; use 'token-producer' (same parameters)",
            name,
        )
        super().__init__(name, params, handle)
