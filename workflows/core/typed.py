"""Typed steps: a step function's models, read from its annotations, and the checks that use them. Pure.

    @step_task("payment.charge", queue="payment")
    def charge(ctx: StepContext, order: Order) -> Charged: ...

    @step_task("payment.refund", queue="payment")
    def refund(ctx: StepContext, order: Order, charged: Charged | None) -> None: ...

A step's *input* is the saga's input (what `start_saga` was given, validated by the saga's
`input_model`); a step's input model names the part of it the step reads (pydantic ignores the
fields it does not declare). A step's *result* is what its action returns, recorded as JSON. A
compensation may take a third parameter: its action's recorded result, None when there is none
(the action timed out, or failed and the step declares `compensate_failure`).

An annotation is a pydantic model (the function receives, or returns, an instance) or a JSON
object (`dict`, `dict[str, Any]`, a `TypedDict`, `Mapping`, `Any`, or none): the function
receives the dict, as untyped steps always have. Anything else is a `DefinitionError` when the
function is declared.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin, is_typeddict

from pydantic import BaseModel, ValidationError

from workflows.core.errors import DefinitionError, StepTypeError

Model = type[BaseModel]
_UNTYPED = object()


def is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def field_errors(e: ValidationError) -> list[dict[str, Any]]:
    """A pydantic error's entries as JSON: where (`loc`, field names), what (`msg`) and its `type`."""
    return [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]


def summary(errors: list[dict[str, Any]], whole: str) -> str:
    """'<field.path>: <msg>; ...', `whole` for an error about the value itself."""
    return "; ".join(f"{'.'.join(map(str, x['loc'])) or whole}: {x['msg']}" for x in errors)


def fit(model: Model, value: Any, what: str) -> BaseModel:
    """`value` as an instance of `model`, or `StepTypeError` naming each field that does not fit.
    `what` says whose value it is: "the result of step 'charge'"."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        errors = field_errors(e)
        raise StepTypeError(f"{what} does not fit {model.__name__}: {summary(errors, 'value')}", errors) from None


@dataclass(frozen=True)
class Signature:
    """The models a step function declares by its annotations (None: a plain JSON object). Immutable."""

    input: Model | None = None
    """The second parameter's: the saga's input as the step reads it."""
    result: Model | None = None
    """The return annotation's: what the action returns."""
    takes_result: bool = False
    """A third parameter: the action's recorded result (compensations)."""
    action_result: Model | None = None
    """The third parameter's model (annotated `Model | None`)."""

    def call(self, fn: Callable[..., Any], ctx: Any, data: Any) -> Any:
        """Call `fn` as its annotations ask: the input (and the action's result) as model instances.
        A value that does not fit is a `StepTypeError`: permanent, the same value would fail again."""
        args = [ctx, data if self.input is None else fit(self.input, data, f"the input of step {ctx.step!r}")]
        if self.takes_result:
            result = ctx.result
            if result is not None and self.action_result is not None:
                result = fit(self.action_result, result, f"the recorded result of step {ctx.step!r}")
            args.append(result)
        return fn(*args)


def signature_of(fn: Callable[..., Any], task: str) -> Signature:
    """The models `fn(ctx, data[, result]) -> result` declares; `DefinitionError` for an annotation
    that is neither a pydantic model nor a JSON object, saying what to write instead."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin or a callable without a signature: untyped
        return Signature()
    if len(params) < 2:
        return Signature()
    data = _model_or_dict(_resolve(fn, params[1].annotation, task, params[1].name), task,
                          f"parameter {params[1].name!r} (the saga's input)")
    returned = _resolve(fn, inspect.signature(fn).return_annotation, task, "return")
    result = None
    if returned not in (None, NoneType):
        inner = _strip_none(returned, allowed=True)
        if is_model(inner) and inner is not returned:
            raise DefinitionError(f"step task {task!r}: annotate the return `-> {inner.__name__}`: a typed action "
                                  f"returns an instance (a None result would be {{}}, which the model checks too)")
        result = _model_or_dict(inner, task, "the return value (the step's result)")
    prior = None
    if len(params) >= 3:
        third = _resolve(fn, params[2].annotation, task, params[2].name)
        inner = _strip_none(third, allowed=True)
        if is_model(inner) and inner is third:
            raise DefinitionError(f"step task {task!r}: annotate parameter {params[2].name!r} "
                                  f"`{inner.__name__} | None`: a compensation gets no result when its action "
                                  "timed out or failed")
        prior = _model_or_dict(inner, task, f"parameter {params[2].name!r} (the action's result)")
    return Signature(data, result, len(params) >= 3, prior)


def _resolve(fn: Callable[..., Any], annotation: Any, task: str, where: str) -> Any:
    """An annotation as a value (a string under `from __future__ import annotations`: evaluated in
    the function's module)."""
    if annotation is inspect.Parameter.empty:
        return _UNTYPED
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, getattr(fn, "__globals__", {}), None)  # noqa: S307 - the module's own annotation
    except Exception as e:
        raise DefinitionError(f"step task {task!r}: the annotation {annotation!r} of {where} cannot be resolved "
                              f"({type(e).__name__}: {e}); import it at module level (not under TYPE_CHECKING), "
                              "or annotate a pydantic model or dict") from None


def _is_untyped(value: Any) -> bool:
    origin = get_origin(value) or value
    return (value is _UNTYPED or value is Any or value is object or is_typeddict(value)
            or (isinstance(origin, type) and issubclass(origin, (dict, Mapping, MutableMapping))))


def _strip_none(value: Any, *, allowed: bool) -> Any:
    """`X | None` as X (when `allowed`); anything else as it is."""
    if get_origin(value) in (Union, UnionType) and NoneType in get_args(value) and allowed:
        rest = [a for a in get_args(value) if a is not NoneType]
        if len(rest) == 1:
            return rest[0]
    return value


def _model_or_dict(value: Any, task: str, where: str) -> Model | None:
    if is_model(value):
        return value  # type: ignore[no-any-return]
    if _is_untyped(value):
        return None
    raise DefinitionError(f"step task {task!r}: {where} is annotated {value!r}; annotate it with a pydantic "
                          "model (the function gets or returns an instance of it) or dict (a JSON object)")


def declared_model(value: Any, what: str) -> Model | None:
    """A `Step(input_model=..., result_model=...)` argument checked: None or a pydantic model."""
    if value is None or is_model(value):
        return value  # type: ignore[no-any-return]
    raise DefinitionError(f"{what} must be a pydantic BaseModel subclass or None (got {value!r})")
