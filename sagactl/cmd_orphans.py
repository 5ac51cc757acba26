"""``sagactl orphans``: active sagas whose definition version no live worker runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from sagactl.options import MAX_ROWS
from sagactl.runtime import OutputFormat, Runtime, iso

if TYPE_CHECKING:
    from saga_core.snapshot import OrphanGroup

# saga_core and the rendering are imported inside the command (see ``runtime``).

__all__ = ["orphans_cmd"]


def orphans_cmd(
    ctx: typer.Context,
    ids: Annotated[
        bool, typer.Option("--ids", help="Also list the ids of the sagas, oldest first.")
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-l",
            min=1,
            max=MAX_ROWS,
            help="With --ids: at most this many per group.",
        ),
    ] = 100,
) -> None:
    """Active sagas (RUNNING, SUSPENDED, COMPENSATING) whose definition version no live sagad worker runs, by saga name and version: they wait until a worker registering that version starts. FAILED sagas wait for an operator anyway and are not listed."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.render_dash import orphans_view
        from sagactl.render_json import orphan_json
        from sagactl.stats import workers_view

        async with rt.connect() as s:
            now = await s.now()
            stale_after = s.settings.worker_stale_after
            groups = await s.admin.orphans(stale_after=stale_after)
            views = workers_view(await s.admin.workers(), now, stale_after)
            live = sum(v.state == "live" for v in views)
            listed: dict[tuple[str, int], list[str]] | None = None
            if ids:
                listed = {}
                for g in groups:
                    sagas = await s.admin.orphan_sagas(g, limit=limit)
                    listed[(g.saga_name, g.definition_version)] = [str(x.id) for x in sagas]
        total = sum(g.count for g in groups)

        def group_json(g: OrphanGroup) -> dict[str, object]:
            key = (g.saga_name, g.definition_version)
            return orphan_json(g, None if listed is None else listed.get(key, []))

        if rt.output is OutputFormat.JSONL:
            rt.emit_lines(group_json(g) for g in groups)
        elif rt.output is OutputFormat.JSON:
            rt.emit(
                {
                    "at": iso(now),
                    "live_workers": live,
                    "stale_after_s": stale_after,
                    "total": total,
                    "orphans": [group_json(g) for g in groups],
                }
            )
        elif groups:
            rt.out.print(orphans_view(groups, listed, now))
        if not live:
            rt.warn(
                "no live sagad worker is registered: every active saga is listed (sagas run by "
                "an application's own run_due() are not in the worker registry)"
            )
        if groups:
            rt.info(
                f"{total} active saga(s) in {len(groups)} (name, version) group(s) wait for a "
                "worker that registers their version: deploy one (keep registering the old "
                "version until they are done)"
            )
        else:
            rt.info(
                f"no orphans: a live worker runs the version of every active saga ({live} live)"
            )
        return 0

    rt.run(work)
