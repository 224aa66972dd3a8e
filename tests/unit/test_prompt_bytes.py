"""Prompt bytes: Go json.Marshal parity and the bytes GIE hashes per API, exact values.

Every expected byte string below is written by hand from GIE's openai parser and hashing
(docs/plugins/approx-prefix-cache-producer.md) and the Go structs in GIE's
``requesthandling/types.go`` (field order and ``omitempty`` tags)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from inference_sched.errors import DataError
from inference_sched.prefix.prompt_bytes import (
    APIS,
    GoStruct,
    api_from_path,
    cache_salt,
    go_json_marshal,
    prompt_bytes,
)

# ---------------------------------------------------------------------------------------
# go_json_marshal
# ---------------------------------------------------------------------------------------

MARSHAL_CASES: list[tuple[str, Any, bytes]] = [
    ("null", None, b"null"),
    ("true", True, b"true"),
    ("false", False, b"false"),
    ("int", 42, b"42"),
    ("negative-int", -7, b"-7"),
    ("max-uint64", 2**64 - 1, b"18446744073709551615"),
    ("min-int64", -(2**63), b"-9223372036854775808"),
    ("float-half", 0.5, b"0.5"),
    ("float-integral", 1.0, b"1"),
    ("float-big-integral", 1e20, b"100000000000000000000"),
    ("float-1e21", 1e21, b"1e+21"),
    ("float-1.5e300", 1.5e300, b"1.5e+300"),
    ("float-max", 1.7976931348623157e308, b"1.7976931348623157e+308"),
    ("float-1e-6-is-f", 0.000001, b"0.000001"),
    ("float-1e-7", 1e-7, b"1e-7"),
    ("float-1.25e-10", 1.25e-10, b"1.25e-10"),
    ("float-denormal", 5e-324, b"5e-324"),
    ("float-negative-zero", -0.0, b"-0"),
    ("float-zero", 0.0, b"0"),
    ("float-0.1", 0.1, b"0.1"),
    ("float-negative", -123.456, b"-123.456"),
    ("float-big-rounded", 12345678901234567890.0, b"12345678901234567000"),
    ("string", "hi", b'"hi"'),
    ("empty-string", "", b'""'),
    ("html", "<a href='x'>&</a>", b"\"\\u003ca href='x'\\u003e\\u0026\\u003c/a\\u003e\""),
    ("line-separators", "a\u2028b\u2029c", b'"a\\u2028b\\u2029c"'),
    ("quote-backslash", 'say "hi" \\ bye', b'"say \\"hi\\" \\\\ bye"'),
    ("short-escapes", "\n\r\t\b\f", b'"\\n\\r\\t\\b\\f"'),
    ("control-chars", "\x00\x01\x1f", b'"\\u0000\\u0001\\u001f"'),
    ("del-kept", "\x7f", b'"\x7f"'),
    ("non-ascii-utf8", "héllo 日本 😀", '"héllo 日本 😀"'.encode()),
    ("slash-kept", "a/b", b'"a/b"'),
    ("lone-surrogate", "a\ud800b", '"a\ufffdb"'.encode()),
    ("surrogate-pair-joined", "\ud83d\ude00", '"😀"'.encode()),
    ("list", [1, "a", None, [True, []]], b'[1,"a",null,[true,[]]]'),
    ("tuple", (1, 2), b"[1,2]"),
    ("empty-map", {}, b"{}"),
    (
        "map-sorted",
        {"b": 1, "a": 2, "B": 3, "é": 4, "aa": 5},
        '{"B":3,"a":2,"aa":5,"b":1,"é":4}'.encode(),
    ),
    ("map-key-escaped", {"<k>": 1}, b'{"\\u003ck\\u003e":1}'),
    (
        "nested",
        {"z": [{"y": 1, "x": 2}], "a": {"c": None, "b": []}},
        b'{"a":{"b":[],"c":null},"z":[{"x":2,"y":1}]}',
    ),
    ("struct-declared-order", GoStruct([("z", 1), ("a", 2), ("m", 3)]), b'{"z":1,"a":2,"m":3}'),
    ("empty-struct", GoStruct([]), b"{}"),
    (
        "struct-holding-map",
        GoStruct([("role", "user"), ("meta", {"b": 1, "a": 2})]),
        b'{"role":"user","meta":{"a":2,"b":1}}',
    ),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in MARSHAL_CASES], ids=[c[0] for c in MARSHAL_CASES]
)
def test_go_json_marshal(value: Any, expected: bytes) -> None:
    assert go_json_marshal(value) == expected


MARSHAL_ERRORS: list[tuple[str, Any, str]] = [
    ("nan", math.nan, r"^value: cannot marshal nan: Go rejects NaN and infinities$"),
    ("inf", math.inf, r"^value: cannot marshal inf"),
    ("nested-nan", [1, {"a": [math.nan]}], r"^value\[1\]\.a\[0\]: cannot marshal nan"),
    ("struct-path", GoStruct([("x", [-math.inf])]), r"^value\.x\[0\]: cannot marshal -inf"),
    ("too-big", 2**64, r"^value: integer 18446744073709551616 does not fit a Go 64-bit"),
    ("too-small", -(2**63) - 1, r"^value: integer -9223372036854775809 does not fit"),
    ("int-key", {1: "a"}, r"^value: object keys must be strings, got 1 \(int\)$"),
    ("bytes", b"x", r"^value: cannot marshal b'x' \(bytes\)$"),
    ("set", [{1}], r"^value\[0\]: cannot marshal \{1\} \(set\)$"),
]


@pytest.mark.parametrize(
    ("value", "match"), [c[1:] for c in MARSHAL_ERRORS], ids=[c[0] for c in MARSHAL_ERRORS]
)
def test_go_json_marshal_errors(value: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        go_json_marshal(value)


def test_go_json_marshal_too_deep_is_data_error() -> None:
    value: Any = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(DataError, match=r"^value: nested too deeply"):
        go_json_marshal(value)


def test_go_struct_is_frozen_and_compares_by_fields() -> None:
    assert GoStruct([("a", 1)]) == GoStruct((("a", 1),))
    assert GoStruct([("a", 1)]).fields == (("a", 1),)


# ---------------------------------------------------------------------------------------
# api_from_path, cache_salt
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat/completions", "chat/completions"),
        ("/v1/chat/completions/", "chat/completions"),
        ("/openai/deployments/x/chat/completions", "chat/completions"),
        ("/v1/completions", "completions"),
        ("/v1/responses", "responses"),
        ("/v1/conversations", "conversations"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/models", "completions"),
        ("", "completions"),
        ("/", "completions"),
        ("/v1/chat/completions?stream=1", "completions"),  # GIE expects normalized paths
        ("/v1/xchat/completions", "completions"),
    ],
)
def test_api_from_path(path: str, api: str) -> None:
    assert api_from_path(path) == api


def test_apis_order() -> None:
    assert APIS == ("conversations", "responses", "chat/completions", "completions", "embeddings")


@pytest.mark.parametrize(
    ("body", "salt"),
    [
        ({}, ""),
        ({"cache_salt": "s1"}, "s1"),
        ({"cache_salt": None}, ""),
        ({"Cache_Salt": "s2"}, "s2"),  # Go matches field names case-insensitively
        ({"cache_salt": "a", "CACHE_SALT": "b"}, "b"),  # the last matching key wins
    ],
)
def test_cache_salt(body: dict[str, Any], salt: str) -> None:
    assert cache_salt(body) == salt


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"cache_salt": 1}, r"^cache_salt: expected a string, got 1 \(int\)$"),
        ([], r"^body: expected a JSON object, got \[\] \(list\)$"),
    ],
)
def test_cache_salt_errors(body: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        cache_salt(body)


# ---------------------------------------------------------------------------------------
# prompt_bytes: exact bytes per API
# ---------------------------------------------------------------------------------------

BLOCK_TAIL = b'"image_url":{},"input_audio":{},"video_url":{}'

PROMPT_CASES: list[tuple[str, str, dict[str, Any], bytes]] = [
    # completions: plain text, not JSON
    ("completions-string", "completions", {"prompt": "hello world"}, b"hello world"),
    ("completions-no-escaping", "completions", {"prompt": '<é & "x">'}, '<é & "x">'.encode()),
    ("completions-list", "completions", {"prompt": ["a", "b c", ""]}, b"a b c "),
    ("completions-list-one-empty", "completions", {"prompt": [""]}, b""),
    ("completions-token-ids", "completions", {"prompt": [1, 2, 3]}, b""),
    ("completions-token-ids-float", "completions", {"prompt": [1.0, 4294967295]}, b""),
    ("completions-other-keys-ignored", "completions", {"prompt": "p", "max_tokens": "x"}, b"p"),
    ("completions-case-insensitive", "completions", {"PROMPT": "p"}, b"p"),
    ("completions-lone-surrogate", "completions", {"prompt": "a\udc80"}, "a\ufffd".encode()),
    # chat/completions: json.Marshal([]Message)
    (
        "chat-simple",
        "chat/completions",
        {"messages": [{"role": "user", "content": "hi"}]},
        b'[{"role":"user","content":"hi"}]',
    ),
    (
        "chat-two-messages-escaped",
        "chat/completions",
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be <brief> & kind"},
                {"role": "user", "content": 'line1\nline2\t"q"'},
            ],
        },
        b'[{"role":"system","content":"Be \\u003cbrief\\u003e \\u0026 kind"},'
        b'{"role":"user","content":"line1\\nline2\\t\\"q\\""}]',
    ),
    (
        "chat-no-role",
        "chat/completions",
        {"messages": [{"content": "x"}]},
        b'[{"content":"x"}]',
    ),
    (
        "chat-empty-role-omitted",
        "chat/completions",
        {"messages": [{"role": "", "content": "x"}]},
        b'[{"content":"x"}]',
    ),
    (
        "chat-missing-and-null-content",
        "chat/completions",
        {"messages": [{"role": "user"}, {"role": "user", "content": None}]},
        b'[{"role":"user","content":""},{"role":"user","content":""}]',
    ),
    (
        "chat-null-message-is-zero-message",
        "chat/completions",
        {"messages": [None]},
        b'[{"content":""}]',
    ),
    (
        "chat-extra-message-fields-dropped",
        "chat/completions",
        {"messages": [{"role": "assistant", "content": "a", "name": "n", "tool_calls": []}]},
        b'[{"role":"assistant","content":"a"}]',
    ),
    (
        "chat-empty-block-list",
        "chat/completions",
        {"messages": [{"role": "user", "content": []}]},
        b'[{"role":"user","content":[]}]',
    ),
    (
        "chat-multimodal",
        "chat/completions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is <this>?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "http://x/a.png", "detail": "hi"},
                        },
                        {"type": "input_audio", "input_audio": {"data": "QUJD", "format": "wav"}},
                        {"type": "video_url", "video_url": {"url": "v.mp4"}},
                    ],
                }
            ]
        },
        b'[{"role":"user","content":['
        b'{"type":"text","text":"What is \\u003cthis\\u003e?",' + BLOCK_TAIL + b"},"
        b'{"type":"image_url","image_url":{"url":"http://x/a.png"},"input_audio":{},"video_url":{}},'
        b'{"type":"input_audio","image_url":{},"input_audio":{"data":"QUJD","format":"wav"},'
        b'"video_url":{}},'
        b'{"type":"video_url","image_url":{},"input_audio":{},"video_url":{"url":"v.mp4"}}'
        b"]}]",
    ),
    (
        "chat-block-edge-cases",
        "chat/completions",
        {
            "messages": [
                {
                    "content": [
                        None,
                        {"text": ""},
                        {"type": "input_audio", "input_audio": {"format": "mp3"}},
                        {"type": "image_url", "image_url": None},
                    ]
                }
            ]
        },
        b'[{"content":[{"type":"",' + BLOCK_TAIL + b'},{"type":"",' + BLOCK_TAIL + b"},"
        b'{"type":"input_audio","image_url":{},"input_audio":{"format":"mp3"},"video_url":{}},'
        b'{"type":"image_url",' + BLOCK_TAIL + b"}]}]",
    ),
    (
        "chat-case-insensitive-fields",
        "chat/completions",
        {"Messages": [{"ROLE": "user", "Content": "hi"}]},
        b'[{"role":"user","content":"hi"}]',
    ),
    (
        "chat-unicode-fold-long-s",
        "chat/completions",
        {"me\u017f\u017fages": [{"role": "user", "content": "hi"}]},
        b'[{"role":"user","content":"hi"}]',
    ),
    (
        "chat-last-matching-key-wins",
        "chat/completions",
        {"messages": [{"role": "user", "Role": "system", "content": "x"}]},
        b'[{"role":"system","content":"x"}]',
    ),
    (
        "chat-other-fields-not-hashed",
        "chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function"}],
            "chat_template": "t",
            "add_generation_prompt": True,
            "chat_template_kwargs": {"k": 1},
            "cache_salt": "s",
        },
        b'[{"role":"user","content":"x"}]',
    ),
    # responses: json.Marshal([]map[string]any)
    ("responses-input-only", "responses", {"input": "hi"}, b'[{"input":"hi"}]'),
    (
        "responses-with-instructions-and-tools",
        "responses",
        {
            "input": [{"role": "user", "content": "hi"}],
            "instructions": "Be <nice>",
            "tools": [{"type": "function", "name": "f"}],
        },
        b'[{"instructions":"Be \\u003cnice\\u003e"},{"tools":[{"name":"f","type":"function"}]},'
        b'{"input":[{"content":"hi","role":"user"}]}]',
    ),
    (
        "responses-null-instructions-dropped",
        "responses",
        {"input": "x", "instructions": None, "tools": None},
        b'[{"input":"x"}]',
    ),
    (
        "responses-empty-instructions-kept",
        "responses",
        {"input": "x", "instructions": "", "tools": []},
        b'[{"instructions":""},{"tools":[]},{"input":"x"}]',
    ),
    (
        "responses-numbers-are-float64",
        "responses",
        {"input": [{"n": 3, "x": 2.50, "big": 10**21, "tiny": 1e-9, "huge": 2**64}]},
        b'[{"input":[{"big":1e+21,"huge":18446744073709552000,"n":3,"tiny":1e-9,"x":2.5}]}]',
    ),
    (
        "responses-object-input",
        "responses",
        {"input": {"b": False, "a": None}},
        b'[{"input":{"a":null,"b":false}}]',
    ),
    # conversations: json.Marshal([]ConversationItem)
    (
        "conversations-item",
        "conversations",
        {
            "items": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "<hi>"}],
                    "id": "ignored",
                }
            ]
        },
        b'[{"type":"message","role":"user","content":[{"text":"\\u003chi\\u003e","type":"input_text"}]}]',
    ),
    (
        "conversations-omitempty",
        "conversations",
        {
            "items": [
                {"type": "", "role": None, "content": ""},
                {"content": None},
                None,
                {"content": 7},
            ]
        },
        b'[{"content":""},{},{},{"content":7}]',
    ),
    (
        "conversations-metadata-not-hashed",
        "conversations",
        {"items": [{"role": "user"}], "metadata": {"a": "b"}},
        b'[{"role":"user"}]',
    ),
    # embeddings: json.Marshal(EmbeddingsInput), Go field names, nil slices are null
    (
        "embeddings-string",
        "embeddings",
        {"input": "hi"},
        b'{"Raw":"hi","Strings":null,"TokenIDs":null}',
    ),
    (
        "embeddings-strings",
        "embeddings",
        {"input": ["a", "<b>"]},
        b'{"Raw":"","Strings":["a","\\u003cb\\u003e"],"TokenIDs":null}',
    ),
    (
        "embeddings-token-ids",
        "embeddings",
        {"input": [1, 2.0, 4294967295, 0]},
        b'{"Raw":"","Strings":null,"TokenIDs":[1,2,4294967295,0]}',
    ),
    (
        "embeddings-one-empty-string",
        "embeddings",
        {"input": [""]},
        b'{"Raw":"","Strings":[""],"TokenIDs":null}',
    ),
]


@pytest.mark.parametrize(
    ("api", "body", "expected"), [c[1:] for c in PROMPT_CASES], ids=[c[0] for c in PROMPT_CASES]
)
def test_prompt_bytes(api: str, body: dict[str, Any], expected: bytes) -> None:
    assert prompt_bytes(api, body) == expected


PROMPT_ERRORS: list[tuple[str, str, Any, str]] = [
    (
        "unknown-api",
        "images",
        {},
        r"^api: expected one of conversations, responses, .*got 'images'",
    ),
    (
        "body-not-object",
        "completions",
        ["x"],
        r"^body: expected a JSON object, got \['x'\] \(list\)$",
    ),
    (
        "body-int-key",
        "completions",
        {1: "x"},
        r"^body: object keys must be strings, got 1 \(int\)$",
    ),
    (
        "salt-not-string",
        "completions",
        {"prompt": "p", "cache_salt": 5},
        r"^cache_salt: expected a string",
    ),
    # chat/completions
    (
        "chat-no-messages",
        "chat/completions",
        {},
        r"^messages: expected at least one message, got none$",
    ),
    (
        "chat-null-messages",
        "chat/completions",
        {"messages": None},
        r"^messages: expected at least one",
    ),
    (
        "chat-empty-messages",
        "chat/completions",
        {"messages": []},
        r"^messages: expected at least one",
    ),
    (
        "chat-messages-not-list",
        "chat/completions",
        {"messages": "hi"},
        r"^messages: expected a list, got 'hi' \(str\)$",
    ),
    (
        "chat-message-not-object",
        "chat/completions",
        {"messages": [3]},
        r"^messages\[0\]: expected a JSON object, got 3 \(int\)$",
    ),
    (
        "chat-content-int",
        "chat/completions",
        {"messages": [{"content": "a"}, {"content": "b"}, {"role": "user", "content": 3}]},
        r"^messages\[2\]\.content: expected a string or a list of content blocks, got 3 \(int\)$",
    ),
    (
        "chat-content-object",
        "chat/completions",
        {"messages": [{"content": {"text": "x"}}]},
        r"^messages\[0\]\.content: expected a string or a list of content blocks, "
        r"got \{'text': 'x'\} \(dict\)$",
    ),
    (
        "chat-role-int",
        "chat/completions",
        {"messages": [{"role": 1, "content": "x"}]},
        r"^messages\[0\]\.role: expected a string, got 1 \(int\)$",
    ),
    (
        "chat-block-not-object",
        "chat/completions",
        {"messages": [{"content": ["x"]}]},
        r"^messages\[0\]\.content\[0\]: expected a JSON object, got 'x' \(str\)$",
    ),
    (
        "chat-block-type-int",
        "chat/completions",
        {"messages": [{"content": [{"type": 1}]}]},
        r"^messages\[0\]\.content\[0\]\.type: expected a string, got 1 \(int\)$",
    ),
    (
        "chat-block-text-list",
        "chat/completions",
        {"messages": [{"content": [{"type": "text", "text": ["a"]}]}]},
        r"^messages\[0\]\.content\[0\]\.text: expected a string",
    ),
    (
        "chat-image-url-string",
        "chat/completions",
        {"messages": [{"content": [{"type": "image_url", "image_url": "http://x"}]}]},
        r"^messages\[0\]\.content\[0\]\.image_url: expected a JSON object, got 'http://x' \(str\)$",
    ),
    (
        "chat-image-url-url-int",
        "chat/completions",
        {"messages": [{"content": [{"image_url": {"url": 1}}]}]},
        r"^messages\[0\]\.content\[0\]\.image_url\.url: expected a string, got 1 \(int\)$",
    ),
    (
        "chat-audio-format-int",
        "chat/completions",
        {"messages": [{"content": [{"input_audio": {"data": "d", "format": 2}}]}]},
        r"^messages\[0\]\.content\[0\]\.input_audio\.format: expected a string",
    ),
    (
        "chat-video-not-object",
        "chat/completions",
        {"messages": [{"content": [{"video_url": []}]}]},
        r"^messages\[0\]\.content\[0\]\.video_url: expected a JSON object",
    ),
    (
        "chat-tools-not-list",
        "chat/completions",
        {"messages": [{"content": "x"}], "tools": "t"},
        r"^tools: expected a list, got 't' \(str\)$",
    ),
    (
        "chat-tools-nan",
        "chat/completions",
        {"messages": [{"content": "x"}], "tools": [{"w": math.nan}]},
        r"^tools\[0\]\.w: cannot marshal nan",
    ),
    (
        "chat-documents-not-list",
        "chat/completions",
        {"messages": [{"content": "x"}], "documents": {}},
        r"^documents: expected a list",
    ),
    (
        "chat-template-int",
        "chat/completions",
        {"messages": [{"content": "x"}], "chat_template": 1},
        r"^chat_template: expected a string",
    ),
    (
        "chat-bool-field-string",
        "chat/completions",
        {"messages": [{"content": "x"}], "add_generation_prompt": "yes"},
        r"^add_generation_prompt: expected a boolean, got 'yes' \(str\)$",
    ),
    (
        "chat-kwargs-list",
        "chat/completions",
        {"messages": [{"content": "x"}], "chat_template_kwargs": []},
        r"^chat_template_kwargs: expected a JSON object, got \[\] \(list\)$",
    ),
    # completions
    (
        "completions-no-prompt",
        "completions",
        {},
        r"^prompt: expected a string or a list of strings or token ids, got None \(NoneType\)$",
    ),
    (
        "completions-empty-string",
        "completions",
        {"prompt": ""},
        r"^prompt: expected a non-empty string, list of strings or token ids$",
    ),
    ("completions-empty-list", "completions", {"prompt": []}, r"^prompt: expected a non-empty"),
    (
        "completions-int",
        "completions",
        {"prompt": 3},
        r"^prompt: expected a string or a list of strings or token ids, got 3 \(int\)$",
    ),
    (
        "completions-mixed-str-int",
        "completions",
        {"prompt": ["a", 1]},
        r"^prompt\[1\]: expected a string like prompt\[0\], got 1 \(int\)$",
    ),
    (
        "completions-mixed-int-str",
        "completions",
        {"prompt": [1, "a"]},
        r"^prompt\[1\]: expected a token id like the first element, got 'a' \(str\)$",
    ),
    (
        "completions-fractional-token",
        "completions",
        {"prompt": [1, 1.5]},
        r"^prompt\[1\]: expected an integer token id, got 1\.5 \(float\)$",
    ),
    (
        "completions-negative-token",
        "completions",
        {"prompt": [-1]},
        r"^prompt\[0\]: expected a token id in \[0, 4294967295\], got -1 \(int\)$",
    ),
    (
        "completions-token-too-big",
        "completions",
        {"prompt": [4294967296]},
        r"^prompt\[0\]: expected a token id in \[0, 4294967295\]",
    ),
    (
        "completions-token-nan",
        "completions",
        {"prompt": [math.nan]},
        r"^prompt\[0\]: expected an integer token id, got nan",
    ),
    (
        "completions-token-inf",
        "completions",
        {"prompt": [math.inf]},
        r"^prompt\[0\]: expected an integer token id, got inf",
    ),
    (
        "completions-bool-first",
        "completions",
        {"prompt": [True]},
        r"^prompt\[0\]: expected a string or a token id, got True \(bool\)$",
    ),
    (
        "completions-bool-later",
        "completions",
        {"prompt": [1, False]},
        r"^prompt\[1\]: expected a token id like the first element, got False",
    ),
    (
        "completions-null-element",
        "completions",
        {"prompt": [None]},
        r"^prompt\[0\]: expected a string or a token id, got None",
    ),
    (
        "completions-nested-list",
        "completions",
        {"prompt": [[1, 2]]},
        r"^prompt\[0\]: expected a string or a token id, got \[1, 2\] \(list\)$",
    ),
    # embeddings
    (
        "embeddings-no-input",
        "embeddings",
        {},
        r"^input: expected a string or a list of strings or token ids, got None",
    ),
    (
        "embeddings-empty-string",
        "embeddings",
        {"input": ""},
        r"^input: expected a non-empty string",
    ),
    ("embeddings-empty-list", "embeddings", {"input": []}, r"^input: expected a non-empty"),
    (
        "embeddings-object",
        "embeddings",
        {"input": {"a": 1}},
        r"^input: expected a string or a list",
    ),
    (
        "embeddings-mixed",
        "embeddings",
        {"input": ["a", None]},
        r"^input\[1\]: expected a string like input\[0\], got None",
    ),
    # responses
    (
        "responses-no-input",
        "responses",
        {"instructions": "x"},
        r"^input: required for the responses API, got none$",
    ),
    (
        "responses-null-input",
        "responses",
        {"input": None},
        r"^input: required for the responses API",
    ),
    (
        "responses-input-nan",
        "responses",
        {"input": [{"x": math.nan}]},
        r"^input\[0\]\.x: cannot marshal nan",
    ),
    (
        "responses-input-huge-int",
        "responses",
        {"input": [10**400]},
        r"^input\[0\]: number 1000.*\.\.\. is out of float64 range \(Go rejects it\)$",
    ),
    (
        "responses-instructions-int-key",
        "responses",
        {"input": "x", "instructions": {1: "a"}},
        r"^instructions: object keys must be strings, got 1 \(int\)$",
    ),
    (
        "responses-tools-unsupported",
        "responses",
        {"input": "x", "tools": [object()]},
        r"^tools\[0\]: cannot marshal <object object",
    ),
    # conversations
    (
        "conversations-no-items",
        "conversations",
        {},
        r"^items: expected at least one conversation item, got none$",
    ),
    (
        "conversations-empty-items",
        "conversations",
        {"items": []},
        r"^items: expected at least one conversation item",
    ),
    (
        "conversations-items-object",
        "conversations",
        {"items": {"a": 1}},
        r"^items: expected a list, got \{'a': 1\} \(dict\)$",
    ),
    (
        "conversations-item-string",
        "conversations",
        {"items": ["x"]},
        r"^items\[0\]: expected a JSON object, got 'x' \(str\)$",
    ),
    (
        "conversations-type-int",
        "conversations",
        {"items": [{"type": 1}]},
        r"^items\[0\]\.type: expected a string, got 1 \(int\)$",
    ),
    (
        "conversations-role-list",
        "conversations",
        {"items": [{"role": []}]},
        r"^items\[0\]\.role: expected a string",
    ),
    (
        "conversations-content-inf",
        "conversations",
        {"items": [{}, {"content": [math.inf]}]},
        r"^items\[1\]\.content\[0\]: cannot marshal inf",
    ),
    (
        "conversations-metadata-list",
        "conversations",
        {"items": [{}], "metadata": []},
        r"^metadata: expected a JSON object, got \[\] \(list\)$",
    ),
    (
        "conversations-metadata-nan",
        "conversations",
        {"items": [{}], "metadata": {"a": math.nan}},
        r"^metadata\.a: cannot marshal nan",
    ),
]


@pytest.mark.parametrize(
    ("api", "body", "match"), [c[1:] for c in PROMPT_ERRORS], ids=[c[0] for c in PROMPT_ERRORS]
)
def test_prompt_bytes_errors(api: str, body: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        prompt_bytes(api, body)


def test_prompt_bytes_error_values_are_cut_short() -> None:
    with pytest.raises(DataError) as info:
        prompt_bytes("chat/completions", {"messages": [{"content": 10**100}]})
    assert str(info.value) == (
        "messages[0].content: expected a string or a list of content blocks, "
        "got 1000000000000000000000000000000000000... (int)"
    )


def test_prompt_bytes_deep_nesting_is_data_error() -> None:
    value: Any = "x"
    for _ in range(5000):
        value = {"a": value}
    with pytest.raises(DataError, match=r"^input: nested too deeply"):
        prompt_bytes("responses", {"input": value})


_CHAT = {"messages": [{"role": "user", "content": "hi"}]}
_HUGE = 10**5000  # past Python's 4300-digit limit on int <-> str conversion
_DEEP_LIST: Any = 0
for _ in range(5000):
    _DEEP_LIST = [_DEEP_LIST]

HOSTILE: list[tuple[str, str, Any, str]] = [
    (
        "tools-huge-int",
        "chat/completions",
        {**_CHAT, "tools": [{"function": {"parameters": {"x": _HUGE}}}]},
        r"^tools\[0\]\.function\.parameters\.x: number <int of 16610 bits> is out of float64 "
        r"range \(Go rejects it\)$",
    ),
    (
        "tools-huge-negative-int",
        "chat/completions",
        {**_CHAT, "tools": [{"function": {"parameters": {"x": -_HUGE}}}]},
        r"^tools\[0\]\.function\.parameters\.x: number <int of 16610 bits> is out of",
    ),
    (
        "kwargs-huge-int",
        "chat/completions",
        {**_CHAT, "chat_template_kwargs": {"n": [1, _HUGE]}},
        r"^chat_template_kwargs\.n\[1\]: number <int of 16610 bits>",
    ),
    (
        "content-huge-int",
        "chat/completions",
        {"messages": [{"content": _HUGE}]},
        r"^messages\[0\]\.content: expected a string or a list of content blocks, "
        r"got <int of 16610 bits> \(int\)$",
    ),
    (
        "role-huge-int-in-list",
        "chat/completions",
        {"messages": [{"role": [_HUGE]}]},
        r"^messages\[0\]\.role: expected a string, got \[<int of 16610 bits>\] \(list\)$",
    ),
    (
        "prompt-huge-int",
        "completions",
        {"prompt": _HUGE},
        r"^prompt: expected a string or a list of strings or token ids, got <int of 16610",
    ),
    (
        "prompt-huge-token",
        "completions",
        {"prompt": [1, _HUGE]},
        r"^prompt\[1\]: expected a token id in \[0, 4294967295\], got <int of 16610 bits>",
    ),
    (
        "embeddings-huge-token",
        "embeddings",
        {"input": [_HUGE]},
        r"^input\[0\]: expected a token id in \[0, 4294967295\], got <int of 16610 bits>",
    ),
    (
        "responses-huge-int",
        "responses",
        {"input": {"a": _HUGE}},
        r"^input\.a: number <int of 16610 bits> is out of float64 range",
    ),
    (
        "conversations-huge-int",
        "conversations",
        {"items": [{"content": [_HUGE]}]},
        r"^items\[0\]\.content\[0\]: number <int of 16610 bits>",
    ),
    (
        "salt-huge-int",
        "completions",
        {"prompt": "p", "cache_salt": _HUGE},
        r"^cache_salt: expected a string, got <int of 16610 bits> \(int\)$",
    ),
    (
        "huge-int-key",
        "responses",
        {"input": {_HUGE: 1}},
        r"^input: object keys must be strings, got <int of 16610 bits> \(int\)$",
    ),
    (
        "body-huge-int-key",
        "completions",
        {_HUGE: 1},
        r"^body: object keys must be strings, got <int of 16610 bits> \(int\)$",
    ),
    (
        "body-is-huge-int",
        "completions",
        _HUGE,
        r"^body: expected a JSON object, got <int of 16610 bits> \(int\)$",
    ),
    (
        "api-is-huge-int",
        _HUGE,
        {},
        r"^api: expected one of .*, got <int of 16610 bits> \(int\)$",
    ),
    (
        "api-unhashable",
        [],  # a list is no dict key: looking it up must not raise TypeError
        {},
        r"^api: expected one of .*, got \[\] \(list\)$",
    ),
    (
        "tuple-key",
        "responses",
        {"input": {(1, _HUGE): 1}},
        r"^input: object keys must be strings, got \(1, <int of 16610 bits>\) \(tuple\)$",
    ),
    (
        "deep-value-described",  # the repr of a wrong-typed value is cut, never recursed
        "chat/completions",
        {"messages": [{"content": {"a": _DEEP_LIST}}]},
        r"^messages\[0\]\.content: expected a string or a list of content blocks, got "
        r"\{'a': \[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\[\.\.\. \(dict\)$",
    ),
    (
        "deep-prompt-described",
        "completions",
        {"prompt": [[_DEEP_LIST]]},
        r"^prompt\[0\]: expected a string or a token id, got \[\[\[\[\[\[",
    ),
    (
        "deep-tools",
        "chat/completions",
        {**_CHAT, "tools": [{"function": {"parameters": _DEEP_LIST}}]},
        r"^tools: nested too deeply",
    ),
    (
        "nan-in-tools",
        "chat/completions",
        {**_CHAT, "tools": [{"function": {"parameters": {"x": math.nan}}}]},
        r"^tools\[0\]\.function\.parameters\.x: cannot marshal nan: Go rejects NaN",
    ),
    (
        "inf-token",
        "completions",
        {"prompt": [1, -math.inf]},
        r"^prompt\[1\]: expected an integer token id, got -inf \(float\)$",
    ),
    (
        "long-key-in-path-is-cut",
        "responses",
        {"input": {"k" * 100_000: [math.nan]}},
        r"^input\.k{37}\.\.\.\[0\]: cannot marshal nan",
    ),
    (
        "surrogate-key-in-path",
        "responses",
        {"input": {"a\ud800": math.inf}},
        r"^input\.a\ufffd: cannot marshal inf",
    ),
]


@pytest.mark.parametrize(
    ("api", "body", "match"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_prompt_bytes_hostile_values_are_data_errors_naming_the_field(
    api: Any, body: Any, match: str
) -> None:
    with pytest.raises(DataError, match=match) as info:
        prompt_bytes(api, body)
    assert len(str(info.value)) < 400  # values and paths are cut short


def test_go_json_marshal_huge_int_is_data_error() -> None:
    with pytest.raises(DataError, match=r"^value\[0\]: integer <int of 16610 bits> does not fit"):
        go_json_marshal([_HUGE])


def test_cache_salt_huge_int_is_data_error() -> None:
    with pytest.raises(DataError, match=r"^cache_salt: expected a string, got <int of 16610"):
        cache_salt({"cache_salt": _HUGE})


def test_lone_surrogates_are_replaced_not_raised() -> None:
    body = {"messages": [{"role": "u\udfff", "content": [{"type": "text", "text": "\ud800"}]}]}
    got = prompt_bytes("chat/completions", body)
    assert got.decode() == (
        '[{"role":"u\ufffd","content":[{"type":"text","text":"\ufffd","image_url":{},'
        '"input_audio":{},"video_url":{}}]}]'
    )
    assert prompt_bytes("completions", {"prompt": ["\ud800", "x"]}) == "\ufffd x".encode()


def test_prompt_bytes_large_chat_prompt() -> None:
    text = "lorem ipsum <dolor> " * 20_000  # 400 KB, HTML escapes throughout
    got = prompt_bytes("chat/completions", {"messages": [{"role": "user", "content": text}]})
    escaped = text.replace("<", "\\u003c").replace(">", "\\u003e")
    assert got == b'[{"role":"user","content":"' + escaped.encode() + b'"}]'
