"""Definition versioning: several versions of one saga name registered side by side.

A saga records the version it started under (``definition_version``) and always runs with
that version's definition; new sagas start under the highest version registered. A worker
claims only the (name, version) pairs it has registered, and advertises them in the worker
registry, so ``sagactl orphans`` can list the sagas no live worker can run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from saga_core.errors import SagaDefinitionError
from saga_core.store.base import WorkerRow

if TYPE_CHECKING:
    from saga_core.definition import SagaDefinition

__all__ = [
    "DEFAULT_VERSION",
    "ORPHAN_STATUSES",
    "Definitions",
    "OrphanGroup",
    "advertised_pairs",
    "check_version",
    "find_orphans",
    "live_workers",
]

DEFAULT_VERSION = 1
"""The version of ``register(name, definition)`` without ``version=``, and of every saga
stored before versioning existed."""


def check_version(version: Any, name: str) -> int:
    """``version`` as a positive int, else SagaDefinitionError."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SagaDefinitionError(
            f"version of saga {name!r} must be a positive int (1, 2, ...), got {version!r}"
        )
    if version > 2**31 - 1:
        raise SagaDefinitionError(
            f"version of saga {name!r} must be at most {2**31 - 1}, got {version}"
        )
    return version


class Definitions(Mapping[str, "SagaDefinition"]):
    """The definitions registered on one engine, by name and version.

    As a mapping it is name -> the latest (highest) version's definition, which is what
    starts use; ``get_version`` finds the definition a stored saga runs with.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, dict[int, SagaDefinition]] = {}

    # --- the mapping: name -> latest ---------------------------------------------------------

    def __getitem__(self, name: str) -> SagaDefinition:
        versions = self._by_name[name]
        return versions[max(versions)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    # --- versions ----------------------------------------------------------------------------

    def add(self, name: str, version: int, definition: SagaDefinition) -> None:
        """Register ``definition`` as ``version`` of ``name``; the pair must be new."""
        if version in self._by_name.get(name, {}):
            raise SagaDefinitionError(
                f"a saga named {name!r} is already registered"
                + ("" if version == DEFAULT_VERSION else f" as version {version}")
                + "; register another definition of it with register(name, definition, "
                "version=<a new number>)"
            )
        self._by_name.setdefault(name, {})[version] = definition

    def update(self, other: Definitions) -> None:
        """Add every version of ``other`` (a copy of an engine's registrations)."""
        for name, version, definition in other.items_versioned():
            self.add(name, version, definition)

    def latest_version(self, name: str) -> int | None:
        versions = self._by_name.get(name)
        return max(versions) if versions else None

    def get_version(self, name: str, version: int) -> SagaDefinition | None:
        """The definition of ``version`` of ``name``, or ``None`` when not registered."""
        return self._by_name.get(name, {}).get(version)

    def versions(self, name: str) -> list[int]:
        return sorted(self._by_name.get(name, {}))

    def pairs(self) -> list[tuple[str, int]]:
        """Every registered (name, version), sorted."""
        return sorted((n, v) for n, vs in self._by_name.items() for v in vs)

    def items_versioned(self) -> Iterable[tuple[str, int, SagaDefinition]]:
        for name, versions in sorted(self._by_name.items()):
            for version, definition in sorted(versions.items()):
                yield name, version, definition

    def advertised(self) -> dict[str, list[int]]:
        """name -> versions, as a worker advertises them in the registry."""
        return {name: self.versions(name) for name in sorted(self._by_name)}


def advertised_pairs(
    saga_versions: Mapping[str, Any], saga_names: Iterable[str], table: str
) -> tuple[set[tuple[str, int]], set[str]]:
    """What one registry row says a worker runs on ``table``: the (name, version) pairs, and
    the names of which it runs any version. A row from a worker without versioning has no
    ``saga_versions``: its claims filter by name only, so it counts for every version of its
    ``saga_names``."""
    if not saga_versions:
        return set(), {str(n) for n in saga_names}
    by_name = saga_versions.get(table)
    pairs: set[tuple[str, int]] = set()
    if isinstance(by_name, Mapping):
        for name, versions in by_name.items():
            if isinstance(versions, list):
                pairs.update(
                    (str(name), int(v))
                    for v in versions
                    if isinstance(v, int) and not isinstance(v, bool)
                )
    return pairs, set()


ORPHAN_STATUSES = ("RUNNING", "SUSPENDED", "COMPENSATING")
"""The statuses a worker moves on by itself. FAILED sagas wait for an operator whatever
the workers run, and are not reported as orphans."""


@dataclass(frozen=True)
class OrphanGroup:
    """Active sagas of one (name, version) that no live worker runs."""

    saga_name: str
    definition_version: int
    count: int
    oldest_created_at: datetime
    live_versions: list[int]
    """The versions of ``saga_name`` live workers do run (empty: none at all)."""


def live_workers(
    workers: Iterable[WorkerRow], now: datetime, stale_after: float
) -> list[WorkerRow]:
    """Workers not stopped whose last heartbeat is at most ``stale_after`` seconds old."""
    return [
        w
        for w in workers
        if w.stopped_at is None and (now - w.heartbeat_at).total_seconds() <= stale_after
    ]


def find_orphans(
    summary: Iterable[tuple[str, int, int, datetime]],
    live: Iterable[WorkerRow],
    *,
    table: str,
) -> list[OrphanGroup]:
    """The groups of ``summary`` ((name, version, count, oldest created) of active sagas)
    that none of the ``live`` workers advertises for ``table``."""
    pairs: set[tuple[str, int]] = set()
    any_version: set[str] = set()
    for w in live:
        tables = w.info.get("tables") if isinstance(w.info, Mapping) else None
        if w.saga_versions or not isinstance(tables, list) or table in tables:
            p, names = advertised_pairs(w.saga_versions, w.saga_names, table)
            pairs |= p
            any_version |= names
    out: list[OrphanGroup] = []
    for name, version, count, oldest in summary:
        if name in any_version or (name, version) in pairs:
            continue
        live_versions = sorted(v for n, v in pairs if n == name)
        out.append(OrphanGroup(name, version, count, oldest, live_versions))
    return sorted(out, key=lambda g: (g.saga_name, g.definition_version))
