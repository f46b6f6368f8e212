"""The code-mode stub: a sandbox's guest API as Python source a model (or an IDE) can read.

The stub is rendered from pydantic's JSON Schema of each capability: its arguments in
validation mode (what the guest may pass) and its result in serialization mode (what the
guest receives), so it describes the data that actually crosses the boundary:

- pydantic models, dataclasses and TypedDicts become ``TypedDict`` classes defined in the stub,
  named after the host type (``-> list[Order]`` with ``class Order(TypedDict): ...``); a
  returned model has every field (the guest gets a dict holding all of them);
- enums and ``Literal`` types become ``Literal[...]`` of their values, which is what the guest
  passes and receives;
- defaults are rendered as values (``limit: int = 20``); constraints (``ge=1``,
  ``max_length=80``) and field descriptions become comments;
- dotted capability names become nested classes (``geo.maps.route`` is ``class geo`` holding
  ``class maps``);
- dates, decimals, UUIDs, bytes, tuples and sets are named by the type the guest gets: the
  Python type when the boundary carries it, else their JSON form with a comment
  (``str  # ISO 8601 date``); see `sandbox.stub_schema`.

The rendered text is valid Python (compile it); defined types come before their use.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sandbox.stub_schema import capability_schemas, carried, ref_name

if TYPE_CHECKING:
    from sandbox.capabilities import Capability

HEADER = '"""Functions available to your code. Call them directly; they run on the host."""'
EXCEPTIONS = (
    "class CapabilityError(Exception): ...  # a capability failed on the host",
    "class PolicyDenied(PermissionError): ...  # the policy refused a call",
)
SECRET_HANDLE = "class SecretHandle: ...  # opaque handle to a host-held secret; pass it to a capability"

_IMPORTS = {"date": "datetime", "datetime": "datetime", "time": "datetime", "timedelta": "datetime",
            "Decimal": "decimal", "UUID": "uuid"}

_FORMATS = {
    "date-time": "ISO 8601 date-time",
    "date": "ISO 8601 date",
    "time": "ISO 8601 time",
    "duration": "ISO 8601 duration",
    "uuid": "UUID",
    "binary": "bytes as text",
}

_CONSTRAINTS = {
    "minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le", "exclusiveMaximum": "lt",
    "multipleOf": "multiple_of", "minLength": "min_length", "maxLength": "max_length",
    "minItems": "min_length", "maxItems": "max_length", "pattern": "pattern",
}

_RESERVED = frozenset({"Any", "Literal", "NotRequired", "TypedDict", "SecretHandle", "CapabilityError",
                       "PolicyDenied", "secrets", *_IMPORTS})


def guest_modules(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules guest code may import, the same on every runtime (`runtimes.guest.importable`):
    the allowlist plus ``extra``, the optional modules a Sandbox adds (``modules=``). Private
    names are left out: C code imports ``_strptime`` on the guest's behalf, guest code cannot name it."""
    from runtimes.guest import importable

    return importable(extra)


def render_api(capabilities: Mapping[str, Capability], secret_names: Iterable[str] = ()) -> str:
    """The whole stub: type definitions, functions (namespaces as nested classes), secret handles
    and the two exception types the guest can catch."""
    renderer = _Renderer(capabilities.values())
    body: list[str] = []
    tree: dict[str, Any] = {}
    for cap in capabilities.values():
        node = tree
        for part in cap.name.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[cap.name.rsplit(".", 1)[-1]] = cap
    body += renderer.namespace(tree, ())
    secrets = sorted(secret_names)
    if secrets:
        body.append("class secrets:  # opaque handles; pass them to capabilities, their values stay on the host")
        body += [f"    {name}: SecretHandle" for name in secrets]
        body.append("")
    definitions = renderer.definitions()
    head = [HEADER, ""]
    imports = renderer.import_lines()
    if imports:
        head += [*imports, ""]
    if secrets or renderer.uses_handle:
        head += [SECRET_HANDLE, ""]
    return "\n".join(head + definitions + body + list(EXCEPTIONS)).rstrip() + "\n"


def render_function(cap: Capability) -> str:
    """One capability as a ``def`` with its signature and docstring (types it uses are named,
    not defined; `render_api` defines them)."""
    return "\n".join(_Renderer([cap]).function(cap))


class _Renderer:
    """Renders capabilities from one joint JSON Schema generation (shared definitions)."""

    def __init__(self, capabilities: Iterable[Capability]) -> None:
        caps = list(capabilities)
        self.arguments, self.results, self.defs = capability_schemas(caps)
        self.def_direction = {key: "result" if "-Output" in key else "arg" for key in self.defs}
        self.names = self._names(caps)
        self.used: set[str] = set()
        self.imports: set[str] = set()
        self.typing: set[str] = set()
        self.uses_handle = False

    # -- names ---------------------------------------------------------------------------

    def _names(self, caps: list[Capability]) -> dict[str, str]:
        taken = set(_RESERVED) | {cap.name.split(".")[0] for cap in caps}
        names: dict[str, str] = {}
        for key in sorted(self.defs, key=lambda k: ("-Input" in k, k)):
            title = str(self.defs[key].get("title") or key)
            name = re.sub(r"\W", "_", title) + ("Input" if "-Input" in key else "")
            if not name or name[0].isdigit() or keyword.iskeyword(name):
                name = "T_" + name
            candidate, n = name, 2
            while candidate in taken:
                candidate, n = f"{name}{n}", n + 1
            taken.add(candidate)
            names[key] = candidate
        return names

    # -- types ---------------------------------------------------------------------------

    def type(self, node: Any, direction: str, notes: list[str]) -> str:
        """Python type text for a schema ``node``; what needs a comment goes to ``notes``."""
        if not isinstance(node, dict) or not node:
            self.typing.add("Any")
            return "Any"
        if "$ref" in node:
            key = ref_name(node["$ref"])
            self.used.add(key)
            return self.names[key]
        if node.get("title") == "SecretHandle" and node.get("type") == "object" and "properties" not in node:
            self.uses_handle = True
            return "SecretHandle"
        kind = node.get("x-python")
        if kind is not None and carried(kind, direction):
            return self._python(kind, node, direction, notes)
        if kind == "Decimal":
            notes.append("decimal number" + (" as text" if direction == "result" else ""))
        if "const" in node:
            self.typing.add("Literal")
            return f"Literal[{node['const']!r}]"
        if "enum" in node:
            self.typing.add("Literal")
            return f"Literal[{', '.join(repr(v) for v in node['enum'])}]"
        for union in ("anyOf", "oneOf"):
            if union in node:
                return self._union([self.type(branch, direction, notes) for branch in node[union]])
        if "allOf" in node and len(node["allOf"]) == 1:
            return self.type(node["allOf"][0], direction, notes)
        kinds = node.get("type")
        if isinstance(kinds, list):
            return self._union([self.type({**node, "type": k}, direction, notes) for k in kinds])
        if kinds == "string":
            if node.get("format") in _FORMATS:
                notes.append(_FORMATS[node["format"]])
            return "str"
        simple = {"integer": "int", "number": "float", "boolean": "bool", "null": "None"}
        if kinds in simple:
            return simple[kinds]
        if kinds == "array":
            if "prefixItems" in node:
                items = [self.type(item, direction, notes) for item in node["prefixItems"]]
                notes.append(f"a list of exactly [{', '.join(items)}]")
                return f"list[{self._union(items)}]"
            if node.get("uniqueItems"):
                notes.append("unique items")
            item = node.get("items")
            return f"list[{self.type(item, direction, notes)}]" if item else "list"
        if kinds == "object":
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                return f"dict[str, {self.type(extra, direction, notes)}]"
            return "dict"
        self.typing.add("Any")
        return "Any"

    def _python(self, kind: str, node: dict[str, Any], direction: str, notes: list[str]) -> str:
        if kind in _IMPORTS:
            self.imports.add(kind)
            return kind
        if kind == "bytes":
            return "bytes"
        if "prefixItems" in node:
            return f"tuple[{', '.join(self.type(item, direction, notes) for item in node['prefixItems'])}]"
        items = node.get("items")
        inner = self.type(items, direction, notes) if items else "Any"
        if kind == "tuple":
            return f"tuple[{inner}, ...]"
        return f"{kind}[{inner}]"

    @staticmethod
    def _union(parts: list[str]) -> str:
        unique = list(dict.fromkeys(parts))
        if "None" in unique:
            unique = [p for p in unique if p != "None"] + ["None"]
        return " | ".join(unique)

    # -- definitions ---------------------------------------------------------------------

    def definitions(self) -> list[str]:
        """Every definition referenced by a rendered function, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(key: str) -> None:
            if key in seen:
                return
            seen.add(key)
            for dep in sorted(_refs(self.defs[key])):
                visit(dep)
            order.append(key)

        pending = set(self.used)
        while pending - seen:
            for key in sorted(pending - seen):
                visit(key)
            pending = set(self.used)  # rendering a definition may name more
        lines: list[str] = []
        for key in order:
            lines += self._definition(key) + [""]
        return lines

    def _definition(self, key: str) -> list[str]:
        node, name, direction = self.defs[key], self.names[key], self.def_direction[key]
        doc = node.get("description")
        if node.get("type") == "object" and ("properties" in node or not isinstance(node.get("additionalProperties"), dict)):
            return self._typed_dict(name, node, direction, doc)
        notes: list[str] = []
        text = f"{name} = {self.type({k: v for k, v in node.items() if k != 'title'}, direction, notes)}"
        comment = "; ".join(notes + ([_one_line(doc)] if doc else []))
        return [text + (f"  # {comment}" if comment else "")]

    def _typed_dict(self, name: str, node: dict[str, Any], direction: str, doc: str | None) -> list[str]:
        self.typing.add("TypedDict")
        required = set(node.get("required", ()))
        fields = []
        for field, schema in node.get("properties", {}).items():
            notes: list[str] = []
            text = self.type(schema, direction, notes)
            if field not in required:
                self.typing.add("NotRequired")
                text = f"NotRequired[{text}]"
                if "default" in schema:
                    notes.append(f"default {schema['default']!r}")
            fields.append((field, text, _comment(schema, notes)))
        if all(f.isidentifier() and not keyword.iskeyword(f) for f, _, _ in fields):
            lines = [f"class {name}(TypedDict):"]
            if doc:
                lines.append(textwrap.indent(_docstring(doc), "    "))
            lines += [f"    {f}: {t}" + (f"  # {c}" if c else "") for f, t, c in fields]
            if len(lines) == 1:
                lines.append("    pass")
            return lines
        lines = ([f"# {_one_line(doc)}"] if doc else []) + [f"{name} = TypedDict({name!r}, {{"]
        lines += [f"    {f!r}: {t}," + (f"  # {c}" if c else "") for f, t, c in fields]
        return lines + ["})"]

    # -- functions -----------------------------------------------------------------------

    def function(self, cap: Capability) -> list[str]:
        arguments = self.arguments[cap.name]
        properties = arguments.get("properties", {})
        required = set(arguments.get("required", ()))
        params: list[tuple[str, str]] = []
        previous = None
        for param in cap.signature.parameters.values():
            if param.kind == param.KEYWORD_ONLY and (previous is None or previous.kind != param.KEYWORD_ONLY):
                params.append(("*", ""))
            previous = param
            schema = properties.get(param.name, {})
            notes: list[str] = []
            text = f"{param.name}: {self.type(schema, 'arg', notes)}"
            if "default" in schema:
                text += f" = {schema['default']!r}"
            elif param.name not in required:
                text += " = ..."
            params.append((text, _comment(schema, notes)))
        result_notes: list[str] = []
        returns = self.type(self.results[cap.name], "result", result_notes)
        leaf = cap.name.rsplit(".", 1)[-1]
        tail = f" -> {returns}:" + (f"  # returns {'; '.join(result_notes)}" if result_notes else "")
        if any(comment for _, comment in params):
            lines = [f"def {leaf}("]
            lines += [f"    {text}," + (f"  # {comment}" if comment else "") for text, comment in params]
            lines.append(")" + tail)
        else:
            lines = [f"def {leaf}({', '.join(text for text, _ in params)})" + tail]
        lines.append(textwrap.indent(_docstring(cap.description or "No description.") + "\n...", "    "))
        return lines

    def namespace(self, tree: dict[str, Any], path: tuple[str, ...]) -> list[str]:
        """Functions at this level, then one nested class per sub-namespace."""
        lines: list[str] = []
        for name, item in tree.items():
            if not isinstance(item, dict):
                block = self.function(item)
                if path:
                    block = ["@staticmethod", *block]
                lines += block + [""]
        for name, item in sorted((n, i) for n, i in tree.items() if isinstance(i, dict)):
            dotted = ".".join((*path, name))
            inner = self.namespace(item, (*path, name))
            lines += [f"class {name}:  # use as {dotted}.<name>(...)"]
            lines += [textwrap.indent(line, "    ") if line else "" for line in inner]
        return lines

    def import_lines(self) -> list[str]:
        lines = []
        by_module: dict[str, list[str]] = {}
        for name in sorted(self.imports):
            by_module.setdefault(_IMPORTS[name], []).append(name)
        for module, names in sorted(by_module.items()):
            lines.append(f"from {module} import {', '.join(names)}")
        if self.typing:
            lines.append(f"from typing import {', '.join(sorted(self.typing))}")
        return lines


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {ref_name(node["$ref"])} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def _comment(schema: dict[str, Any], notes: list[str]) -> str:
    """Constraints, notes and the description of one field or parameter, as comment text."""
    constraints: dict[str, Any] = {}
    for node in [schema, *schema.get("anyOf", ())]:
        if "prefixItems" in node:
            continue
        for key, label in _CONSTRAINTS.items():
            if key in node:
                constraints.setdefault(label, node[key])
    parts = [", ".join(f"{label}={value!r}" for label, value in constraints.items())] if constraints else []
    parts += notes
    if schema.get("description") and schema.get("title") != "SecretHandle":
        parts.append(_one_line(schema["description"]))
    return "; ".join(dict.fromkeys(parts))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _docstring(text: str) -> str:
    """``text`` as a docstring literal that always compiles (raw when it holds a backslash)."""
    text = text.replace('"""', "'''")
    if text.endswith(('"', "\\")):
        text += " "
    prefix = "r" if "\\" in text else ""
    return prefix + '"""' + text + '"""'
