"""Configs written to hurt: alias bombs, recursion, depth, huge numbers, credentials.

Each is refused (or shown) at load time, before anything copies or renders the document,
with an error that names the line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from inference_sched._yaml_limits import check_nesting
from inference_sched.errors import ConfigError
from inference_sched.framework.config import load_config

pytestmark = pytest.mark.unit


def _bomb(levels: int) -> str:
    """Each level a list of nine aliases of the level before: 9**levels strings."""
    lines = ["plugins:", "- type: queue-scorer", "  parameters:", '    l0: &l0 ["x"]']
    for k in range(1, levels + 1):
        lines.append(f"    l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_expansion() -> None:
    text = _bomb(9)  # 387 million strings once expanded
    assert len(text) < 600
    with pytest.raises(
        ConfigError,
        match=r"^invalid YAML at line \d+: the document expands to more than 100000 nodes "
        r"\(aliases nested in aliases\)$",
    ):
        load_config(text)


def test_a_modest_bomb_is_refused_too() -> None:
    # 9**6 = 531,441 strings: the old loader expanded it into every error and copy
    with pytest.raises(ConfigError, match=r"expands to more than 100000 nodes"):
        load_config(_bomb(6))


def test_a_few_aliases_are_fine() -> None:
    config = load_config(
        textwrap.dedent(
            """\
            plugins:
            - {type: queue-scorer}
            - {type: max-score-picker, parameters: &picker {maxNumOfEndpoints: 2}}
            - {name: spare, type: max-score-picker, parameters: *picker}
            schedulingProfiles:
            - name: a
              plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
            """
        )
    )
    assert [p.params.max_num_of_endpoints for p in config.plugins[1:3]] == [2, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "a: &a [*a]\n", r"^invalid YAML at line 1: an alias refers to itself$", id="recursive"
        ),
        pytest.param(
            "plugins: " + "[" * 100 + "]" * 100 + "\n",
            r"^invalid YAML at line 1: nested more than 64 levels deep$",
            id="deep",
        ),
        pytest.param(
            "plugins:\n- type: queue-scorer\n  parameters: {x: " + "9" * 5000 + "}\n",
            r"^invalid YAML at line 3: an integer of 5000 digits$",
            id="huge-int",
        ),
    ],
)
def test_hostile_shapes_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(text)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("plugins: " + "[" * 1200 + "]" * 1200 + "\n", 1, id="flow-past-recursion"),
        pytest.param("plugins: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n", 1, id="flow-maps"),
        pytest.param(
            "kind: x\nplugins:\n" + "  [\n" * 70 + "  ]\n" * 70, 67, id="flow-on-many-lines"
        ),
        pytest.param("plugins: \n" + "- " * 2000 + "x\n", 2, id="block-sequences"),
    ],
)
def test_deep_nesting_is_refused_quickly_naming_the_line(text: str, line: int) -> None:
    # Flow nesting is refused from the raw text, before PyYAML's recursive composer and
    # quadratic scanner see it (2000 levels used to take seconds, past ~1000 a
    # RecursionError with no line).
    start = time.perf_counter()
    with pytest.raises(
        ConfigError, match=rf"^invalid YAML at line {line}: nested more than 64 levels deep$"
    ):
        load_config(text)
    assert time.perf_counter() - start < 0.5


def test_deep_block_mappings_name_a_line_not_a_recursion_error() -> None:
    text = "plugins:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 2000)) + "x\n"
    with pytest.raises(
        ConfigError, match=r"^invalid YAML at line \d+: nested more than 64 levels deep$"
    ):
        load_config(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('a: "' + "[" * 100 + '"\n', id="double-quoted"),
        pytest.param("a: '" + "{" * 100 + "'\n", id="single-quoted"),
        pytest.param('a: "\\"' + "[" * 100 + '"\n', id="escaped-quote"),
        pytest.param("a: 1 # " + "[" * 100 + "\n", id="comment"),
        pytest.param("a: [[x]]\n" * 40, id="many-shallow"),
    ],
)
def test_brackets_in_scalars_and_comments_are_not_nesting(text: str) -> None:
    check_nesting(text)  # no error


def test_a_huge_value_is_cut_in_the_error() -> None:
    text = "plugins:\n- type: queue-scorer\n  name: " + "n" * 100_000 + "\n  bogus: 1\n"
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert all(len(str(e)) <= 2200 for e in caught.value.errors)


REDIS = textwrap.dedent(
    """\
    plugins:
    - type: inflight-load-producer
      parameters:
        redis: {address: "redis://admin:hunter2@10.0.0.5:6379/0"}
    - type: active-request-scorer
    - type: max-score-picker
    schedulingProfiles:
    - name: default
      plugins: [{pluginRef: active-request-scorer}, {pluginRef: max-score-picker}]
    """
)


def test_the_effective_config_shows_no_password() -> None:
    config = load_config(REDIS)
    assert "hunter2" not in config.to_yaml()
    assert "redis://admin:***@10.0.0.5:6379/0" in config.to_yaml()
    assert "hunter2" in str(config.to_dict())  # the real value stays usable
    assert "hunter2" not in repr(config)


def test_an_error_about_a_password_url_redacts_it() -> None:
    text = REDIS.replace("redis: {address:", "redis: {timeoutMs: -1, address:")
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert "hunter2" not in str(caught.value)


def test_validate_prints_no_password(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "epp.yaml"  # type: ignore[operator]
    path.write_text(REDIS)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from inference_sched.cli import main; sys.exit(main(sys.argv[1:]))",
            "validate",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout + out.stderr
    assert "***@10.0.0.5" in out.stdout


def test_token_credentials_are_hidden_from_repr_and_the_printed_config() -> None:
    config = load_config(
        "plugins:\n"
        "- type: token-producer\n"
        "  parameters:\n"
        "    modelName: m\n"
        "    udsTokenizerConfig: {socketFile: /tmp/t.sock, huggingFaceToken: hf_SECRET}\n"
        "- type: queue-scorer\n"
    )
    spec = config.plugin("token-producer")
    assert "hf_SECRET" not in repr(spec)
    assert "hf_SECRET" not in repr(spec.params)
    assert "huggingFaceToken: '***'" in config.to_yaml()
    assert "hf_SECRET" not in config.to_yaml()
    # the machine-readable form keeps the value (what a program re-loads)
    assert "hf_SECRET" in repr(config.to_dict())


@pytest.mark.parametrize("sources", [1, "x", {"pluginRef": "a"}, True])
def test_data_layer_sources_of_the_wrong_type_are_a_path_named_error(sources: object) -> None:
    # a Hypothesis finding: an int crashed the default-source injection
    with pytest.raises(ConfigError, match=r"dataLayer\.sources: expected a list"):
        load_config({"dataLayer": {"sources": sources}})
