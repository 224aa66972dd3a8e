"""llm-d-router's estimate backend (tokenize/estimate.py): the bytes of each request kind,
their packing, multimodal placeholder runs, image headers, video headers, pass-through
ids and errors. Expected bytes are written out from llm-d-router's ``estimate.go`` /
``mm_estimate.go`` (the Go json.Marshal output spelled by hand)."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import DataError
from inference_sched.prefix.prompt_bytes import go_json_marshal, prompt_bytes
from inference_sched.tokenize.estimate import (
    Estimator,
    Feature,
    ImageEstimate,
    VideoEstimate,
    VideoMeta,
    detect_api,
    pack_bytes,
    video_meta_from_headers,
)
from inference_sched.tokenize.images import base64_image_size, data_url_image_size, image_size

pytestmark = pytest.mark.unit


def reference_pack(raw: bytes) -> list[int]:
    """llm-d-router ``packBytes``, spelled as its loop: pad, then one LE uint32 per 4."""
    padded = raw + b"\0" * (-len(raw) % 4)
    return [struct.unpack_from("<I", padded, i)[0] for i in range(0, len(padded), 4)]


def estimator(image: ImageEstimate | None = None, video: VideoEstimate | None = None) -> Estimator:
    return Estimator(
        image or ImageEstimate(),
        video or VideoEstimate(),
        marshal=go_json_marshal,
        gie_bytes=prompt_bytes,
    )


def mm_token(content: str) -> tuple[bytes, str]:
    digest = xxhash.xxh64_intdigest(content.encode())
    return struct.pack("<I", digest & 0xFFFFFFFF), format(digest, "x")


def png(width: int, height: int, color: int = 2, depth: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(data, zlib.crc32(kind))
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    extra = chunk(b"PLTE", b"\0\0\0") if color == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IEND", b"")


def jpeg(width: int, height: int, jfif: bool = True) -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" if jfif else b""
    sof = (
        b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\x01\x22\x00" * 3
    )
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + sof + sos


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


# ------------------------------------------------------------------ packing
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", []),
        (b"a", [0x61]),
        (b"abcd", [0x64636261]),
        (b"abcde", [0x64636261, 0x65]),
        (b"\xff\xff\xff\xff\x01", [0xFFFFFFFF, 1]),
    ],
    ids=["empty", "one", "four", "five", "high-bits"],
)
def test_pack_bytes_vectors(raw: bytes, expected: list[int]) -> None:
    ids = pack_bytes(raw)
    assert ids.dtype == np.uint32
    assert ids.tolist() == expected


@given(st.binary(max_size=300))
def test_pack_bytes_equals_the_reference_construction(raw: bytes) -> None:
    ids = pack_bytes(raw)
    assert ids.tolist() == reference_pack(raw)
    assert ids.tobytes()[: len(raw)] == raw  # reinterpreting the ids gives the input back


# ------------------------------------------------------------------ chat completions
CHAT_CASES: list[tuple[str, dict[str, Any], bytes]] = [
    ("string", {"messages": [{"role": "user", "content": "hi"}]}, b"userhi"),
    (
        "turns",
        {
            "messages": [
                {"role": "system", "content": "Be <brief>."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text"}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
                {"role": "user", "content": ""},
            ]
        },
        b"systemBe <brief>.useraassistantuser",
    ),
    (
        "tools-sorted-go-json",
        {
            "tools": [{"type": "function", "function": {"name": "f<", "b": 1.0, "a": [2, 1e21]}}],
            "messages": [{"role": "user", "content": "q"}],
        },
        b'[{"function":{"a":[2,1e+21],"b":1,"name":"f\\u003c"},"type":"function"}]userq',
    ),
    ("empty-tools", {"tools": [], "messages": [{"role": "user", "content": "q"}]}, b"userq"),
    (
        "utf8",
        {"messages": [{"role": "user", "content": "h\u00e9\ud800"}]},
        b"userh\xc3\xa9\xef\xbf\xbd",
    ),
]


@pytest.mark.parametrize(
    ("body", "raw"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES]
)
def test_chat_bytes(body: dict[str, Any], raw: bytes) -> None:
    result = estimator().estimate(body)
    assert result.estimated
    assert len(result.prompts) == 1
    assert result.prompts[0].tolist() == reference_pack(raw)
    assert result.features == ()


def test_chat_image_and_video_runs_are_aligned_and_reported() -> None:
    image_url = "https://example.com/cat.png"
    small = data_url(png(64, 32))
    video_url = "https://example.com/clip.mp4"
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},  # "userlook": 8 bytes, aligned
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": "and"},
                    {"type": "image_url", "image_url": {"url": small}},
                    {"type": "video_url", "video_url": {"url": video_url}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                ],
            }
        ]
    }
    headers = {"x-llm-d-video-duration-seconds": "4", "x-llm-d-video-resolution": "320x240"}
    result = estimator().estimate(body, headers)
    img_token, img_hash = mm_token(image_url)
    small_token, small_hash = mm_token(small)
    vid_token, vid_hash = mm_token(video_url)
    # image: 640*360//1024 = 225; small: 64*32//1024 = 2; video: 4 s * 2 fps = 8 frames
    # of 320*240//1024 = 75 tokens = 600. "and" (3 bytes) is padded to a token first.
    raw = b"userlook" + img_token * 225 + b"and\0" + small_token * 2 + vid_token * 600
    assert result.prompts[0].tolist() == reference_pack(raw)
    assert result.features == (
        Feature("image", img_hash, 2, 225),
        Feature("image", small_hash, 228, 2),
        Feature("video", vid_hash, 230, 600),
    )


# ------------------------------------------------------------------ placeholder counts
@pytest.mark.parametrize(
    ("image", "size", "count"),
    [
        (ImageEstimate(), None, 225),
        (ImageEstimate(), (10, 10), 1),
        (ImageEstimate(), (1024, 1024), 1024),
        (ImageEstimate(factor=256), (64, 64), 16),
        (ImageEstimate(default_width=100, default_height=100, factor=10), None, 1000),
        (ImageEstimate(mode="static", static_tokens=7), (4000, 4000), 7),
        (ImageEstimate(mode="static"), None, 1),
    ],
    ids=["default", "tiny-floor-1", "1k", "factor", "default-res", "static", "static-zero"],
)
def test_image_counts(image: ImageEstimate, size: tuple[int, int] | None, count: int) -> None:
    assert image.count(size) == count


@pytest.mark.parametrize(
    ("video", "meta", "count"),
    [
        (VideoEstimate(), VideoMeta(), 10 * 2 * 225),
        (VideoEstimate(), VideoMeta(duration_s=1.9), 3 * 225),
        (VideoEstimate(temporal_patch_size=2, max_frames=16), VideoMeta(), 8 * 225),
        (VideoEstimate(min_frames=40), VideoMeta(duration_s=1), 40 * 225),
        (VideoEstimate(max_video_tokens=1000), VideoMeta(), 1000),
        (
            VideoEstimate(
                frames_mode="strided",
                frame_stride=4,
                tokens_per_frame_mode="static",
                static_tokens_per_frame=256,
            ),
            VideoMeta(duration_s=2, fps=30),
            15 * 256,
        ),
        (VideoEstimate(frames_mode="strided"), VideoMeta(duration_s=1), 24 * 225),
        (VideoEstimate(frames_mode="strided", source_fps=10), VideoMeta(), 100 * 225),
        (VideoEstimate(), VideoMeta(width=32, height=32), 20),
        (VideoEstimate(default_duration_s=0.2), VideoMeta(), 1),
    ],
    ids=[
        "default",
        "truncated",
        "temporal-merge",
        "min-frames",
        "cap",
        "gemma4-strided",
        "strided-default-fps",
        "strided-config-fps",
        "tiny-frames",
        "zero-frames-floor-1",
    ],
)
def test_video_counts(video: VideoEstimate, meta: VideoMeta, count: int) -> None:
    assert video.count(meta) == count


@pytest.mark.parametrize(
    ("headers", "meta"),
    [
        ({}, VideoMeta()),
        (
            {
                "x-llm-d-video-fps": "29.97",
                "x-llm-d-video-duration-seconds": "1e1",
                "x-llm-d-video-resolution": " 1280 X 720",
            },
            VideoMeta(1280, 720, 10.0, 29.97),
        ),
        (
            {
                "x-llm-d-video-fps": "-1",
                "x-llm-d-video-duration-seconds": "inf",
                "x-llm-d-video-resolution": "x720",
            },
            VideoMeta(),
        ),
        ({"x-llm-d-video-resolution": "640x0"}, VideoMeta()),
        ({"x-llm-d-video-duration-seconds": "nan"}, VideoMeta()),
    ],
    ids=["none", "all", "malformed", "zero-height", "nan"],
)
def test_video_headers(headers: dict[str, str], meta: VideoMeta) -> None:
    assert video_meta_from_headers(headers) == meta


# ------------------------------------------------------------------ image headers
def test_image_headers() -> None:
    assert image_size(png(64, 32)) == (64, 32)
    assert image_size(png(3, 5, color=3, depth=4)) == (3, 5)
    assert image_size(png(0, 5)) is None
    assert image_size(png(3, 5, color=2, depth=4)) is None  # bad depth for RGB
    broken = bytearray(png(8, 8))
    broken[20] ^= 1  # CRC mismatch
    assert image_size(bytes(broken)) is None
    assert image_size(jpeg(300, 200)) == (300, 200)
    assert image_size(jpeg(300, 200, jfif=False)) == (300, 200)  # read up to SOS
    assert image_size(jpeg(300, 200)[:-14].replace(b"\xff\xe0", b"\xff\xe1", 1)) is None
    assert image_size(b"GIF89a" + struct.pack("<HH", 7, 9) + b"\x00\x00\x00") == (7, 9)
    assert image_size(b"GIF89a" + struct.pack("<HH", 7, 9) + b"\x80\x00\x00") is None
    assert image_size(b"RIFF....WEBP") is None
    assert base64_image_size(base64.b64encode(png(4, 4)).decode()) == (4, 4)
    wrapped = base64.encodebytes(png(4, 4)).decode()  # line breaks every 76 chars
    assert base64_image_size(wrapped) == (4, 4)
    assert base64_image_size("not base64!") is None
    assert data_url_image_size(data_url(png(4, 4))) == (4, 4)
    assert data_url_image_size("data:text/plain;base64,AAAA") is None
    assert data_url_image_size("https://x/y.png") is None


# ------------------------------------------------------------------ anthropic messages
def test_anthropic_messages_bytes() -> None:
    pixel = base64.b64encode(png(2048, 1024)).decode()
    body = {
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1; ch=abc"},
            {"type": "text", "text": "You are terse."},
        ],
        "tools": [{"name": "get", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "redacted_thinking", "data": "zzz"},
                    {"type": "tool_use", "id": "t1", "name": "get", "input": {"k": "v", "a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "r1"},
                            {"type": "image", "source": {"type": "base64", "data": pixel}},
                            {"type": "text", "text": "r2"},
                        ],
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": pixel},
                    },
                ],
            },
        ],
    }
    result = estimator().estimate(body)
    tool_image = f"data:image/jpeg;base64,{pixel}"  # llm-d fills in the JPEG media type
    tool_token, tool_hash = mm_token(tool_image)
    raw_token, raw_hash = mm_token(pixel)  # a base64 source hashes its raw data
    head = (
        b'[{"input_schema":{"type":"object"},"name":"get"}]'
        b"You are terse.userhiassistanthmmt1get"
        b'{"k":"v","a":1}'
        b"userr1\nr2"
    )
    assert len(head) == 110  # padded to 112 bytes: the first run starts at token 28
    raw = head + b"\0\0" + tool_token * 2048 + raw_token * 2048
    assert result.prompts[0].tolist() == reference_pack(raw)
    assert result.features == (
        Feature("image", tool_hash, 28, 2048),
        Feature("image", raw_hash, 28 + 2048, 2048),
    )


def test_anthropic_system_string_and_url_image() -> None:
    body = {
        "system": "S",
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}
        ],
    }
    token, digest = mm_token("u")
    result = estimator().estimate(body)
    assert result.prompts[0].tolist() == reference_pack(b"Suser" + b"\0\0\0" + token * 225)
    assert result.features == (Feature("image", digest, 2, 225),)


# ------------------------------------------------------------------ other kinds
def test_completions_prompts() -> None:
    est = estimator()
    assert est.estimate({"prompt": "abcde"}).prompts[0].tolist() == [0x64636261, 0x65]
    multi = est.estimate({"prompt": ["ab", "", "cdefg"]})
    assert [p.tolist() for p in multi.prompts] == [[0x6261], [], [0x66656463, 0x67]]
    assert multi.token_count() == 3
    ids = est.estimate({"prompt": [1, 2.0, 4294967295]})
    assert not ids.estimated
    assert ids.prompts[0].tolist() == [1, 2, 4294967295]
    passed = est.estimate({"prompt_token_ids": [9, 8]})
    assert not passed.estimated
    assert passed.prompts[0].tolist() == [9, 8]


def test_gie_json_kinds() -> None:
    est = estimator()
    responses = {"input": "hi", "instructions": "be <nice>", "tools": [{"b": 1, "a": 2}]}
    raw = b'[{"instructions":"be \\u003cnice\\u003e"},{"tools":[{"a":2,"b":1}]},{"input":"hi"}]'
    assert prompt_bytes("responses", responses) == raw
    assert est.estimate(responses).prompts[0].tolist() == reference_pack(raw)
    conversations = {"items": [{"type": "message", "role": "user", "content": "yo"}]}
    raw = b'[{"type":"message","role":"user","content":"yo"}]'
    assert est.estimate(conversations).prompts[0].tolist() == reference_pack(raw)
    embeddings = {"input": ["a", "b"]}
    raw = b'{"Raw":"","Strings":["a","b"],"TokenIDs":null}'
    assert est.estimate(embeddings).prompts[0].tolist() == reference_pack(raw)
    ids = est.estimate({"input": [3, 4]})
    assert not ids.estimated
    assert ids.prompts[0].tolist() == [3, 4]


def test_generate_ids_and_features_pass_through() -> None:
    body = {
        "token_ids": [1, 2, 3, 4, 5, 6],
        "features": {
            "mm_hashes": {"video": ["v0"], "image": ["i0", "i1"]},
            "mm_placeholders": {
                "video": [{"offset": 4, "length": 2}],
                "image": [{"offset": 0, "length": 1}, {"offset": 2, "length": 1}],
            },
        },
    }
    result = estimator().estimate(body)
    assert not result.estimated
    assert result.prompts[0].tolist() == [1, 2, 3, 4, 5, 6]
    assert result.features == (
        Feature("image", "i0", 0, 1),
        Feature("image", "i1", 2, 1),
        Feature("video", "v0", 4, 2),
    )
    assert estimator().estimate({"input_ids": [7]}).prompts[0].tolist() == [7]


def test_bare_prompt_bytes() -> None:
    assert estimator().estimate_prompt(b"hello").prompts[0].tolist() == [0x6C6C6568, 0x6F]


@pytest.mark.parametrize(
    ("body", "headers", "api"),
    [
        ({"messages": []}, {}, "chat/completions"),
        ({"messages": [], "system": "s"}, {}, "messages"),
        ({"messages": []}, {"anthropic-version": "2023-06-01"}, "messages"),
        ({"messages": [{"content": [{"type": "tool_result"}]}]}, {}, "messages"),
        ({"prompt": "x"}, {}, "completions"),
        ({"input": "x"}, {}, "responses"),
        ({"input": "x", "encoding_format": "float"}, {}, "embeddings"),
        ({"input": ["x"]}, {}, "embeddings"),
        ({"input": [{"role": "user"}]}, {}, "responses"),
        ({"items": []}, {}, "conversations"),
        ({"token_ids": [1]}, {}, "generate"),
        ({"input": "x"}, {":path": "/v1/embeddings?x=1"}, "embeddings"),
        ({"prompt": "x"}, {":path": "/v1/chat/completions/"}, "chat/completions"),
        ({"prompt": "x"}, {"x-original-path": "/inference/v1/generate"}, "generate"),
        ({"messages": []}, {":path": "/v1/messages"}, "messages"),
        ({"prompt": "x"}, {":path": "/v1/unknown"}, "completions"),
    ],
)
def test_detect_api(body: dict[str, Any], headers: dict[str, str], api: str) -> None:
    assert detect_api(body, headers) == api


@pytest.mark.parametrize(
    ("body", "headers", "match"),
    [
        ({"model": "m"}, {}, "unsupported request body"),
        ({"messages": []}, {}, "messages: expected at least one message"),
        ({"messages": [{"role": 3}]}, {}, r"messages\[0\]\.role: expected a string"),
        ({"messages": [{"role": "u", "content": 5}]}, {}, r"messages\[0\]\.content"),
        ({"tools": {}, "messages": [{"role": "u"}]}, {}, "tools: expected a list"),
        ({"prompt": ""}, {}, "prompt: expected a non-empty"),
        ({"prompt": ["a", 1]}, {}, "prompt: mixed types"),
        ({"prompt": [1, -1]}, {}, r"prompt\[1\]: expected a token id"),
        ({"prompt": [1.5]}, {}, r"prompt\[0\]: expected a token id"),
        ({"prompt": [True]}, {}, "prompt: expected a flat list"),
        ({"token_ids": []}, {}, "token_ids: expected at least one"),
        ({"items": []}, {}, "items: expected at least one"),
        ({"prompt": "x"}, {":path": "/v1/messages/count_tokens"}, "no prompt to estimate"),
    ],
)
def test_bad_bodies_raise_data_errors(
    body: dict[str, Any], headers: dict[str, str], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        estimator().estimate(body, headers)


def test_a_long_chat_packs_without_per_character_work() -> None:
    text = "x" * 1_000_001
    result = estimator().estimate({"messages": [{"role": "user", "content": text}]})
    assert len(result.prompts[0]) == (4 + 1_000_001 + 3) // 4
    assert result.prompts[0][-1] == 0x78  # "x" then three pad bytes
