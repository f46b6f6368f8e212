"""The code-mode stub and prompt describe exactly what crosses the boundary, per Sandbox.

The stub is executed as Python (its types must be defined before use) and its TypedDicts are
checked against the data a real guest receives, on every runtime."""

from __future__ import annotations

import datetime
import decimal
import enum
import re
import types
import typing
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints, is_typeddict

import pytest
from pydantic import BaseModel, Field, create_model
from typing_extensions import TypedDict

from sandbox import Sandbox, Secret, SecretValue, capability
from sandbox.adapters.prompts import code_mode_prompt
from sandbox.stub import guest_modules


class Status(enum.Enum):
    """Where an order is."""

    open = "open"
    shipped = "shipped"


class Line(TypedDict):
    sku: str
    qty: int


class Order(BaseModel):
    """An order."""

    id: int
    status: Status = Status.open
    placed: datetime.datetime
    amount: decimal.Decimal
    lines: list[Line] = []
    tags: set[str] = set()
    pair: tuple[int, str] = (1, "a")
    note: str | None = Field(None, description="free text", max_length=20)


ORDERS = [
    Order(id=1, placed=datetime.datetime(2024, 5, 1, 12), amount=decimal.Decimal("9.50"),
          lines=[{"sku": "a-1", "qty": 2}], tags={"gift"}, note="ring twice"),
    Order(id=2, status=Status.shipped, placed=datetime.datetime(2024, 5, 2), amount=decimal.Decimal("3")),
]
RECEIVED: list[Any] = []


@capability(name="shop.orders")
def orders(limit: int = Field(20, ge=1, le=100), status: Status | None = None,
           since: datetime.date | None = None) -> list[Order]:
    """Recent orders, newest first."""
    return [o for o in ORDERS if status is None or o.status == status][:limit]


@capability(name="shop.put")
def put(order: Order) -> int:
    """Store an order; returns its id."""
    RECEIVED.append(order)
    return order.id


@capability(name="geo.maps.route")
def route(a: str, b: str, *, mode: Literal["car", "foot"] = "car") -> dict[str, float]:
    """Distance and duration of a route."""
    return {"km": 1.0, "minutes": 2.0}


@capability(name="geo.where")
def where(place: Annotated[str, Field(min_length=1)]) -> tuple[float, float]:
    r"""Coordinates of a place; "quotes", \backslashes and \"\"\" survive."""
    return (48.85, 2.35)


@capability
def sign(payload: str, key: SecretValue) -> str:
    """Sign ``payload`` with a secret key."""
    return "signed"


ALL = [orders, put, route, where, sign]


def stub_of(sb: Sandbox) -> tuple[str, dict[str, Any]]:
    """The stub and the namespace it defines when executed as a module."""
    stub = sb.describe().stub
    namespace: dict[str, Any] = {"__name__": "guest_api_stub"}
    exec(compile(stub, "<stub>", "exec", dont_inherit=True), namespace)  # noqa: S102 - annotations evaluated eagerly
    return stub, namespace


def test_types_are_defined_in_the_stub_defaults_are_values_and_namespaces_nest():
    with Sandbox(capabilities=ALL, secrets={"key": Secret(value="k3y-value", capabilities=["sign"])}) as sb:
        stub, namespace = stub_of(sb)
    assert "FieldInfo" not in stub and "<Status" not in stub and "geo_maps" not in stub
    # Enum: the values the guest passes and receives.
    assert "Status = Literal['open', 'shipped']  # Where an order is." in stub
    # The returned model is the dict the guest gets: every field present, typed values by their type.
    returned = stub[stub.index("class Order(TypedDict):"):].split("\n\n")[0].splitlines()
    assert returned == [
        "class Order(TypedDict):",
        '    """An order."""',
        "    id: int",
        "    status: Status",
        "    placed: datetime",
        "    amount: Decimal",
        "    lines: list[Line]",
        "    tags: set[str]",
        "    pair: tuple[int, str]",
        "    note: str | None  # max_length=20; free text",
    ]
    # The same model as an argument: fields with defaults may be left out.
    assert "class OrderInput(TypedDict):" in stub and "    status: NotRequired[Status]  # default 'open'" in stub
    assert "class Line(TypedDict):\n    sku: str\n    qty: int\n" in stub
    # Defaults as values, constraints as comments, keyword-only and positional-only markers kept.
    assert "        limit: int = 20,  # ge=1, le=100\n" in stub
    assert "        since: date | None = None,\n" in stub
    assert ") -> list[Order]:" in stub
    assert "def route(a: str, b: str, *, mode: Literal['car', 'foot'] = 'car') -> dict[str, float]:" in stub
    assert "        place: str,  # min_length=1\n    ) -> tuple[float, float]:" in stub
    assert "class geo:  # use as geo.<name>(...)\n" in stub
    assert "    class maps:  # use as geo.maps.<name>(...)\n        @staticmethod\n        def route(" in stub
    assert "def sign(payload: str, key: SecretHandle) -> str:" in stub
    assert "class secrets:" in stub and "    key: SecretHandle" in stub
    # Executing it defines every name it uses, in order.
    assert is_typeddict(namespace["Order"]) and is_typeddict(namespace["OrderInput"])
    assert get_args(namespace["Status"]) == ("open", "shipped")
    assert callable(namespace["geo"].maps.route) and callable(namespace["shop"].orders)
    assert "backslashes" in namespace["geo"].where.__doc__
    assert "k3y-value" not in stub


def test_a_single_capability_stub_is_its_def():
    assert orders.stub().startswith("def orders(\n    limit: int = 20,  # ge=1, le=100\n")
    assert "def where(\n    place: str,  # min_length=1\n) -> tuple[float, float]:" in where.stub()


def test_positional_only_parameters_are_refused_at_declaration():
    def f(a: int, /) -> int:
        return a

    with pytest.raises(TypeError, match="positional-only parameter 'a'"):
        capability(f)


def test_annotated_constraints_are_validated_as_the_stub_says():
    with Sandbox(capabilities=ALL) as sb:
        result = sb.run("geo.where('')")
        assert result.error is not None and result.error.type == "ValueError"
        assert "at least 1 character" in result.error.message
        assert sb.run("geo.where('Paris')").value == (48.85, 2.35)
        assert sb.run("shop.orders(limit=0)").error.type == "ValueError"


GUEST_SHAPE = """
import datetime, decimal, uuid
def name(v):
    for t, n in ((bool, 'bool'), (int, 'int'), (float, 'float'), (str, 'str'), (type(None), 'NoneType'),
                 (bytes, 'bytes'), (datetime.datetime, 'datetime'), (datetime.date, 'date'),
                 (decimal.Decimal, 'Decimal'), (uuid.UUID, 'UUID')):
        if isinstance(v, t):
            return n
    return 'other'
def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    for t, n in ((list, 'list'), (tuple, 'tuple'), (set, 'set'), (frozenset, 'frozenset')):
        if isinstance(v, t):
            return [n, [shape(x) for x in v]]
    return name(v)
"""


def conforms(shape: Any, hint: Any, namespace: dict[str, Any]) -> bool:
    """Whether a guest value's shape (see GUEST_SHAPE) is an instance of the stub's type ``hint``."""
    if hint is Any:
        return True
    if is_typeddict(hint):
        fields = get_type_hints(hint, globalns=namespace)
        return (isinstance(shape, dict) and set(shape) == set(fields) == set(hint.__required_keys__)
                and all(conforms(shape[k], fields[k], namespace) for k in fields))
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return any(shape == type(arg).__name__ for arg in args)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(shape, arg, namespace) for arg in args)
    if origin in (list, tuple, set, frozenset):
        if not (isinstance(shape, list) and shape[0] == origin.__name__):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(shape[1]) == len(args) and all(conforms(s, a, namespace) for s, a in zip(shape[1], args))
        return all(conforms(item, args[0], namespace) for item in shape[1]) if args else True
    if origin is dict or hint is dict:
        return isinstance(shape, dict) and all(conforms(v, args[1], namespace) for v in shape.values()) if args else isinstance(shape, dict)
    if hint is None or hint is type(None):
        return shape == "NoneType"
    return shape == hint.__name__


def test_conforms_is_strict():
    ns: dict[str, Any] = {}
    assert conforms(["list", ["int", "int"]], list[int], ns)
    assert not conforms(["list", ["int", "str"]], list[int], ns)
    assert not conforms(["tuple", ["int"]], list[int], ns)
    assert not conforms("str", int | None, ns) and conforms("NoneType", int | None, ns)


def test_stub_types_match_what_the_guest_receives_and_may_send(make_sandbox):
    sb = make_sandbox(capabilities=ALL)
    _, namespace = stub_of(sb)
    result = sb.run(GUEST_SHAPE + "[shape(shop.orders()), shape(geo.where('x')), shape(geo.maps.route('a', 'b'))]")
    assert result.ok, result.error
    received_orders, received_where, received_route = result.value
    hints = get_type_hints(namespace["shop"].orders, globalns=namespace)
    assert len(received_orders[1]) == 2 and conforms(received_orders, hints["return"], namespace), received_orders
    assert conforms(received_where, get_type_hints(namespace["geo"].where, globalns=namespace)["return"], namespace)
    assert conforms(received_route, get_type_hints(namespace["geo"].maps.route)["return"], namespace)
    # What the stub says a guest may send is accepted: OrderInput's required keys only, JSON forms.
    required = sorted(namespace["OrderInput"].__required_keys__)
    assert required == ["amount", "id", "placed"]
    RECEIVED.clear()
    sent = sb.run("shop.put({'id': 7, 'placed': '2024-05-03T08:00:00', 'amount': '1.25'})")
    assert sent.ok and sent.value == 7, sent.error
    assert RECEIVED == [Order(id=7, placed=datetime.datetime(2024, 5, 3, 8), amount=decimal.Decimal("1.25"))]
    assert sb.run("shop.orders(status='shipped', since='2024-01-01')").value[0]["id"] == 2


def test_prompt_lists_exactly_the_importable_modules(make_sandbox, runtime):
    sb = make_sandbox()
    api = sb.describe()
    assert api.modules == list(guest_modules()) and api.modules
    assert not [name for name in api.modules if name.startswith("_") or "._" in name]
    prompt = code_mode_prompt(sb)
    listed = re.search(r"You may import only these modules: (.*)\.\n", prompt)
    assert listed is not None and listed.group(1).split(", ") == api.modules
    # Every module the prompt lists imports on this runtime.
    result = sb.run("\n".join(f"import {name}" for name in api.modules) + "\n'ok'")
    assert result.value == "ok", result.error
    # Every other module is refused, on every runtime (one allowlist, applied inside each guest).
    for name in ("queue", "stat", "unicodedata", "os", "sys", "socket", "select", "gc"):
        refused = sb.run(f"import {name}")
        assert refused.error is not None and refused.error.type == "ImportError", name
        assert name not in api.modules


def test_optional_modules_appear_in_the_prompt_only_when_the_sandbox_offers_them():
    pytest.importorskip("numpy")
    with Sandbox("restricted", isolation="process", modules=["numpy"]) as sb:
        assert sb.describe().modules[-1] == "numpy"
        assert sb.run("import numpy\nint(numpy.arange(4).sum())").value == 6
    with Sandbox() as sb:
        assert "numpy" not in sb.describe().modules


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


class Person(BaseModel):
    first_name: str = Field(alias="first-name")


SameName = create_model("Tree", value=(int, ...))


def test_recursive_aliased_and_same_named_models_render_as_valid_distinct_types():
    @capability
    def grow(tree: Tree) -> Tree:
        '''Echo a tree; """quotes""" survive, even at the end"'''
        return tree

    @capability
    def greet(person: Person) -> Person:
        """Echo a person."""
        return person

    @capability
    def other() -> SameName:  # type: ignore[valid-type]
        """Another class named Tree."""
        return SameName(value=1)

    with Sandbox(capabilities=[grow, greet, other]) as sb:
        stub, namespace = sb.describe().stub, {}
        exec(compile("from __future__ import annotations\n" + stub, "<stub>", "exec", dont_inherit=True), namespace)
        assert "class Tree(TypedDict):\n    name: str\n    children: list[Tree]\n" in stub
        assert "class Tree2(TypedDict):\n    value: int\n" in stub and "def other() -> Tree2:" in stub
        # Arguments are validated by alias, results dumped by field name: the stub says both.
        assert "PersonInput = TypedDict('PersonInput', {\n    'first-name': str,\n})" in stub
        assert "class Person(TypedDict):\n    first_name: str\n" in stub
        assert sb.run("greet({'first-name': 'Ada'})").value == {"first_name": "Ada"}
        assert sb.run("grow({'name': 'r', 'children': [{'name': 'c'}]})").value == {
            "name": "r", "children": [{"name": "c", "children": []}]}
    assert "quotes" in namespace["grow"].__doc__


def test_a_capability_name_has_a_length_limit() -> None:
    from sandbox.capabilities import MAX_NAME_LENGTH
    from sandbox.errors import ConfigurationError

    def f() -> int:
        return 1

    assert capability(f, name="a" * MAX_NAME_LENGTH).name == "a" * MAX_NAME_LENGTH
    with pytest.raises(ConfigurationError, match="shorter name"):
        capability(f, name="a" * (MAX_NAME_LENGTH + 1))
