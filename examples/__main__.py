"""``python -m examples``: run the example sagas and show what happened.

Starts orders and model deployments (some succeed, one after retries, some fail and are
compensated), runs them to the end in this process like ``sagad`` would, prints each saga's
history and the fake services' final state, and exits 0 only if every saga ended as
expected and the services show it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from examples.app import ExampleApp, build_app
from examples.db import async_url
from examples.scenarios import (
    Check,
    ScenarioResult,
    check_outcome,
    demo_scenarios,
    run_scenarios,
    summarize_history,
)
from saga_core import SagaDefinition, SagaError, SagaStatus
from saga_core.settings import mask_url

OUTCOME_STYLE = {
    "SUCCESS": "green",
    "ERROR": "red",
    "TIMEOUT": "yellow",
    "NOTHING_TO_COMPENSATE": "dim",
    "NOT_COMPENSATED": "dim",
}
STATUS_STYLE = {
    SagaStatus.COMPLETED: "bold green",
    SagaStatus.COMPENSATED: "bold yellow",
    SagaStatus.FAILED: "bold red",
    SagaStatus.ABORTED: "bold red",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples",
        description="Run the example sagas (orders, model deployment) and print what happened.",
        epilog="Keep the database to inspect it afterwards, e.g. "
        "--database-url sqlite+aiosqlite:///saga-demo.db",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (postgresql+asyncpg://... or sqlite+aiosqlite:///file.db); "
        "default: a fresh SQLite file in a temporary directory, removed afterwards",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=20.0,
        help="give up on sagas still running after this many seconds (default: 20)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show saga_core's log on stderr"
    )
    return parser.parse_args(argv)


def outcomes_text(outcomes: list[str]) -> Text:
    text = Text()
    for i, outcome in enumerate(outcomes):
        if i:
            text.append(", ")
        text.append(outcome, style=OUTCOME_STYLE.get(outcome, ""))
    return text


def undo_note(definition: SagaDefinition | None, step_id: str) -> str:
    """The first line of a step's ``compensate`` docstring: what undoing it means."""
    if definition is None or step_id not in definition.step_ids:
        return ""
    spec = definition.step(step_id)
    doc = inspect.getdoc(type(spec.step).compensate) if spec.has_compensation else None
    return doc.splitlines()[0] if doc else ""


def saga_table(result: ScenarioResult, definition: SagaDefinition | None) -> Table:
    sc = result.scenario
    mark = ("✓", "green") if result.ok else (f"✗ expected {sc.expected.value}", "red")
    title = Text.assemble(
        (sc.saga_name, "bold"),
        f" {result.aggregation_id} → ",
        (result.status.value, STATUS_STYLE.get(result.status, "bold")),
        " ",
        mark,
        (f"\n{sc.title} · saga {str(result.saga_id)[:8]}", "dim"),
    )
    table = Table(
        title=title,
        title_justify="left",
        show_header=True,
        header_style="dim",
        expand=False,
    )
    table.add_column("phase")
    table.add_column("step")
    table.add_column("attempts")
    table.add_column("errors / notes", style="dim", overflow="fold")
    for line in summarize_history(result.saga.step_history):
        note = "\n".join(dict.fromkeys(line.errors))  # each distinct error once, in order
        if not note and line.phase == "compensate":
            note = undo_note(definition, line.step_id)
        table.add_row(line.phase, line.step_id, outcomes_text(line.outcomes), Text(note))
    return table


def services_tables(app: ExampleApp[Any]) -> list[Table]:
    inv, pay, ship = app.orders.inventory, app.orders.payments, app.orders.shipping
    stock = Table(title="Inventory", title_justify="left")
    for col in ("sku", "initial", "available", "reserved"):
        stock.add_column(col, justify="right" if col != "sku" else "left")
    for sku, initial in inv.initial.items():
        held = sum(r.quantity for r in inv.reservations.values() if r.sku == sku)
        stock.add_row(sku, str(initial), str(inv.stock[sku]), str(held))

    charges = Table(
        title=f"Payments ({pay.calls} gateway calls, {len(pay.charges)} charges)",
        title_justify="left",
    )
    for col in ("charge", "order", "amount", "state"):
        charges.add_column(col)
    for c in pay.charges.values():
        state = Text("refunded", "yellow") if c.refunded else Text("captured", "green")
        charges.add_row(c.charge_id, c.order_id, f"{c.amount_cents / 100:.2f}", state)

    shipments = Table(title=f"Shipping ({ship.attempts} booking attempts)", title_justify="left")
    for col in ("shipment", "order", "address"):
        shipments.add_column(col)
    for shipment_id, s in ship.shipments.items():
        shipments.add_row(shipment_id, s.order_id, s.address)

    gpus, platform, router = app.deploy.gpus, app.deploy.platform, app.deploy.router
    cluster = Table(
        title=f"Deployments (GPU pool: {gpus.in_use} of {gpus.capacity} in use)",
        title_justify="left",
    )
    for col in ("id", "image", "GPUs", "state", "probes", "route"):
        cluster.add_column(col)
    routes = {url: name for name, url in router.routes.items()}
    for box in platform.containers.values():
        style = {"running": "green", "torn_down": "yellow"}.get(box.state, "")
        res = box.gpu_reservation_id
        route = routes.get(f"http://{box.deployment_id}.svc:8080")
        cluster.add_row(
            box.deployment_id,
            box.image,
            f"{gpus.reservations[res]} held"
            if res in gpus.reservations
            else f"{gpus.released.get(res, '?')} released",
            Text(box.state, style),
            str(box.probes),
            f"/{route}" if route else "-",
        )
    return [stock, charges, shipments, cluster]


def checks_table(checks: list[Check]) -> Table:
    table = Table(title="Checks", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("check")
    table.add_column("detail", style="dim")
    for c in checks:
        table.add_row(
            Text("✓", "green") if c.ok else Text("✗", "red"), Text(c.name), Text(c.detail)
        )
    return table


async def run(database_url: str, deadline_s: float, console: Console, *, keep: bool) -> bool:
    app = build_app(database_url)
    try:
        await app.orchestrator.create_tables()
        scenarios = demo_scenarios(app)
        console.print(
            Text.assemble(
                ("saga_core demo", "bold"),
                f": {len(scenarios)} sagas\ndatabase: {mask_url(database_url)}\n",
            )
        )
        began = time.monotonic()
        results = await run_scenarios(app, scenarios, deadline_s=deadline_s)
        elapsed = time.monotonic() - began
    finally:
        await app.aclose()

    definitions = app.orchestrator.engine.definitions
    for result in results:
        console.print(saga_table(result, definitions.get(result.scenario.saga_name)))
        console.print()
    console.rule("Fake services after the run")
    for table in services_tables(app):
        console.print(table)
        console.print()
    checks = check_outcome(app, results)
    console.print(checks_table(checks))
    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(
            f"\n[bold red]FAILED[/]: {len(failed)} of {len(checks)} checks did not hold "
            f"(ran {elapsed:.1f}s)."
        )
        return False
    console.print(
        f"\n[bold green]OK[/]: every saga ended as expected and every check held "
        f"({len(results)} sagas in {elapsed:.1f}s)."
    )
    said, command = inspect_hint(database_url, kept=keep)
    console.print(Text(said, "dim"))
    # On a line of its own and never wrapped by rich, so it can be copied as it is.
    console.print(Text(f"  {command}", "bold"), soft_wrap=True)
    return True


def sagactl_command() -> str:
    """``sagactl`` as the shell that started the demo can run it: the plain name when that
    is the one on PATH (an activated virtualenv), else the path of the one installed next
    to this interpreter (``.venv/bin/sagactl`` from the project directory)."""
    beside = Path(sys.executable).with_name("sagactl")
    if not beside.exists():
        return "sagactl"
    on_path = shutil.which("sagactl")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "sagactl"
    relative = os.path.relpath(beside)
    return shlex.quote(beside.as_posix() if relative.startswith("..") else relative)


def inspect_hint(database_url: str, *, kept: bool) -> tuple[str, str]:
    """The demo's closing hint and its command, which works as typed in the same shell and
    directory (``SAGA_DEMO_COMMAND``: how ``scripts/demo.sh`` was started)."""
    if not kept:
        demo = os.environ.get("SAGA_DEMO_COMMAND") or f"{shlex.quote(sys.executable)} -m examples"
        return (
            "The sagas ran on a temporary database, now removed. To keep them and look at "
            "them with sagactl afterwards, run:",
            f"{demo} --database-url sqlite:///saga-demo.db",
        )
    shown = mask_url(database_url)
    note = " (put the password in place of ***)" if shown != database_url else ""
    return (
        f"Inspect them{note}:",
        f"{sagactl_command()} list --database-url {shlex.quote(shown)}",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.verbose:
        # saga_core logs through the standard logging module: configure it as usual.
        logging.basicConfig(
            stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        )
        logging.getLogger("saga_core").setLevel(logging.DEBUG)
    tmpdir: Path | None = None
    if args.database_url:
        database_url = async_url(args.database_url)
    else:
        tmpdir = Path(tempfile.mkdtemp(prefix="saga-demo-"))
        database_url = f"sqlite+aiosqlite:///{tmpdir / 'saga-demo.db'}"
    try:
        ok = asyncio.run(run(database_url, args.deadline, console, keep=tmpdir is None))
    except (SagaError, OSError) as exc:
        console.print(Text.assemble(("error", "bold red"), f": {exc}"))
        return 1
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
