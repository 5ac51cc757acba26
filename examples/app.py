"""The example application: one orchestrator with both example sagas registered.

Run its sagas with the worker daemon::

    sagad --database-url sqlite+aiosqlite:///saga-demo.db --app examples.app:make_orchestrator

(``examples`` must be importable: run it from the checkout's root.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from examples import deploy_model, orders
from examples.db import session_maker
from saga_core import SagaOrchestrator, SagaState, SagaStateMixin

__all__ = ["ExampleApp", "build_app", "make_orchestrator"]

M = TypeVar("M", bound=SagaStateMixin)


@dataclass
class ExampleApp(Generic[M]):
    """The orchestrator and the fake services its steps hold (to inspect after a run)."""

    orchestrator: SagaOrchestrator[M]
    orders: orders.OrderServices
    deploy: deploy_model.DeployServices

    async def aclose(self) -> None:
        """Close the database engine's connections."""
        await self.orchestrator.engine.sql_engine.dispose()


def build_app(database_url: str, *, model_class: type[Any] = SagaState) -> ExampleApp[Any]:
    """Create the orchestrator (sagas stored in ``model_class``'s table, ``saga_state`` by
    default) with fresh fake services, and register both sagas on it."""
    orchestrator: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=model_class, session_maker=session_maker(database_url)
    )
    app: ExampleApp[Any] = ExampleApp(
        orchestrator=orchestrator,
        orders=orders.OrderServices.demo(),
        deploy=deploy_model.DeployServices.demo(),
    )
    orchestrator.register(orders.SAGA_NAME, orders.build_order_saga(app.orders))
    orchestrator.register(deploy_model.SAGA_NAME, deploy_model.build_deploy_saga(app.deploy))
    return app


def make_orchestrator(database_url: str) -> SagaOrchestrator[SagaState]:
    """The factory ``sagad --app examples.app:make_orchestrator`` calls with its URL."""
    orchestrator: SagaOrchestrator[SagaState] = build_app(database_url).orchestrator
    return orchestrator
