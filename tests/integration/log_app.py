"""An application that runs one saga whose step fails for good (rolled back), on SQLite,
as ``python log_app.py DB_FILE [--configure]``; prints the saga's final status on stdout.
``--configure``: the application sets up logging (``logging.basicConfig``) first.
Used by ``test_logging`` to see what saga_core prints with and without that."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from saga_core import BaseStep, FixedRetry, SagaBuilder, SagaOrchestrator, SagaStateMixin


class Base(DeclarativeBase):
    pass


class AppSaga(SagaStateMixin, Base):
    __tablename__ = "app_saga"


class Num(BaseModel):
    n: int = 0


class Reserve(BaseStep[Num, Num]):
    async def execute(self, inp: Num) -> Num:
        return inp

    async def compensate(self, inp: Num, out: Num) -> None:
        return None


class Charge(BaseStep[Num, Num]):
    async def execute(self, inp: Num) -> Num:
        raise RuntimeError("card declined")


async def main(db_file: str) -> str:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db_file}")
    try:
        orch = SagaOrchestrator(model_class=AppSaga, session_maker=async_sessionmaker(engine))
        b = SagaBuilder()
        b.add_step(step=Reserve(), step_id="reserve", input_map=lambda ctx: Num())
        b.add_step(
            step=Charge(),
            step_id="charge",
            input_map=lambda ctx: Num(),
            retry_policy=FixedRetry(2, 0),
        )
        orch.register("order", b.build())
        await orch.create_tables()
        sid = await orch.start(
            saga_name="order", initial_data={}, aggregation_id="o-1", inline=True
        )
        return (await orch.get_snapshot(sid)).status.value
    finally:
        await engine.dispose()


if __name__ == "__main__":
    if "--configure" in sys.argv:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(asyncio.run(main(sys.argv[1])))
