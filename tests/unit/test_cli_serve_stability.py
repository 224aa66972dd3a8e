"""``serve`` refuses Alpha plugin types unless ``--allow-experimental-plugins`` (as
llm-d-router's ``ValidatePluginStability``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from inference_sched.cli import serve as serve_cli
from inference_sched.framework.config import load_config

ALPHA = """
plugins:
- type: utilization-filter
  parameters: {conditions: [{metric: waiting-queue, maxValue: 5}]}
- {type: session-affinity-scorer, name: sticky}
- type: queue-scorer
"""


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", "--endpoint", "a=127.0.0.1:9", *argv])


def test_alpha_instances_are_listed_by_name_and_type() -> None:
    assert serve_cli.experimental_plugins(load_config(ALPHA)) == [
        "utilization-filter (utilization-filter)",
        "sticky (session-affinity-scorer)",
    ]
    assert serve_cli.experimental_plugins(load_config(None)) == []  # GIE's default


def test_serve_refuses_alpha_plugins_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "epp.yaml"
    config.write_text(ALPHA)
    assert serve_cli.run(_args("--config", str(config))) == 2
    err = capsys.readouterr().err
    assert "experimental (Alpha) plugins: utilization-filter (utilization-filter)" in err
    assert "--allow-experimental-plugins" in err


def test_the_flag_lets_them_through() -> None:
    options = serve_cli.options_from_args(_args("--config-text", ALPHA))
    assert serve_cli._check_stability(options, allow=True) is None
    refused = serve_cli._check_stability(options, allow=False)
    assert refused is not None
    assert "sticky (session-affinity-scorer)" in refused
