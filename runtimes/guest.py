"""What every runtime's guest shares: its error types, handles, namespaces, output cap, limit
names and import allowlist. One definition, so a program behaves the same on every runtime.

Used by the restricted executor (in the host's process and in the process runtime's confined
child) and by the wasi guest, into whose component it is bundled as the top-level module
``guest`` (next to ``wire``). So it imports only the standard library, never ``runtimes`` or
``sandbox``, and holds no state of its own.

Nothing here is a security boundary by itself: the restricted runtime hands these objects to
guest code through its guards (none of these classes is a guest class: `GUEST_MODULE` never
names this module, so the guest cannot write to them), and the wasi host re-checks everything
that crosses into it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# --- limit names ------------------------------------------------------------------------------

CPU = "cpu"
WALL = "wall"
MEMORY = "memory"
RECURSION = "recursion"
VALUE = "value"
LIMIT_NAMES = (CPU, WALL, MEMORY, RECURSION, VALUE)
"""Every name an ``error.limit`` can have, on every runtime (`sandbox.limits.LimitName`).
A size guard that refuses an allocation before it happens reports `MEMORY`, as an allocation
that fails reports it; a guard against C recursion reports `RECURSION`."""

LIMIT_MESSAGES = {MEMORY: "out of memory", RECURSION: "maximum recursion depth exceeded"}
"""The message of a limit the guest's own interpreter signals (no allocation needed to use them)."""


def limit_of(exc: BaseException) -> str | None:
    """The limit an exception of the guest's interpreter stands for: `MEMORY` for a
    ``MemoryError``, `RECURSION` for a ``RecursionError``, None for anything else."""
    if isinstance(exc, MemoryError):
        return MEMORY
    if isinstance(exc, RecursionError):
        return RECURSION
    return None


# --- errors a capability call raises in the guest ---------------------------------------------


class PolicyDenied(PermissionError):
    """The host's policy refused a capability call."""


class CapabilityError(Exception):
    """A capability failed on the host."""


FAULT_TYPES: Mapping[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "PolicyDenied": PolicyDenied,
    "CapabilityError": CapabilityError,
}
"""The exception a host fault's type name raises in the guest; any other name raises
`CapabilityError` (see `fault_type`)."""


def fault_type(name: object) -> type[Exception]:
    """The guest exception class for a fault named ``name`` (`CapabilityError` when unknown)."""
    return FAULT_TYPES.get(name, CapabilityError) if type(name) is str else CapabilityError


def error_kind(exc: BaseException) -> str:
    """The outcome kind of a guest exception that is not a limit: ``policy_denied`` for
    `PolicyDenied`, ``guest_exception`` otherwise."""
    return "policy_denied" if isinstance(exc, PolicyDenied) else "guest_exception"


# --- handles and namespaces -------------------------------------------------------------------


def not_writable(obj: object) -> TypeError:
    """The error of a write to an object the guest does not own (the same on every runtime)."""
    return TypeError(f"cannot modify a {type(obj).__name__} object: only your own lists, dicts, sets and objects")


class SecretHandle:
    """An opaque secret handle: shows its name and description, holds no secret and no token.

    Immutable. The runtime maps the handle's identity to what the host needs (a token, a
    resource) on its own side, so copies or look-alikes resolve to nothing.
    """

    __slots__ = ("name", "description")
    name: str
    description: str

    def __init__(self, name: str, description: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "description", description)

    def __setattr__(self, name: str, value: Any) -> None:
        raise not_writable(self)

    def __delattr__(self, name: str) -> None:
        raise not_writable(self)

    def __reduce__(self) -> Any:
        raise TypeError("secret handles cannot be copied or pickled")

    def __repr__(self) -> str:
        return self.description or f"<secret {self.name}>"

    __str__ = __repr__


class Namespace:
    """A read-only bag of guest-visible attributes (``secrets``, ``sql`` for ``sql.query``).

    Copies are the object itself; it cannot be pickled.
    """

    _label: str

    def __init__(self, label: str, members: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_label", label)
        for key, value in members.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise not_writable(self)

    def __delattr__(self, name: str) -> None:
        raise not_writable(self)

    def __repr__(self) -> str:
        names = ", ".join(sorted(k for k in vars(self) if not k.startswith("_")))
        return f"<{self._label}: {names}>"

    def __copy__(self) -> Namespace:
        return self

    def __deepcopy__(self, memo: Any) -> Namespace:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"{self!r} cannot be pickled")


class ModuleProxy(Namespace):
    """What ``import m`` gives the guest: a read-only view of an allowed module's reviewed
    names (`SURFACE`), built by `module_members`; ``__name__`` is the module's name."""

    __name__: str

    def __init__(self, name: str, members: Mapping[str, Any]) -> None:
        super().__init__(name, members)
        object.__setattr__(self, "__name__", name)

    def __repr__(self) -> str:
        return f"<module {self._label!r} (sandboxed)>"


def freeze(value: Any) -> Any:
    """An immutable stand-in for a module's mutable list, set or dict (other values as they are)."""
    if type(value) is list:
        return tuple(value)
    if type(value) is set:
        return frozenset(value)
    if type(value) is dict:
        return types.MappingProxyType(dict(value))
    return value


def module_members(module: Any, names: Iterable[str], replaced: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The members of a `ModuleProxy` for ``module``: each of ``names`` it has (``replaced``
    ones swapped for their replacement), submodules left out, mutable containers frozen."""
    replaced = replaced or {}
    members = {}
    for key in sorted(names):
        if key in replaced:
            members[key] = replaced[key]
            continue
        if not hasattr(module, key):
            continue
        value = getattr(module, key)
        if isinstance(value, types.ModuleType):
            continue
        members[key] = freeze(value)
    return members


def capability_globals(names: Iterable[str], make: Callable[[str], Any]) -> dict[str, Any]:
    """The guest globals for capabilities ``names``: a plain name maps to ``make(name)``, a
    dotted one (``geo.maps.route``) to nested read-only `Namespace` objects (``geo``, then
    ``geo.maps``) that end in ``make(name)``."""
    tree: dict[str, Any] = {}
    for name in names:
        *path, leaf = name.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = make(name)
    return {key: _namespace(key, value) for key, value in tree.items()}


def _namespace(label: str, value: Any) -> Any:
    if type(value) is dict:
        return Namespace(label, {key: _namespace(f"{label}.{key}", item) for key, item in value.items()})
    return value


# --- output -----------------------------------------------------------------------------------


class OutputCap:
    """What is left of a run's output cap, in UTF-8 bytes (stdout and stderr together).

    `keep` returns the part of a write that fits; past the cap nothing more is kept and
    ``truncated`` is set (a write that fills the cap exactly does not set it).
    """

    __slots__ = ("room", "truncated")

    def __init__(self, cap: int) -> None:
        self.room = cap
        self.truncated = False

    def keep(self, text: str) -> str:
        """The longest prefix of ``text`` that fits, cut at a character boundary."""
        if self.truncated:
            return ""
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size <= self.room:
            self.room -= size
            return text
        kept = text.encode("utf-8", "surrogatepass")[: self.room].decode("utf-8", "ignore")
        self.room = 0
        self.truncated = True
        return kept


# --- where an error happened ------------------------------------------------------------------

GUEST_FILENAME = "<guest>"
"""The file name guest code is compiled under."""
STRING_FILENAME = "<guest-string>"
"""The file name of code the guest compiles itself (``eval``/``exec`` of a string)."""


def guest_lineno(exc: BaseException) -> int | None:
    """The line of guest code (`GUEST_FILENAME`) closest to where ``exc`` was raised, or for a
    ``SyntaxError`` in guest code the line it names; None when no guest line is involved."""
    lineno = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == GUEST_FILENAME:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    if lineno is None and isinstance(exc, SyntaxError) and exc.filename in (GUEST_FILENAME, STRING_FILENAME):
        lineno = exc.lineno
    return lineno


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception cannot be printed."""
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001 - a guest __str__ may raise anything
        return f"<{type(exc).__name__} with an unprintable message>"


# --- builtins ---------------------------------------------------------------------------------

PLAIN_BUILTINS = tuple("""
    abs all any ascii bin bool bytes bytearray callable chr complex dict divmod enumerate filter float frozenset hash hex id
    int isinstance issubclass iter len map max min next object oct ord property range repr reversed
    round slice staticmethod classmethod str sum super tuple zip list set
""".split())
"""Python's builtins the guest has as they are (a runtime may still wrap some with checks)."""
EXCEPTIONS = tuple("""
    ArithmeticError AssertionError AttributeError BaseException EOFError Exception FloatingPointError
    GeneratorExit ImportError IndexError KeyError LookupError MemoryError ModuleNotFoundError NameError
    NotImplementedError OSError OverflowError PermissionError RecursionError RuntimeError StopIteration
    SyntaxError TimeoutError TypeError UnboundLocalError UnicodeDecodeError UnicodeEncodeError UnicodeError
    ValueError ZeroDivisionError Warning UserWarning DeprecationWarning
""".split())
"""The exception classes among the guest's builtins."""
RUN_BUILTINS = tuple("""
    print getattr hasattr setattr delattr dir eval exec sorted pow format type __import__ __build_class__
""".split())
"""The other builtins of the guest, each runtime's own (the restricted runtime binds guarded
versions to every run). No other builtin exists in the guest: no ``open``, ``input``,
``globals``, ``vars``, ``compile``, ``memoryview`` ..."""


# --- imports ----------------------------------------------------------------------------------

ALLOWED_MODULES = (
    "math", "json", "re", "datetime", "collections", "collections.abc", "itertools", "functools",
    "statistics", "decimal", "fractions", "random", "string", "typing", "dataclasses", "heapq",
    "bisect", "textwrap", "enum", "base64", "hashlib", "uuid", "csv", "io", "copy", "time", "_strptime",
)
"""The modules guest code may import, on every runtime: the default allowlist plus ``copy``
(HumanEval's tests import it; it only rebuilds objects the guest already holds, through their
``__reduce_ex__``/``__deepcopy__``), ``time`` (clocks and conversions only) and ``_strptime``,
which C code imports on the guest's behalf (``date.today()``, ``strftime`` and ``strptime``
import them through the caller's ``__import__``); guest code cannot name ``_strptime`` itself
(underscore names do not compile on restricted; `importable` leaves it out everywhere)."""


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


SURFACE: Mapping[str, frozenset[str]] = {
    "math": _names("""
        acos acosh asin asinh atan atan2 atanh cbrt ceil comb copysign cos cosh degrees dist e erf erfc exp
        exp2 expm1 fabs factorial floor fmod frexp fsum gamma gcd hypot inf isclose isfinite isinf isnan
        isqrt lcm ldexp lgamma log log10 log1p log2 modf nan nextafter perm pi pow prod radians remainder sin
        sinh sqrt tan tanh tau trunc ulp"""),
    "json": _names("JSONDecodeError JSONDecoder JSONEncoder detect_encoding dump dumps load loads"),
    # No DEBUG (compiling with it prints to the host's stdout), purge (a process-wide cache),
    # template/TEMPLATE/Scanner (sre internals).
    "re": _names("""
        A ASCII DOTALL I IGNORECASE L LOCALE M MULTILINE Match NOFLAG Pattern RegexFlag S U UNICODE VERBOSE X
        compile error escape findall finditer fullmatch match search split sub subn"""),
    "datetime": _names("MAXYEAR MINYEAR UTC date datetime time timedelta timezone tzinfo"),
    "collections": _names("ChainMap Counter OrderedDict UserDict UserList UserString defaultdict deque namedtuple"),
    "collections.abc": _names("""
        AsyncGenerator AsyncIterable AsyncIterator Awaitable ByteString Callable Collection Container Coroutine
        Generator Hashable ItemsView Iterable Iterator KeysView Mapping MappingView MutableMapping
        MutableSequence MutableSet Reversible Sequence Set Sized ValuesView"""),
    "itertools": _names("""
        accumulate chain combinations combinations_with_replacement compress count cycle dropwhile filterfalse
        groupby islice pairwise permutations product repeat starmap takewhile tee zip_longest"""),
    # No singledispatch (evaluates annotation strings), RLock, get_cache_token, recursive_repr.
    "functools": _names("cache cached_property cmp_to_key lru_cache partial partialmethod reduce total_ordering update_wrapper wraps"),
    "statistics": _names("""
        LinearRegression NormalDist StatisticsError correlation covariance fmean geometric_mean harmonic_mean
        linear_regression mean median median_grouped median_high median_low mode multimode pstdev pvariance
        quantiles stdev variance"""),
    # No getcontext/setcontext/localcontext or the shared template contexts: the guest's
    # arithmetic uses a context of its own run, and Context() objects it makes.
    "decimal": _names("""
        Clamped Context ConversionSyntax Decimal DecimalException DecimalTuple DivisionByZero DivisionImpossible
        DivisionUndefined FloatOperation Inexact InvalidContext InvalidOperation MAX_EMAX MAX_PREC MIN_EMIN
        MIN_ETINY Overflow ROUND_05UP ROUND_CEILING ROUND_DOWN ROUND_FLOOR ROUND_HALF_DOWN ROUND_HALF_EVEN
        ROUND_HALF_UP ROUND_UP Rounded Subnormal Underflow"""),
    "fractions": _names("Fraction"),
    # No SystemRandom (the OS pool); module functions are bound to a generator of the guest's own.
    "random": _names("""
        Random betavariate choice choices expovariate gammavariate gauss getrandbits getstate lognormvariate
        normalvariate paretovariate randbytes randint random randrange sample seed setstate shuffle triangular
        uniform vonmisesvariate weibullvariate"""),
    # No Formatter: get_field walks attributes unguarded (RestrictedPython advisory).
    "string": _names("Template ascii_letters ascii_lowercase ascii_uppercase capwords digits hexdigits octdigits printable punctuation whitespace"),
    # Only forms that neither evaluate annotation strings (get_type_hints, ForwardRef), write to a
    # process-wide registry (overload's registry, clear_overloads) or to the host's stderr
    # (reveal_type), set attributes on their argument (final, runtime_checkable,
    # no_type_check, abstractmethod, dataclass_transform), nor build classes from data
    # (NewType, ABCMeta; NamedTuple and TypedDict keep only their class forms).
    "typing": _names("""
        AbstractSet Annotated Any AnyStr Callable ChainMap ClassVar Collection Container Counter DefaultDict
        Deque Dict Final FrozenSet Generator Generic Hashable ItemsView Iterable Iterator KeysView List Literal
        LiteralString Mapping MappingView Match MutableMapping MutableSequence MutableSet NamedTuple Never
        NoReturn NotRequired Optional OrderedDict Pattern Protocol Required Reversible Self Sequence Set Sized
        SupportsAbs SupportsFloat SupportsIndex SupportsInt SupportsRound TYPE_CHECKING Text Tuple Type
        TypeAlias TypeGuard TypeVar TypedDict Union ValuesView assert_never assert_type cast get_args get_origin
        is_typeddict overload"""),
    # No make_dataclass (a class from data), FunctionType, GenericAlias.
    "dataclasses": _names("FrozenInstanceError InitVar KW_ONLY MISSING asdict astuple dataclass field fields is_dataclass replace"),
    "heapq": _names("heapify heappop heappush heappushpop heapreplace merge nlargest nsmallest"),
    "bisect": _names("bisect bisect_left bisect_right insort insort_left insort_right"),
    "textwrap": _names("TextWrapper dedent fill indent shorten wrap"),
    # The Enum bases only (guest versions without the functional API); no EnumType/EnumMeta,
    # global_enum and friends (they write into modules named by the class's __module__).
    "enum": _names("Enum Flag IntEnum IntFlag StrEnum auto member nonmember unique"),
    "base64": _names("""
        a85decode a85encode b16decode b16encode b32decode b32encode b32hexdecode b32hexencode b64decode
        b64encode b85decode b85encode decodebytes encodebytes standard_b64decode standard_b64encode
        urlsafe_b64decode urlsafe_b64encode"""),
    "hashlib": _names("""
        algorithms_available algorithms_guaranteed blake2b blake2s md5 new pbkdf2_hmac sha1 sha224 sha256 sha384
        sha3_224 sha3_256 sha3_384 sha3_512 sha512 shake_128 shake_256"""),
    # No getnode()/uuid1() (may run ifconfig in a subprocess).
    "uuid": _names("""
        NAMESPACE_DNS NAMESPACE_OID NAMESPACE_URL NAMESPACE_X500 RESERVED_FUTURE RESERVED_MICROSOFT RESERVED_NCS
        RFC_4122 SafeUUID UUID uuid3 uuid4 uuid5"""),
    # No register_dialect/unregister_dialect/field_size_limit (process-wide).
    "csv": _names("""
        Dialect DictReader DictWriter Error QUOTE_ALL QUOTE_MINIMAL QUOTE_NONE QUOTE_NONNUMERIC Sniffer excel
        excel_tab get_dialect list_dialects reader unix_dialect writer"""),
    "copy": _names("Error copy deepcopy error"),
    "io": _names("StringIO BytesIO"),
    # No sleep: a sleeping guest would hold its thread (or its instance) past the wall-clock limit.
    "time": _names("""
        time time_ns monotonic monotonic_ns perf_counter perf_counter_ns process_time process_time_ns
        thread_time thread_time_ns gmtime localtime mktime strftime strptime asctime ctime struct_time
        timezone altzone daylight tzname"""),
    "_strptime": _names("_strptime_datetime _strptime_time"),
}
"""The reviewed names of every allowed module, and nothing else: what ``import m`` gives the
guest on every runtime (tests/restricted_surface.txt holds the restricted runtime's whole
reachable surface, including the classes' attributes)."""


def importable(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules guest code can name in an ``import``: `ALLOWED_MODULES` and then ``extra``,
    without the private ones C code imports on the guest's behalf."""
    names = dict.fromkeys([*ALLOWED_MODULES, *extra])
    return tuple(name for name in names if not any(part.startswith("_") for part in name.split(".")))


def import_refused(name: object, allowed: Iterable[str]) -> ImportError:
    """The error of an ``import`` of a module that is not allowed; it names what is."""
    listed = ", ".join(sorted(m for m in allowed if not m.startswith("_")))
    return ImportError(f"import of {name!r} is not allowed; allowed modules: {listed}")
