"""saga_core.frozen.replace: the cheap dataclasses.replace of the machine state."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from saga_core.frozen import replace
from saga_core.machine import MachineState, Phase, SagaStatus, StepState, StepStatus


def test_copies_with_changes_and_leaves_the_original() -> None:
    s = MachineState(SagaStatus.RUNNING, Phase.EXECUTE, 0, (StepState(),))
    t = replace(s, cursor=1, status=SagaStatus.COMPLETED)
    assert t == MachineState(SagaStatus.COMPLETED, Phase.EXECUTE, 1, (StepState(),))
    assert hash(t) == hash(MachineState(SagaStatus.COMPLETED, Phase.EXECUTE, 1, (StepState(),)))
    assert s.cursor == 0 and s.status is SagaStatus.RUNNING
    assert replace(StepState(), status=StepStatus.SUCCEEDED).status is StepStatus.SUCCEEDED


def test_unknown_field_is_refused() -> None:
    with pytest.raises(TypeError, match=r"no field \['nope'\]"):
        replace(StepState(), nope=1)


def test_classes_it_cannot_copy_faithfully_are_refused() -> None:
    @dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            assert self.n >= 0

    @dataclass(frozen=True)
    class Derived:
        n: int
        twice: int = field(init=False, default=0)

    @dataclass
    class Mutable:
        n: int

    for obj in (Checked(1), Derived(1), Mutable(1)):
        with pytest.raises(TypeError):
            replace(obj, n=2)
