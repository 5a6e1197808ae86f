"""A client's JSON Schema (`response_format`, a tool's `parameters`) in the form Gemini's
`responseJsonSchema` / `parametersJsonSchema` take (pure).

Google documents what those fields read: `$defs` (not Draft 7's `definitions`) and `$ref`, and
"if $ref is set on a sub-schema, no other properties, except for those starting as a $, may be
set". What pydantic and zod write breaks both: pydantic v1 and zod-to-json-schema put their
models in `definitions`, and pydantic v2 writes a described sub-model as `{"$ref": …,
"description": …}` (older v2 as `{"allOf": [{"$ref": …}], …}`; `allOf` is not read at all).
So, exactly as the schema says:
- `definitions` becomes `$defs`, and a reference into it `#/…/$defs/…`;
- a `$ref` with other keywords beside it goes alone into a one-member `anyOf` (a one-member
  `anyOf` means what the `$ref` did), the other keywords staying where they were;
- a one-member `allOf` is that same one-member `anyOf`, and one of several objects' schemas
  with only their properties (zod's intersection, `.and()`), Gemini reading no `allOf`, is the
  one object it means: their properties, `required` and descriptions together, closed
  (`additionalProperties: false`) when each was;
- a string or number `const` (pydantic's `Literal`, zod's `z.literal`: the tags of discriminated
  unions), which Gemini's fields do not read and ignore, is the one-member `enum` it reads, with
  the `type` it implies (others, and one beside an `enum` or another type, stay as written);
- an `enum` listing null (pydantic's `Literal["a", None]`, zod's union of literals), where
  Gemini's enum holds only strings and numbers, is a two-member `anyOf`: the enum of the others
  (with the `type` they imply, or the non-null part of a `type` list) and `{"type": "null"}`.
- a constraint Google does not list those fields as reading (_UNREAD_CONSTRAINTS, a format
  other than a string's date-time, date or time) goes into the schema's description, which the
  model reads, as on Claude: `{"maxLength": 8}` → `{"description": "Constraints: maxLength 8."}`;
- Draft 7's tuple (pydantic 1's `Tuple[int, str]`, zod-to-json-schema's `z.tuple`): `items` a
  list, `additionalItems` the rest, is 2020-12's `prefixItems`, and `items` for the rest (a
  rest of `false` is the `maxItems` it means; one of `true` says nothing).
Only subschemas are rewritten: a value that is data (`enum`, `default`, an annotation such as
`example` or an `x-…` extension, `dependentRequired`'s names) goes as written.
References are kept, never inlined: a recursive schema stays one (Gemini unrolls it a few
levels, and takes a cycle only "within non-required properties. (Nullable properties are not
sufficient.)"). OpenAI's strict mode lists every property as required, an optional one as
required-and-nullable, so a recursive pydantic model sent with `parse()` was a 400: a nullable
property through which a `$defs` entry reaches itself again is left out of `required` (left
out, it reads as the null it could have been: pydantic's default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

# Keywords whose value maps names to subschemas, and those whose value is a subschema or a
# list of them. Any other keyword's value is data, never rewritten: `enum`, `const`, `default`,
# an annotation (`examples`, OpenAPI's `example`, an `x-…` extension) or `dependentRequired`'s
# names, where a key named `format` or `const` is no keyword.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas", "dependencies"})
_SCHEMA_KEYS = frozenset({"items", "prefixItems", "additionalItems", "additionalProperties",
                          "anyOf", "oneOf", "allOf", "not", "if", "then", "else", "contains",
                          "propertyNames", "unevaluatedItems", "unevaluatedProperties",
                          "contentSchema"})
_CONST_TYPES = {str: "string", int: "integer", float: "number"}
_DEFS_REF = "#/$defs/"
# Value constraints outside what Google lists those fields as reading (minimum, maximum,
# minItems, maxItems, and a string's format date-time, date or time), which pydantic's
# Field(min_length=…, pattern=…, gt=…) and zod write: unread, the model never saw them. They go
# into the description, which it reads (as on Claude).
_UNREAD_CONSTRAINTS = frozenset({"minLength", "maxLength", "pattern", "exclusiveMinimum",
                                 "exclusiveMaximum", "multipleOf", "uniqueItems",
                                 "minProperties", "maxProperties"})
_READ_FORMATS = frozenset({"date-time", "date", "time"})
# What an `allOf` member may hold to be merged into one object (_all_of_merged), and the
# keywords the merge writes, which its schema must not have beside the `allOf`.
_OBJECT_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties",
                              "title", "description"})
_MERGED = frozenset({"properties", "required", "additionalProperties"})


def gemini_schema(schema: Any) -> Any:
    """A copy of `schema` in the form Gemini reads (module docstring)."""
    out = _converted(schema)
    defs = out.get("$defs") if isinstance(out, dict) else None
    if isinstance(defs, dict):
        _cycles_not_required(defs)
    return out


def _converted(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_converted(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    # `definitions` join `$defs` only when that is an object too (beside anything else they
    # stay as written, and Gemini's 400 says what is wrong).
    merge = isinstance(schema.get("$defs", {}), dict)
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            named = {name: _converted(s) for name, s in value.items()}
            if key == "definitions" and merge:
                out["$defs"] = {**named, **out.get("$defs", {})}
            elif key == "$defs":
                out["$defs"] = {**out.get("$defs", {}), **named}
            else:
                out[key] = named
        elif key == "$ref" and isinstance(value, str):
            out[key] = _ref(value)
        elif key in _UNREAD_CONSTRAINTS or (
                key == "format" and not (isinstance(value, str) and value in _READ_FORMATS)):
            moved[key] = value
        elif key in _SCHEMA_KEYS:
            out[key] = _converted(value)
        else:
            out[key] = value
    if moved:
        said = ", ".join(f"{key} {orjson.dumps(value).decode()}" for key, value in moved.items())
        described = out.get("description")
        note = f"Constraints: {said}."
        out["description"] = f"{described}\n{note}" if isinstance(described, str) else note
    _const_as_enum(out)
    _null_out_of_enum(out)
    _tuple_as_prefix_items(out)
    _all_of_merged(out)
    all_of = out.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "anyOf" not in out:
        out["anyOf"] = out.pop("allOf")
    if "$ref" in out and "anyOf" not in out and any(key[:1] != "$" for key in out):
        out["anyOf"] = [{"$ref": out.pop("$ref")}]
    return out


def _all_of_merged(out: dict[str, Any]) -> None:
    """A multi-member `allOf` of objects' schemas with no more than their properties (zod's
    intersection), which Gemini does not read, as the one object it means (module docstring).
    Any other stays as written: a reference is never inlined, nor a property's two schemas
    guessed at."""
    members = out.get("allOf")
    if (not isinstance(members, list) or len(members) < 2 or "anyOf" in out
            or out.get("type", "object") != "object" or not out.keys().isdisjoint(_MERGED)):
        return
    properties: dict[str, Any] = {}
    required: list[Any] = []
    closed: list[Any] = []
    notes = [out["description"]] if isinstance(out.get("description"), str) else []
    for member in members:
        if not (isinstance(member, dict) and member.keys() <= _OBJECT_KEYWORDS
                and member.get("type", "object") == "object"
                and isinstance(member.get("properties", {}), dict)
                and isinstance(member.get("required", []), list)):
            return
        for name, schema in member.get("properties", {}).items():
            if properties.setdefault(name, schema) != schema:
                return
        required.extend(p for p in member.get("required", ()) if p not in required)
        if "additionalProperties" in member:
            closed.append(member["additionalProperties"])
        if isinstance(member.get("description"), str):
            notes.append(member["description"])
    if any(value is not False for value in closed):
        return  # (an open or typed rest: not one object's)
    del out["allOf"]
    out["type"] = "object"
    out["properties"] = properties
    if required:
        out["required"] = required
    if closed and len(closed) == len(members):  # closed only if each member is
        out["additionalProperties"] = False
    if notes:
        out["description"] = "\n".join(notes)


def _cycles_not_required(defs: dict[str, Any]) -> None:
    """Each nullable property, in a `$defs` entry, whose schema refers to an entry reaching
    that one again, left out of its object's `required` (in `defs`, a copy: module docstring)."""
    refs = {name: _refs(schema) for name, schema in defs.items()}
    reach: dict[str, set[str]] = {}
    for name in defs:  # the entries each one refers to, directly or not
        seen, todo = set(), list(refs[name])
        while todo:
            ref = todo.pop()
            if ref not in seen:
                seen.add(ref)
                todo.extend(refs.get(ref, ()))
        reach[name] = seen
    for name, schema in defs.items():
        if name in reach[name]:
            _unrequire(schema, lambda ref, home=name: ref == home or home in reach.get(ref, ()))


def _unrequire(schema: Any, cyclic: Callable[[str], bool]) -> None:
    if isinstance(schema, list):
        for s in schema:
            _unrequire(s, cyclic)
        return
    if not isinstance(schema, dict):
        return
    props, required = schema.get("properties"), schema.get("required")
    if isinstance(props, dict) and isinstance(required, list):
        schema["required"] = [
            p for p in required
            if not (isinstance(p, str) and _nullable(props.get(p))
                    and any(cyclic(ref) for ref in _refs(props[p])))]
    for key, value in schema.items():
        if key == "$defs":  # (other entries, with cycles of their own)
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            _unrequire(list(value.values()), cyclic)
        elif key in _SCHEMA_KEYS:
            _unrequire(value, cyclic)


def _nullable(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_nullable(branch) for key in ("anyOf", "oneOf")
               if isinstance(schema.get(key), list) for branch in schema[key])


def _refs(schema: Any) -> set[str]:
    """The `$defs` entries `schema` refers to (not those its references do)."""
    found: set[str] = set()
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_DEFS_REF):
                found.add(ref[len(_DEFS_REF):])
            for key, value in node.items():
                if key in _SCHEMA_MAPS and isinstance(value, dict):
                    todo.extend(value.values())  # (a property may be named `enum`)
                elif key in _SCHEMA_KEYS:
                    todo.append(value)
    return found


def _const_as_enum(out: dict[str, Any]) -> None:
    const = out.get("const")
    kind = _CONST_TYPES.get(type(const))  # (exact type: a bool is no integer here)
    if kind is None or "enum" in out:
        return
    declared = out.get("type", kind)
    if declared != kind and not (kind == "integer" and declared == "number"):
        return
    out["type"] = declared
    out["enum"] = [out.pop("const")]


def _null_out_of_enum(out: dict[str, Any]) -> None:
    enum = out.get("enum")
    if not isinstance(enum, list) or None not in enum or "anyOf" in out:
        return
    declared = out.get("type")
    if declared is not None and not (isinstance(declared, list) and "null" in declared):
        return  # (null contradicts the type: Gemini's to judge, as written)
    values = [value for value in enum if value is not None]
    del out["enum"]
    out.pop("type", None)
    if not values:
        out["type"] = "null"
        return
    branch: dict[str, Any] = {"enum": values}
    if isinstance(declared, list):
        kinds = [kind for kind in declared if kind != "null"]
        if kinds:
            branch["type"] = kinds[0] if len(kinds) == 1 else kinds
    else:
        kinds = {_CONST_TYPES.get(type(value)) for value in values}  # (a bool is none here)
        if kinds == {"integer", "number"}:
            kinds = {"number"}
        if len(kinds) == 1 and None not in kinds:
            branch["type"] = kinds.pop()
    out["anyOf"] = [branch, {"type": "null"}]


def _tuple_as_prefix_items(out: dict[str, Any]) -> None:
    prefix = out.get("items")
    if not isinstance(prefix, list) or "prefixItems" in out:
        return
    out["prefixItems"] = out.pop("items")
    rest = out.pop("additionalItems", True)
    if rest is False:
        out.setdefault("maxItems", len(prefix))
    elif rest is not True:
        out["items"] = rest


def _ref(ref: str) -> str:
    """A reference into `definitions` pointed at `$defs`, where gemini_schema moved it (a
    property named `definitions`, a segment after `properties`, is left as it is)."""
    if not ref.startswith("#/"):
        return ref
    segments = ref[2:].split("/")
    for i, segment in enumerate(segments):
        if segment == "definitions" and (i == 0 or segments[i - 1] not in _SCHEMA_MAPS):
            segments[i] = "$defs"
    return "#/" + "/".join(segments)
