"""The guest's ``import``: an allowlist of stdlib modules handed out as read-only proxies.

A `ModuleProxy` exposes exactly the names `SURFACE` lists for its module (reviewed one by one:
nothing that evaluates strings as code, writes process-wide registries or caches, takes a
``module=`` name, builds classes from data, walks guest objects with host privileges, writes to
real file descriptors or starts processes), with the functions in `replacements.REPLACED`
swapped for guarded versions and mutable containers frozen. Proxies are built once per
process and shared, so they are immutable and cannot be copied into mutable ones; ``random``
is the exception: each import gets its own ``Random`` instance, so a guest's ``seed`` never
touches the host's generator or another run's.
"""

from __future__ import annotations

import importlib
import random as _random
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

from runtimes.restricted.guards import WRITABLE_PACKAGES, expose_types
from runtimes.restricted import guest_re  # imported here, not during a run: regex registers with copyreg
from runtimes.restricted.replacements import REPLACED

ALLOWED_MODULES = (
    "math", "json", "re", "datetime", "collections", "collections.abc", "itertools", "functools",
    "statistics", "decimal", "fractions", "random", "string", "typing", "dataclasses", "heapq",
    "bisect", "textwrap", "enum", "base64", "hashlib", "uuid", "csv", "io", "copy", "time", "_strptime",
)
"""The default allowlist plus ``copy`` (HumanEval's tests import it; it only rebuilds
objects the guest already holds, through their ``__reduce_ex__``/``__deepcopy__``), ``time``
(clocks and conversions only) and ``_strptime``, which C code imports on the guest's behalf
(``date.today()``, ``strftime`` and ``strptime`` import them through the caller's
``__import__``); guest code cannot name ``_strptime`` itself (underscore names do not compile)."""

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
    # arithmetic uses a context of its own run (see the executor), and Context() objects it makes.
    "decimal": _names("""
        Clamped Context ConversionSyntax Decimal DecimalException DecimalTuple DivisionByZero DivisionImpossible
        DivisionUndefined FloatOperation Inexact InvalidContext InvalidOperation MAX_EMAX MAX_PREC MIN_EMIN
        MIN_ETINY Overflow ROUND_05UP ROUND_CEILING ROUND_DOWN ROUND_FLOOR ROUND_HALF_DOWN ROUND_HALF_EVEN
        ROUND_HALF_UP ROUND_UP Rounded Subnormal Underflow"""),
    "fractions": _names("Fraction"),
    # No SystemRandom (the OS pool); module functions are bound to a generator of each import's own.
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
    # No sleep: a sleeping guest would hold the host thread past the wall-clock limit.
    "time": _names("""
        time time_ns monotonic monotonic_ns perf_counter perf_counter_ns process_time process_time_ns
        thread_time thread_time_ns gmtime localtime mktime strftime strptime asctime ctime struct_time
        timezone altzone daylight tzname"""),
    "_strptime": _names("_strptime_datetime _strptime_time"),
}
"""The reviewed names of every allowed module, and nothing else (tests/restricted_surface.txt
holds the whole reachable surface, including the classes' attributes)."""

OPTIONAL_MODULES = ("numpy", "pandas")
"""Heavy C-extension modules a `ProcessDriver` may add to its children's allowlist (never the
in-process runtime's: see docs/data.md, "Why numpy and pandas are not offered in-process").
Their proxies carry every public attribute; raw memory, file I/O and runaway C calls are
contained by the process layers (rlimits, seccomp, netns, Landlock), not by the guards."""

SOURCES: dict[str, Callable[[], Any]] = {"re": lambda: guest_re}
"""Where a module's names are read from when it is not the stdlib module of that name (a
wrapper object offering the same API); default `importlib.import_module`."""


class ModuleProxy:
    """A read-only view of an allowed module's public, non-module attributes."""

    def __init__(self, name: str, members: Mapping[str, Any]) -> None:
        object.__setattr__(self, "__name__", name)
        for key, value in members.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"module {self.__name__!r} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"module {self.__name__!r} is read-only")

    def __repr__(self) -> str:
        return f"<module {self.__name__!r} (sandboxed)>"

    def __copy__(self) -> ModuleProxy:
        return self

    def __deepcopy__(self, memo: Any) -> ModuleProxy:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("modules cannot be pickled")


def _freeze(value: Any) -> Any:
    if type(value) is list:
        return tuple(value)
    if type(value) is set:
        return frozenset(value)
    if type(value) is dict:
        return types.MappingProxyType(dict(value))
    return value


def _members(name: str) -> dict[str, Any]:
    """The proxy members of allowed module ``name``: the `SURFACE` names (every public non-module
    name for an `OPTIONAL_MODULES` package), replacements applied, containers frozen."""
    module = SOURCES[name]() if name in SOURCES else importlib.import_module(name)
    names = SURFACE.get(name)
    if names is None:
        if name.partition(".")[0] not in OPTIONAL_MODULES:
            raise ImportError(f"module {name!r} has no reviewed surface")
        names = frozenset(key for key in dir(module) if not key.startswith("_"))
    replaced = REPLACED.get(name, {})
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
        members[key] = _freeze(value)
    expose_types(members.values())
    return members


class ModuleTable:
    """Builds proxies lazily and serves the guest's ``__import__``."""

    def __init__(self, allowed: tuple[str, ...] = ALLOWED_MODULES) -> None:
        self.allowed = frozenset(allowed)
        self._proxies: dict[str, ModuleProxy] = {}
        self._lock = threading.RLock()  # building a package's proxy builds its allowed submodules

    def allow(self, names: tuple[str, ...]) -> None:
        """Add `OPTIONAL_MODULES` to this table (the process zygote does so, before confinement,
        for its own children only); any other name raises `ValueError`. Their instances become
        writable by the guest, and their submodules importable (see `import_`)."""
        unknown = set(names) - set(OPTIONAL_MODULES)
        if unknown:
            raise ValueError(f"not optional modules: {sorted(unknown)}; choose from {list(OPTIONAL_MODULES)}")
        with self._lock:
            self.allowed = self.allowed | frozenset(names)
            WRITABLE_PACKAGES.update(names)

    def proxy(self, name: str) -> ModuleProxy:
        """The proxy for allowed module ``name`` (a fresh one for ``random``)."""
        if name == "random":
            return self._random()
        proxy = self._proxies.get(name)
        if proxy is None:
            with self._lock:
                proxy = self._proxies.get(name)
                if proxy is None:
                    members = _members(name)
                    prefix = name + "."
                    for sub in self.allowed:
                        if sub.startswith(prefix) and "." not in sub[len(prefix):]:
                            members[sub[len(prefix):]] = self.proxy(sub) if sub != "random" else None
                    proxy = ModuleProxy(name, members)
                    self._proxies[name] = proxy
        return proxy

    def _random(self) -> ModuleProxy:
        members = _members("random")
        generator = _random.Random()
        shared = _random._inst  # the host's hidden generator, whose bound methods the module exports
        for key, value in list(members.items()):
            if getattr(value, "__self__", None) is shared:
                members[key] = getattr(generator, key)
        return ModuleProxy("random", members)

    def import_(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        """The guest's ``__import__``: raises ImportError naming the module when not allowed."""
        if level != 0:
            raise ImportError("relative imports are not allowed")
        if type(name) is str and name.partition(".")[0] in WRITABLE_PACKAGES and name not in self.allowed:
            # A submodule of an optional package: C code imports these through the caller's
            # __import__ (np.sum -> numpy._core._methods) and uses sys.modules, not the result.
            private = any(part.startswith("_") for part in name.split("."))
            importlib.import_module(name)
            return self.proxy(name) if fromlist and not private else self.proxy(name.partition(".")[0])
        if type(name) is not str or name not in self.allowed:
            allowed = ", ".join(sorted(m for m in self.allowed if not m.startswith("_")))
            raise ImportError(f"import of {name!r} is not allowed; allowed modules: {allowed}")
        if fromlist:
            return self.proxy(name)
        return self.proxy(name.split(".")[0])


MODULES = ModuleTable()
