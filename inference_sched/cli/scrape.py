"""``inference-sched scrape``: point the data layer at real model servers and see what
the scheduler would read (a config's ``dataLayer`` section, real HTTP, real parsing)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from inference_sched.datalayer.discovery import (
    FileDiscovery,
    StaticDiscovery,
    apply,
    discovery_from_config,
)
from inference_sched.datalayer.notifications import attach_notification_sources
from inference_sched.datalayer.scraper import Scraper, scrapers_for
from inference_sched.errors import ConfigError
from inference_sched.framework.config import load_config, load_config_file
from inference_sched.framework.scheduler import Scheduler

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register ``scrape`` on the main parser's subcommands."""
    scrape = sub.add_parser(
        "scrape",
        help="scrape model servers' /metrics with a config's data layer and print what "
        "the scheduler reads",
    )
    scrape.add_argument("--config", type=Path, help="EndpointPickerConfig YAML (default: GIE's)")
    scrape.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="[NAME=]HOST:PORT",
        help="a model server (repeatable)",
    )
    scrape.add_argument(
        "--endpoints-file", type=Path, help="YAML/JSON endpoint list (see docs/discovery.md)"
    )
    scrape.add_argument(
        "--interval", type=float, default=0.05, help="seconds between scrapes (GIE: 0.05)"
    )
    scrape.add_argument("--duration", type=float, default=2.0, help="seconds to run")
    scrape.add_argument(
        "--request-families",
        action="store_true",
        help="ask servers for the engine's families only (prometheus-client name[] filter)",
    )
    scrape.add_argument("--json", action="store_true", help="machine-readable output")
    scrape.set_defaults(func=_cmd_scrape)


def _cmd_scrape(args: argparse.Namespace) -> int:
    if not (args.interval > 0 and args.duration > 0):
        raise ConfigError("--interval and --duration must be > 0")
    config = load_config_file(args.config) if args.config else load_config(None)
    scheduler = Scheduler.from_config(config)
    attach_notification_sources(config, scheduler.table, plugins=scheduler.plugins)
    if args.endpoint or args.endpoints_file is not None:
        discovery = (
            FileDiscovery(args.endpoints_file)
            if args.endpoints_file is not None
            else StaticDiscovery(args.endpoint)
        )
        apply(scheduler.table, discovery.endpoints())
    else:  # the config's dataLayer.discovery.pluginRef (file-discovery), if any
        runner = discovery_from_config(config, scheduler.table, plugins=scheduler.plugins)
        if runner is None:
            raise ConfigError(
                "give --endpoint HOST:PORT (repeatable) or --endpoints-file PATH, or a "
                "config with dataLayer.discovery.pluginRef"
            )
        runner.start()
    scrapers = scrapers_for(
        scheduler, interval_s=args.interval, request_families=args.request_families
    )
    if not scrapers:
        raise ConfigError("the config's dataLayer has no sources: nothing to scrape")
    asyncio.run(_run(scrapers, args.duration))
    rows = _rows(scheduler, scrapers)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return 0 if all(r["ok"] for r in rows) else 1


async def _run(scrapers: list[Scraper], duration_s: float) -> None:
    tasks = [asyncio.create_task(s.run()) for s in scrapers]
    await asyncio.sleep(duration_s)
    for scraper in scrapers:
        scraper.stop()
    await asyncio.gather(*tasks)


def _rows(scheduler: Scheduler, scrapers: list[Scraper]) -> list[dict[str, Any]]:
    table = scheduler.table
    now = table.clock()
    rows = []
    for endpoint in table:
        row = table.row(endpoint.name)
        metrics = table.metrics_of(endpoint.name)
        status = scrapers[0].status(endpoint.name)
        running, waiting = table.adapters_of(row)
        age = now - metrics["last_update_s"]
        rows.append(
            {
                "endpoint": endpoint.name,
                "ok": status.errors_total == 0 and math.isfinite(age),
                "waiting": metrics["waiting"],
                "running": metrics["running"],
                "kv_usage_frac": metrics["kv_usage_frac"],
                "block_size": metrics["block_size_tokens"],
                "kv_blocks": metrics["kv_blocks_total"],
                "max_loras": metrics["max_loras"],
                "running_adapters": sorted(running),
                "waiting_adapters": sorted(waiting),
                "age_s": round(age, 3) if math.isfinite(age) else None,
                "errors": status.errors_total,
                "last_error": status.last_error,
                "missing": list(status.missing),
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="what the scheduler reads")
    for column in ("endpoint", "waiting", "running", "kv", "blocks", "LoRA", "age", "errors"):
        out.add_column(column)
    for r in rows:
        out.add_row(
            r["endpoint"],
            f"{r['waiting']:g}",
            f"{r['running']:g}",
            f"{r['kv_usage_frac']:.3f}",
            f"{r['kv_blocks']:g} x {r['block_size']:g}",
            ",".join(r["running_adapters"]) or "-",
            "never" if r["age_s"] is None else f"{r['age_s']:.2f}s",
            str(r["errors"]),
        )
    console = Console(file=sys.stdout, width=120)
    console.print(out)
    for r in rows:
        if r["last_error"]:
            console.print(f"{r['endpoint']}: last error: {r['last_error']}", markup=False)
        if r["missing"]:
            console.print(f"{r['endpoint']}: missing {', '.join(r['missing'])}", markup=False)
