"""The public surface: ``saga_core.__all__`` pinned name by name (adding or removing a name is
a decision, made here on purpose), and ``sagactl`` kept on that surface (the same rule as
ruff's TID251 banned-api in pyproject.toml, checked here too so it cannot be configured away
unnoticed)."""

from __future__ import annotations

import ast
from pathlib import Path

import saga_core

PUBLIC = [
    "ActiveSagaAlreadyExistsError",
    "BaseStep",
    "ExponentialRetry",
    "FixedRetry",
    "InputContext",
    "NoRetry",
    "RetryPolicy",
    "SagaAdmin",
    "SagaAdminSnapshot",
    "SagaBuilder",
    "SagaConflictError",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaEngine",
    "SagaError",
    "SagaInputError",
    "SagaNotFoundError",
    "SagaOrchestrator",
    "SagaReader",
    "SagaSnapshot",
    "SagaState",
    "SagaStateError",
    "SagaStateMixin",
    "SagaStatus",
    "SagaStoreError",
    "StepContext",
    "StepRef",
    "TypeValidationError",
    "WaitForEvent",
    "__version__",
    "current_step",
    "schema_status",
    "upgrade_schema",
    "upgrade_schema_sql",
    "upgrade_script",
]

SAGACTL_MAY_IMPORT = {"saga_core", "saga_core.settings", "saga_core.snapshot", "saga_core.errors"}
SAGACTL = Path(__file__).resolve().parents[2] / "sagactl"


def test_saga_core_all_is_pinned_and_sorted() -> None:
    assert saga_core.__all__ == PUBLIC
    assert sorted(saga_core.__all__) == saga_core.__all__
    for name in saga_core.__all__:
        assert hasattr(saga_core, name), name


def _saga_core_imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "saga_core":
                # `from saga_core import machine` reaches a submodule all the same.
                found.extend(
                    (node.lineno, f"saga_core.{a.name}")
                    for a in node.names
                    if a.name not in saga_core.__all__
                )
            elif node.module.startswith("saga_core."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend(
                (node.lineno, a.name) for a in node.names if a.name.startswith("saga_core")
            )
    return found


def test_sagactl_stays_on_the_public_surface() -> None:
    files = sorted(SAGACTL.glob("*.py"))
    assert len(files) > 10
    offending = [
        f"{path.name}:{line}: {module}"
        for path in files
        for line, module in _saga_core_imports(path)
        if module not in SAGACTL_MAY_IMPORT
    ]
    assert offending == []


def test_the_read_models_sagactl_needs_are_public() -> None:
    from saga_core import errors, snapshot

    for name in ("REFUSED", "REFUSALS_UNRECORDED", "OrphanGroup", "WorkerRow"):
        assert name in snapshot.__all__ and hasattr(snapshot, name)
    assert callable(errors.is_transient)
    assert saga_core.SagaAdmin.DEFAULT_PURGE_BATCH == 500
    for method in ("preview_delivery", "orphan_sagas", "orphans"):
        assert callable(getattr(saga_core.SagaAdmin, method))
    assert isinstance(saga_core.SagaAdminSnapshot.waiting_event, property)


TESTING = [
    "START",
    "Boundary",
    "CrashCase",
    "CrashMatrix",
    "CrashPoint",
    "MemoryDatabase",
    "MemorySagaStore",
    "SagaResult",
    "SagaTestKit",
    "StepCalls",
    "StoreCrashed",
    "VirtualTimeLoop",
    "crash_matrix",
    "memory_orchestrator",
    "run",
    "virtual_time",
]


def test_saga_core_testing_all_is_pinned() -> None:
    import saga_core.testing as testing

    assert testing.__all__ == TESTING  # in ruff's order (RUF022)
    for name in testing.__all__:
        assert hasattr(testing, name), name
