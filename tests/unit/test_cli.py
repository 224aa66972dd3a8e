"""The inference-sched command line: plugins, validate, demo."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from inference_sched.cli import main


def test_plugins_lists_types_kinds_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["TYPE", "KINDS", "STABILITY", "SOURCE"]
    line = next(line for line in out.splitlines() if line.startswith("inflight-load-producer "))
    assert "data-producer,pre-request,response-streaming,response-complete" in line
    assert "inference-sched (built-in)" in line


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {row["type"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["max-score-picker"]["kinds"] == ["picker"]
    assert rows["queue-scorer"]["error"] is None
    assert rows["topology-affinity-filter"]["stability"] == "alpha"
    assert rows["by-label"]["replaced_by"] == "label-selector-filter"
    assert rows["by-label"]["deprecated"] is True
    assert rows["disaggregatedset-rollout-screener"]["kinds"] == ["response-received", "screener"]
    assert rows["file-discovery"]["kinds"] == ["endpoint-discovery"]


def test_simulate_multicluster_runs_its_own_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    argv = ["simulate-multicluster", "--duration", "2", "--rate", "10", "--policy", "random"]
    assert main([*argv, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("random ")
    done = out.split("completed ", 1)[1].split()[0].split("/")
    assert done[0] == done[1]  # every request of the (Poisson) workload completed
    assert json.loads(report.read_text())


def test_validate_prints_the_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("plugins:\n- type: queue-scorer\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "single-profile-handler" in out
    assert "max-score-picker" in out
    assert "pluginRef: queue-scorer" in out


def test_validate_reports_every_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "plugins:\n- type: queue-scorrer\n- type: max-score-picker\n"
        "  parameters: {maxNumOfEndpoints: 0}\n"
    )
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "plugins[0].type" in err
    assert "did you mean 'queue-scorer'" in err
    assert "plugins[1].parameters.maxNumOfEndpoints: expected int >= 1, got 0 (int)" in err


def test_validate_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["validate", "-"]) == 0
    out = capsys.readouterr().out
    assert "weight: 3" in out  # GIE's default: prefix-cache-scorer weight 3


def test_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent/epp.yaml"]) == 1
    assert "/nonexistent/epp.yaml" in capsys.readouterr().err


def test_demo_runs_the_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--requests", "300", "--endpoints", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "300 decisions over 8 endpoints" in out
    assert "picks per endpoint" in out
    assert "queue-scorer" in out


def test_demo_with_a_bad_config_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("plugins: 3\n")
    assert main(["demo", "--config", str(path), "--requests", "10"]) == 1
    assert "error:" in capsys.readouterr().err
