"""Saga definitions: step models, builder checks, fingerprints."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypedDict

import pytest
from pydantic import BaseModel, ValidationError

from saga_core.definition import (
    BaseStep,
    InputContext,
    SagaBuilder,
    SagaDefinition,
    StepRef,
)
from saga_core.errors import SagaDefinitionError, SagaError, TypeValidationError
from saga_core.retry import FixedRetry, NoRetry, default_compensation_policy

# --- models and steps (module level: annotations are resolved from module globals) -------


class OrderIn(BaseModel):
    order_id: str = "o-1"


class OrderOut(BaseModel):
    reserved: bool = True


class SpecialOrderIn(OrderIn):
    priority: int = 0


class PayIn(BaseModel):
    amount: int = 10


class PayOut(BaseModel):
    payment_id: str = "p-1"


class Unrelated(BaseModel):
    z: int = 0


class Reserve(BaseStep[OrderIn, OrderOut]):
    async def execute(self, inp: OrderIn) -> OrderOut:
        return OrderOut()

    async def compensate(self, inp: OrderIn, out: OrderOut) -> None:
        return None


class Pay(BaseStep[PayIn, PayOut]):
    async def execute(self, inp: PayIn) -> PayOut:
        return PayOut()


class Notify(BaseStep[PayIn, PayOut]):
    """Same models as Pay, no compensation either: differs only by class."""

    async def execute(self, inp: PayIn) -> PayOut:
        return PayOut()


class PayWithRefund(BaseStep[PayIn, PayOut]):
    async def execute(self, inp: PayIn) -> PayOut:
        return PayOut()

    async def compensate(self, inp: PayIn, out: PayOut) -> None:
        return None


class PayWithRefundChild(PayWithRefund):
    """Inherits both the models and the compensation."""


class AnnotatedOnly(BaseStep):  # type: ignore[type-arg]
    """Models come from ``execute``'s annotations, not generic arguments."""

    async def execute(self, inp: PayIn) -> PayOut:
        return PayOut()


class AnnotatedOutOnly(BaseStep[PayIn, Any]):
    async def execute(self, inp: PayIn) -> OrderOut:
        return OrderOut()


InT = typing.TypeVar("InT", bound=BaseModel)
OutT = typing.TypeVar("OutT", bound=BaseModel)


class GenericBase(BaseStep[InT, OutT]):
    """A reusable generic intermediate; concrete subclasses name the models."""


class ConcreteFromGeneric(GenericBase[OrderIn, PayOut]):
    async def execute(self, inp: OrderIn) -> PayOut:
        return PayOut()


class NoModels(BaseStep):  # type: ignore[type-arg]
    async def execute(self, inp):  # type: ignore[no-untyped-def]
        return None


class NotModels(BaseStep):  # type: ignore[type-arg]
    async def execute(self, inp: int) -> str:
        return ""


def ctx_map(ctx: InputContext) -> dict[str, Any]:
    return {}


def ctx_to_pay(ctx: InputContext) -> PayIn:
    return PayIn()


def untyped_map(x):  # type: ignore[no-untyped-def]
    return {}


def build_one(input_map: Any, step: BaseStep[Any, Any] | None = None, **kw: Any) -> SagaDefinition:
    builder = SagaBuilder()
    builder.add_step(step=step or Pay(), input_map=input_map, **kw)
    return builder.build()


def build_two(second_map: Any, second: BaseStep[Any, Any] | None = None) -> SagaDefinition:
    """Reserve, then a step fed by Reserve's output through ``second_map``."""
    builder = SagaBuilder()
    first = builder.add_step(step=Reserve(), input_map=ctx_map)
    builder.add_step(step=second or Pay(), input_map=second_map, depends_on=first)
    return builder.build()


# --- BaseStep models -----------------------------------------------------------------------


def test_models_from_generic_arguments() -> None:
    assert Reserve.input_model is OrderIn
    assert Reserve.output_model is OrderOut
    assert Reserve.resolve_models() == (OrderIn, OrderOut)


def test_models_inherited_by_subclasses() -> None:
    assert PayWithRefundChild.resolve_models() == (PayIn, PayOut)


def test_models_from_generic_intermediate() -> None:
    assert GenericBase.input_model is None
    assert ConcreteFromGeneric.resolve_models() == (OrderIn, PayOut)


def test_models_from_execute_annotations() -> None:
    assert AnnotatedOnly.resolve_models() == (PayIn, PayOut)


def test_missing_model_filled_from_annotations() -> None:
    assert AnnotatedOutOnly.resolve_models() == (PayIn, OrderOut)


@pytest.mark.parametrize("step_class", [NoModels, NotModels])
def test_step_without_models_is_rejected_at_add_step(step_class: type[BaseStep[Any, Any]]) -> None:
    with pytest.raises(SagaDefinitionError, match=step_class.__name__):
        step_class.resolve_models()
    with pytest.raises(SagaDefinitionError, match="input/output models"):
        SagaBuilder().add_step(step=step_class(), input_map=ctx_map)


def test_step_with_unresolvable_annotations_is_rejected() -> None:
    class Broken(BaseStep):  # type: ignore[type-arg]
        async def execute(self, inp: DoesNotExist) -> PayOut:  # type: ignore[name-defined]  # noqa: F821
            return PayOut()

    with pytest.raises(SagaDefinitionError, match="Broken"):
        Broken.resolve_models()


def test_has_compensation_detection() -> None:
    assert Reserve.has_compensation() is True
    assert Pay.has_compensation() is False
    assert PayWithRefund.has_compensation() is True
    assert PayWithRefundChild.has_compensation() is True
    assert AnnotatedOnly.has_compensation() is False


def test_has_compensation_recorded_in_spec() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Reserve(), input_map=ctx_map)
    builder.add_step(step=Pay(), input_map=ctx_map)
    builder.add_step(step=PayWithRefundChild(), input_map=ctx_map)
    definition = builder.build()
    assert [s.has_compensation for s in definition.steps] == [True, False, True]


async def test_default_compensate_does_nothing_and_execute_must_be_overridden() -> None:
    class Bare(BaseStep[PayIn, PayOut]):
        pass

    with pytest.raises(NotImplementedError):
        await Bare().execute(PayIn())
    await Bare().compensate(PayIn(), PayOut())  # nothing to undo: returns without error
    assert Bare.has_compensation() is False


# --- InputContext --------------------------------------------------------------------------


def test_input_context_defaults_and_is_frozen() -> None:
    ctx = InputContext(initial_data={"a": 1}, step_outputs={})
    assert ctx.events == []
    assert ctx.latest_event is None
    with pytest.raises(ValidationError):
        ctx.initial_data = {}  # type: ignore[misc]


# --- builder: what add_step records --------------------------------------------------------


def test_build_records_everything() -> None:
    builder = SagaBuilder(compensate_on_failure=False)
    policy = FixedRetry(3, 1)
    comp_policy = FixedRetry(2, 5)
    first = builder.add_step(
        step=Reserve(),
        input_map=ctx_map,
        timeout=2.5,
        retry_policy=policy,
        compensation_timeout=timedelta(minutes=1),
        compensation_retry_policy=comp_policy,
    )
    second = builder.add_step(
        step=Pay(), input_map=lambda out: {"amount": 1}, depends_on=first, step_id="pay"
    )
    assert isinstance(first, StepRef)
    assert (first.step_id, first.index, first.output_model) == ("Reserve", 0, OrderOut)
    assert (second.step_id, second.index, second.output_model) == ("pay", 1, PayOut)

    definition = builder.build()
    assert len(definition) == 2
    assert definition.step_ids == ("Reserve", "pay")
    assert definition.compensate_on_failure is False
    s0, s1 = definition.steps
    assert s0.index == 0 and s1.index == 1
    assert s0.step_class == "Reserve"
    assert (s0.input_model, s0.output_model) == (OrderIn, OrderOut)
    assert s0.timeout == timedelta(seconds=2.5)
    assert s0.retry_policy is policy
    assert s0.compensation_timeout == timedelta(minutes=1)
    assert s0.compensation_retry_policy is comp_policy
    assert s0.depends_on is None
    assert s1.depends_on == "Reserve"
    assert s1.timeout is None and s1.compensation_timeout is None
    assert definition.step("pay") is s1
    with pytest.raises(KeyError):
        definition.step("nope")


def test_defaults() -> None:
    definition = build_one(ctx_map)
    spec = definition.steps[0]
    assert definition.compensate_on_failure is True
    assert spec.step_id == "Pay"
    assert spec.retry_policy == NoRetry()
    assert spec.compensation_retry_policy == default_compensation_policy()
    assert spec.compensation_retry_policy.max_attempts > 1


def test_definition_is_immutable() -> None:
    definition = build_one(ctx_map)
    assert isinstance(definition.steps, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.fingerprint = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.steps[0].timeout = None  # type: ignore[misc]


def test_adding_after_build_does_not_change_the_built_definition() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=ctx_map)
    definition = builder.build()
    builder.add_step(step=Reserve(), input_map=ctx_map)
    assert definition.step_ids == ("Pay",)
    assert builder.build().step_ids == ("Pay", "Reserve")


def test_depends_on_accepts_a_single_element_sequence() -> None:
    builder = SagaBuilder()
    first = builder.add_step(step=Reserve(), input_map=ctx_map)
    builder.add_step(step=Pay(), input_map=untyped_map, depends_on=[first])
    assert builder.build().steps[1].depends_on == "Reserve"


# --- builder errors ------------------------------------------------------------------------


def test_errors_are_saga_errors() -> None:
    assert issubclass(TypeValidationError, SagaDefinitionError)
    assert issubclass(SagaDefinitionError, SagaError)


def test_empty_saga() -> None:
    with pytest.raises(SagaDefinitionError, match="at least one step"):
        SagaBuilder().build()


def test_duplicate_step_id_explicit() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=ctx_map, step_id="x")
    builder.add_step(step=Reserve(), input_map=ctx_map, step_id="x")
    with pytest.raises(SagaDefinitionError, match="duplicate step_id 'x'"):
        builder.build()


def test_duplicate_step_id_from_class_name() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=ctx_map)
    builder.add_step(step=Pay(), input_map=ctx_map)
    with pytest.raises(SagaDefinitionError, match="duplicate step_id 'Pay'"):
        builder.build()
    other = SagaBuilder()
    other.add_step(step=Pay(), input_map=ctx_map)
    other.add_step(step=Pay(), input_map=ctx_map, step_id="Pay-2")
    assert other.build().step_ids == ("Pay", "Pay-2")


@pytest.mark.parametrize("step_id", ["", "has space", "a/b", "x" * 101, 7])
def test_invalid_step_id(step_id: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="step_id"):
        SagaBuilder().add_step(step=Pay(), input_map=ctx_map, step_id=step_id)


@pytest.mark.parametrize("input_map", [None, 42, "ctx_map", {"a": 1}])
def test_non_callable_input_map(input_map: Any) -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=input_map)
    with pytest.raises(SagaDefinitionError, match="input_map must be callable"):
        builder.build()


@pytest.mark.parametrize("step", [Pay, None, object(), "Pay"])
def test_step_must_be_a_step_instance(step: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="BaseStep instance"):
        SagaBuilder().add_step(step=step, input_map=ctx_map)


def test_depends_on_from_another_builder() -> None:
    other = SagaBuilder()
    foreign = other.add_step(step=Reserve(), input_map=ctx_map)
    builder = SagaBuilder()
    builder.add_step(step=Reserve(), input_map=ctx_map)
    builder.add_step(step=Pay(), input_map=untyped_map, depends_on=foreign)
    with pytest.raises(SagaDefinitionError, match="another SagaBuilder"):
        builder.build()


def test_depends_on_from_a_discarded_builder() -> None:
    # A new builder often reuses the memory (and so the id()) of a discarded one: its
    # identity must not be confused with the discarded builder's.
    for _ in range(100):
        foreign = SagaBuilder().add_step(step=Reserve(), input_map=ctx_map)
        builder = SagaBuilder()
        builder.add_step(step=Pay(), input_map=ctx_map)
        builder.add_step(step=Pay(), input_map=untyped_map, depends_on=foreign, step_id="p2")
        with pytest.raises(SagaDefinitionError, match="another SagaBuilder"):
            builder.build()
        del builder, foreign


@pytest.mark.parametrize("depends_on", [0, object(), [0], []])
def test_depends_on_must_be_a_step_ref_or_id(depends_on: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="depends_on"):
        SagaBuilder().add_step(step=Pay(), input_map=ctx_map, depends_on=depends_on)


def test_depends_on_an_unknown_step_id_fails_at_build() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=untyped_map, depends_on="Reserve")
    with pytest.raises(SagaDefinitionError, match="unknown step 'Reserve'"):
        builder.build()


def test_depends_on_by_step_id_in_a_sequential_saga() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Reserve(), input_map=ctx_map)
    builder.add_step(step=Pay(), input_map=untyped_map, depends_on=["Reserve"])
    definition = builder.build()
    assert definition.steps[1].depends_on == "Reserve"
    assert definition.steps[1].dependencies == ("Reserve",)
    assert not definition.parallel


def test_depends_on_a_later_step_id_in_a_sequential_saga_is_refused() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=untyped_map, depends_on="Notify")
    builder.add_step(step=Notify(), input_map=ctx_map)
    with pytest.raises(SagaDefinitionError, match="earlier step"):
        builder.build()


def test_depends_on_several_steps_needs_a_parallel_builder() -> None:
    builder = SagaBuilder()
    a = builder.add_step(step=Reserve(), input_map=ctx_map)
    b = builder.add_step(step=Pay(), input_map=ctx_map)
    with pytest.raises(SagaDefinitionError, match=r"parallel=True"):
        builder.add_step(step=Notify(), input_map=ctx_map, depends_on=[a, b])


@pytest.mark.parametrize("field", ["retry_policy", "compensation_retry_policy"])
def test_retry_policies_must_be_policies(field: str) -> None:
    with pytest.raises(SagaDefinitionError, match=field):
        kwargs: dict[str, Any] = {field: 3}
        SagaBuilder().add_step(step=Pay(), input_map=ctx_map, **kwargs)


# --- input_map arity -----------------------------------------------------------------------


def _no_args() -> dict[str, Any]:
    return {}


def _two_args(a: Any, b: Any) -> dict[str, Any]:
    return {}


def _kw_only_required(a: Any, *, b: Any) -> dict[str, Any]:
    return {}


def _kw_only(*, a: Any) -> dict[str, Any]:
    return {}


@pytest.mark.parametrize(
    "input_map",
    [_no_args, _two_args, _kw_only_required, _kw_only, lambda: {}, lambda a, b: {}],
)
def test_input_map_with_wrong_arity(input_map: Any) -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=input_map)
    with pytest.raises(SagaDefinitionError, match="exactly one positional argument"):
        builder.build()


def _one_and_default(a: Any, b: int = 1) -> dict[str, Any]:
    return {}


def _var_positional(*args: Any) -> dict[str, Any]:
    return {}


def _one_and_kwargs(a: Any, **kwargs: Any) -> dict[str, Any]:
    return {}


class CallableMap:
    def __call__(self, ctx: InputContext) -> PayIn:
        return PayIn()

    def method(self, ctx: InputContext) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    "input_map",
    [
        untyped_map,
        _one_and_default,
        _var_positional,
        _one_and_kwargs,
        lambda ctx: {},
        CallableMap(),
        CallableMap().method,
        dict,  # a builtin: cannot be inspected, so not checked
        PayIn.model_validate,
    ],
)
def test_input_map_with_acceptable_arity(input_map: Any) -> None:
    assert build_one(input_map).steps[0].input_map is input_map


# --- input_map argument annotations --------------------------------------------------------


def _takes_dict(ctx: dict[str, Any]) -> dict[str, Any]:
    return {}


def _takes_plain_dict(ctx: dict) -> dict[str, Any]:  # type: ignore[type-arg]
    return {}


def _takes_order_out(out: OrderOut) -> dict[str, Any]:
    return {}


def _takes_base_model(x: BaseModel) -> dict[str, Any]:
    return {}


def _takes_object(x: object) -> dict[str, Any]:
    return {}


def _takes_any(x: Any) -> dict[str, Any]:
    return {}


def _takes_unrelated(x: Unrelated) -> dict[str, Any]:
    return {}


def _takes_ctx(ctx: InputContext) -> dict[str, Any]:
    return {}


def _takes_int(x: int) -> dict[str, Any]:
    return {}


def _takes_optional_ctx(ctx: InputContext | None) -> dict[str, Any]:
    return {}


def _takes_optional_order_out(out: OrderOut | None) -> dict[str, Any]:
    return {}


def _takes_unrelated_or_int(x: Unrelated | int) -> dict[str, Any]:
    return {}


def _takes_list(x: list[Any]) -> dict[str, Any]:
    return {}


def _takes_typevar(x: InT) -> dict[str, Any]:
    return {}


class ContextLike(typing.Protocol):
    initial_data: dict[str, Any]


def _takes_protocol(x: ContextLike) -> dict[str, Any]:
    return {}


@pytest.mark.parametrize(
    "input_map",
    [
        _takes_ctx,
        _takes_base_model,
        _takes_object,
        _takes_any,
        untyped_map,
        _takes_optional_ctx,
        _takes_typevar,
        _takes_protocol,
    ],
)
def test_first_step_argument_accepting_input_context(input_map: Any) -> None:
    build_one(input_map)


@pytest.mark.parametrize(
    "input_map",
    [
        _takes_plain_dict,
        _takes_dict,
        _takes_order_out,
        _takes_unrelated,
        _takes_int,
        _takes_unrelated_or_int,
        _takes_list,
        _takes_optional_order_out,
    ],
)
def test_first_step_argument_not_accepting_input_context(input_map: Any) -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=input_map)
    with pytest.raises(TypeValidationError, match="InputContext"):
        builder.build()


@pytest.mark.parametrize(
    "input_map",
    [
        _takes_order_out,
        _takes_base_model,
        _takes_object,
        _takes_any,
        untyped_map,
        _takes_optional_order_out,
        _takes_typevar,
    ],
)
def test_dependent_argument_accepting_the_output_model(input_map: Any) -> None:
    build_two(input_map)


@pytest.mark.parametrize(
    "input_map",
    [
        _takes_ctx,
        _takes_plain_dict,
        _takes_dict,
        _takes_unrelated,
        _takes_int,
        _takes_optional_ctx,
        _takes_unrelated_or_int,
    ],
)
def test_dependent_argument_not_accepting_the_output_model(input_map: Any) -> None:
    with pytest.raises(TypeValidationError, match="OrderOut"):
        build_two(input_map)


def test_annotation_type_errors_are_reported_at_build_not_add_step() -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=_takes_unrelated)  # no error yet
    with pytest.raises(TypeValidationError):
        builder.build()


# --- input_map return annotations ----------------------------------------------------------


class PayDict(TypedDict):
    amount: int


class SpecialPayIn(PayIn):
    pass


def _ret_model(ctx: InputContext) -> PayIn:
    return PayIn()


def _ret_sub_model(ctx: InputContext) -> SpecialPayIn:
    return SpecialPayIn()


def _ret_dict(ctx: InputContext) -> dict:  # type: ignore[type-arg]
    return {}


def _ret_dict_any(ctx: InputContext) -> dict[str, Any]:
    return {}


def _ret_dict_object(ctx: InputContext) -> dict[str, object]:
    return {}


def _ret_typing_dict(ctx: InputContext) -> typing.Dict[str, Any]:  # noqa: UP006
    return {}


def _ret_mapping(ctx: InputContext) -> Mapping[str, Any]:
    return {}


def _ret_typed_dict(ctx: InputContext) -> PayDict:
    return {"amount": 1}


def _ret_any(ctx: InputContext) -> Any:
    return {}


def _ret_union(ctx: InputContext) -> PayIn | dict[str, Any]:
    return {}


def _ret_typevar(ctx: InputContext) -> InT:  # type: ignore[type-var]
    return PayIn()  # type: ignore[return-value]


def _ret_other_model(ctx: InputContext) -> OrderIn:
    return OrderIn()


def _ret_none(ctx: InputContext) -> None:
    return None


def _ret_list(ctx: InputContext) -> list[Any]:
    return []


def _ret_str(ctx: InputContext) -> str:
    return ""


def _ret_optional(ctx: InputContext) -> PayIn | None:
    return None


def _ret_union_with_other(ctx: InputContext) -> PayIn | OrderIn:
    return PayIn()


@pytest.mark.parametrize(
    "input_map",
    [
        _ret_model,
        _ret_sub_model,
        _ret_dict,
        _ret_dict_any,
        _ret_dict_object,
        _ret_typing_dict,
        _ret_mapping,
        _ret_typed_dict,
        _ret_any,
        _ret_union,
        _ret_typevar,
        ctx_map,
        ctx_to_pay,
    ],
)
def test_return_annotation_accepted(input_map: Any) -> None:
    build_one(input_map)


@pytest.mark.parametrize(
    "input_map",
    [_ret_other_model, _ret_none, _ret_list, _ret_str, _ret_optional, _ret_union_with_other],
)
def test_return_annotation_rejected(input_map: Any) -> None:
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=input_map)
    with pytest.raises(TypeValidationError, match="PayIn"):
        builder.build()


def test_return_of_parent_model_is_rejected() -> None:
    # A parent of the input model lacks its fields: compatibility is by class.
    class SpecialStep(BaseStep[SpecialOrderIn, PayOut]):
        async def execute(self, inp: SpecialOrderIn) -> PayOut:
            return PayOut()

    def to_parent(ctx: InputContext) -> OrderIn:
        return OrderIn()

    with pytest.raises(TypeValidationError, match="SpecialOrderIn"):
        build_one(to_parent, step=SpecialStep())


def test_dependent_map_return_checked_too() -> None:
    def bad(out: OrderOut) -> OrderIn:
        return OrderIn()

    def good(out: OrderOut) -> PayIn:
        return PayIn(amount=int(out.reserved))

    with pytest.raises(TypeValidationError, match="returns OrderIn"):
        build_two(bad)
    build_two(good)


def test_callable_object_annotations_are_checked() -> None:
    class WrongCall:
        def __call__(self, ctx: InputContext) -> OrderIn:
            return OrderIn()

    build_one(CallableMap())
    with pytest.raises(TypeValidationError):
        build_one(WrongCall())


# --- annotation resolution -----------------------------------------------------------------


def test_annotations_resolved_from_closure() -> None:
    class LocalIn(BaseModel):
        v: int = 0

    class LocalOther(BaseModel):
        w: int = 0

    class LocalStep(BaseStep[LocalIn, PayOut]):
        async def execute(self, inp: LocalIn) -> PayOut:
            return PayOut()

    def good(ctx: InputContext) -> LocalIn:
        return LocalIn()  # LocalIn is a free variable: resolvable from the closure

    def bad(ctx: InputContext) -> LocalOther:
        return LocalOther()  # likewise, and it does not fit

    def bad_arg(x: LocalOther) -> LocalIn:
        _ = (LocalOther, LocalIn)
        return LocalIn()

    build_one(good, step=LocalStep())
    with pytest.raises(TypeValidationError, match="LocalOther"):
        build_one(bad, step=LocalStep())
    with pytest.raises(TypeValidationError, match="LocalOther"):
        build_one(bad_arg, step=LocalStep())


def test_unresolvable_annotations_are_not_checked() -> None:
    def unknown_return(ctx: InputContext) -> NoSuchModel:  # type: ignore[name-defined]  # noqa: F821
        return {}

    def unknown_arg(ctx: NoSuchContext) -> OrderIn:  # type: ignore[name-defined]  # noqa: F821
        return OrderIn()  # would not fit Pay, but the annotations cannot be resolved

    build_one(unknown_return)
    build_one(unknown_arg)


def test_local_annotation_not_in_closure_is_not_checked() -> None:
    class Hidden(BaseModel):
        pass

    def fn(ctx: InputContext) -> Hidden:  # Hidden is not referenced: not in the closure
        return {}  # type: ignore[return-value]

    build_one(fn)


# --- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, timedelta(seconds=1)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(minutes=2), timedelta(minutes=2)),
        (None, None),
    ],
)
@pytest.mark.parametrize("field", ["timeout", "compensation_timeout"])
def test_valid_timeouts(field: str, value: Any, expected: timedelta | None) -> None:
    spec = build_one(ctx_map, **{field: value}).steps[0]
    assert getattr(spec, field) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        0.0,
        timedelta(0),
        timedelta(seconds=-5),
        True,
        False,
        "5",
        [1],
        float("nan"),
        float("inf"),
    ],
)
@pytest.mark.parametrize("field", ["timeout", "compensation_timeout"])
def test_invalid_timeouts_rejected_at_add_step(field: str, value: Any) -> None:
    with pytest.raises(SagaDefinitionError, match=field):
        SagaBuilder().add_step(step=Pay(), input_map=ctx_map, **{field: value})


# --- fingerprint ---------------------------------------------------------------------------


def _saga(
    first: BaseStep[Any, Any] | None = None,
    *,
    second: BaseStep[Any, Any] | None = None,
    second_id: str | None = None,
    depends: bool = True,
    compensate_on_failure: bool = True,
    timeout: float | None = None,
) -> SagaDefinition:
    builder = SagaBuilder(compensate_on_failure=compensate_on_failure)
    ref = builder.add_step(step=first or Reserve(), input_map=ctx_map, timeout=timeout)
    builder.add_step(
        step=second or Pay(),
        input_map=lambda out: {"amount": 1},
        depends_on=ref if depends else None,
        step_id=second_id,
    )
    return builder.build()


def test_fingerprint_is_stable_across_builds() -> None:
    a, b = _saga(), _saga()
    assert a.fingerprint == b.fingerprint
    assert isinstance(a.fingerprint, str) and a.fingerprint
    builder = SagaBuilder()
    builder.add_step(step=Pay(), input_map=ctx_map)
    assert builder.build().fingerprint == builder.build().fingerprint


def test_fingerprint_does_not_depend_on_step_instances_or_input_map() -> None:
    builder = SagaBuilder()
    ref = builder.add_step(step=Reserve(), input_map=_takes_ctx)
    builder.add_step(step=Pay(), input_map=untyped_map, depends_on=ref)
    assert builder.build().fingerprint == _saga().fingerprint


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(lambda: _saga(second=Notify()), id="step class"),
        pytest.param(lambda: _saga(second=PayWithRefund()), id="compensation added"),
        pytest.param(lambda: _saga(second=AnnotatedOutOnly()), id="output model"),
        pytest.param(lambda: _saga(second=ConcreteFromGeneric()), id="input model"),
        pytest.param(lambda: _saga(second_id="charge"), id="step id"),
        pytest.param(lambda: _saga(depends=False), id="depends_on"),
        pytest.param(lambda: _saga(compensate_on_failure=False), id="compensate_on_failure"),
        pytest.param(lambda: _saga(first=PayWithRefund()), id="first step"),
    ],
)
def test_fingerprint_changes_when_a_step_changes(changed: Any) -> None:
    assert changed().fingerprint != _saga().fingerprint


def test_fingerprint_changes_with_order_and_length() -> None:
    def saga(*steps: BaseStep[Any, Any]) -> str:
        builder = SagaBuilder()
        for s in steps:
            builder.add_step(step=s, input_map=ctx_map)
        return builder.build().fingerprint

    assert saga(Reserve(), Pay()) != saga(Pay(), Reserve())
    assert saga(Reserve(), Pay()) != saga(Reserve())
    assert saga(Reserve(), Pay()) == saga(Reserve(), Pay())


def test_fingerprint_changes_when_a_model_field_changes() -> None:
    def make(field_type: type[Any]) -> str:
        model = type("Shape", (BaseModel,), {"__annotations__": {"v": field_type}})

        class Step(BaseStep[model, PayOut]):  # type: ignore[valid-type]
            async def execute(self, inp: Any) -> PayOut:
                return PayOut()

        builder = SagaBuilder()
        builder.add_step(step=Step(), input_map=untyped_map)
        return builder.build().fingerprint

    assert make(int) == make(int)
    assert make(int) != make(str)


def test_fingerprint_changes_when_a_step_gains_a_compensation() -> None:
    # The same class (module and qualified name) in two versions of the code.
    def version(with_compensation: bool) -> str:
        class Step(BaseStep[PayIn, PayOut]):
            async def execute(self, inp: PayIn) -> PayOut:
                return PayOut()

        if with_compensation:

            async def compensate(self: Any, inp: PayIn, out: PayOut) -> None:
                return None

            Step.compensate = compensate  # type: ignore[method-assign]

        builder = SagaBuilder()
        builder.add_step(step=Step(), input_map=ctx_map)
        return builder.build().fingerprint

    assert version(False) == version(False)
    assert version(True) != version(False)


# --- transactional steps ------------------------------------------------------------------


class TxReserve(BaseStep[OrderIn, OrderOut]):
    transactional = True

    async def execute(self, inp: OrderIn) -> OrderOut:
        raise NotImplementedError


def test_transactional_is_off_by_default_and_carried_into_the_spec() -> None:
    assert BaseStep.transactional is False
    b = SagaBuilder()
    b.add_step(step=Reserve(), input_map=lambda ctx: OrderIn(order_id="o"), step_id="plain")
    b.add_step(step=TxReserve(), input_map=lambda ctx: OrderIn(order_id="o"), step_id="tx")
    plain, tx = b.build().steps
    assert (plain.transactional, tx.transactional) == (False, True)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_transactional_must_be_a_bool(value: Any) -> None:
    class Odd(BaseStep[OrderIn, OrderOut]):
        async def execute(self, inp: OrderIn) -> OrderOut:
            raise NotImplementedError

    Odd.transactional = value
    b = SagaBuilder()
    b.add_step(step=Odd(), input_map=lambda ctx: OrderIn(order_id="o"))
    with pytest.raises(SagaDefinitionError, match=r"Odd\.transactional must be True or False"):
        b.build()
