"""Load and validate the versioned JSON results (`qdebug.compare/1`, `qdebug.bisect/1`) that reports read.

Their optional task sections (`detection`: `qdebug.detection/1`, `task`: `qdebug.task/1`) have schemas of
their own; a document's sections (also those of the compare documents a bisect embeds) are validated too.

Validation uses `jsonschema` when it is installed (a dev dependency) and otherwise a small built-in
checker of the JSON Schema subset the files in `schemas/` use (type, required, properties, items,
const, enum, minimum, minItems/maxItems, oneOf/anyOf, $ref to #/$defs, additionalProperties). Every
failure is one QDebugError naming the file, the JSON path of the problem and the fix.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from qdebug import __version__
from qdebug.errors import QDebugError

SCHEMAS: dict[str, str] = {"qdebug.compare/1": "compare-1.json", "qdebug.bisect/1": "bisect-1.json"}
SECTIONS: dict[str, str] = {"detection": "qdebug.detection/1", "task": "qdebug.task/1"}  # key -> section schema
SECTION_FILES: dict[str, str] = {"qdebug.detection/1": "detection-1.json", "qdebug.task/1": "task-1.json"}
EMBEDDED = ("compare_before", "compare_after")  # bisect documents embed full compare documents
_RERUN = "re-run the command with --json using this qdebug version ({v}), then `qdebug report` the new file"


@functools.cache
def schema_for(version: str) -> dict:
    """The JSON Schema (a dict) of a known document or section version."""
    name = SCHEMAS.get(version) or SECTION_FILES[version]
    text = resources.files("qdebug.results").joinpath("schemas", name).read_text(encoding="utf-8")
    return json.loads(text)


def load_result(path: str | Path) -> dict:
    """Read a qdebug JSON result, check its schema version is known and validate it."""
    p = Path(path)
    if p.is_dir():
        raise QDebugError("is a folder, not a JSON result", file=str(p),
                          fix="pass the file written by `qdebug compare --json` or `qdebug bisect --json`")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QDebugError("result file not found", file=str(p),
                          fix="pass the file written by `qdebug compare --json` or `qdebug bisect --json`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QDebugError(f"cannot read the result ({exc.__class__.__name__})", file=str(p),
                          fix="pass the JSON file qdebug wrote") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QDebugError(f"not valid JSON: {exc.msg}", file=str(p), where=f"line {exc.lineno} col {exc.colno}",
                          fix="pass the JSON file qdebug wrote (was it truncated or edited?)") from None
    except RecursionError:
        raise QDebugError("JSON nested too deeply to be a qdebug result", file=str(p),
                          fix="pass the JSON file qdebug wrote") from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        raise QDebugError(f"not a qdebug result: {' '.join(str(exc).split())[:120]}", file=str(p),
                          fix="pass the JSON file qdebug wrote") from None
    validate_result(doc, str(p))
    return doc


def validate_result(doc: Any, source: str | None = None) -> str:
    """Check `doc` is a known, valid qdebug result; return its schema version or raise QDebugError."""
    src = source or "<result>"
    if not isinstance(doc, dict):
        raise QDebugError("not a qdebug result: the top level is not a JSON object", file=src, where="$",
                          fix="pass the file written by `qdebug compare --json` or `qdebug bisect --json`")
    version = doc.get("schema")
    if version is None:
        raise QDebugError("not a qdebug result: no 'schema' key", file=src, where="$.schema",
                          fix="pass the file written by `qdebug compare --json` or `qdebug bisect --json`")
    if version not in SCHEMAS:
        known = ", ".join(SCHEMAS)
        if isinstance(version, str) and version.startswith("qdebug."):
            problem = f"schema version '{version}' is not supported by qdebug {__version__} (it reads {known})"
            fix = (f"re-run the command that wrote it with qdebug {__version__}, or upgrade qdebug to the "
                   "version that wrote it")
        else:
            problem = f"unknown schema {json.dumps(version)[:60]} (qdebug reads {known})"
            fix = "pass the file written by `qdebug compare --json` or `qdebug bisect --json`"
        raise QDebugError(problem, file=src, where="$.schema", fix=fix)
    _check(doc, version, src, "$")
    _check_sections(doc, src, "$")
    if version == "qdebug.bisect/1":
        for key in EMBEDDED:
            sub = doc.get(key)
            if sub is not None:
                _check(sub, "qdebug.compare/1", src, f"$.{key}")
                _check_sections(sub, src, f"$.{key}")
    return str(version)


def _check_sections(doc: dict, src: str, base: str) -> None:
    """Validate the task sections a (compare or bisect) document carries against their own schemas."""
    for key, version in SECTIONS.items():
        sub = doc.get(key)
        if sub is not None:
            _check(sub, version, src, f"{base}.{key}")


def _check(doc: dict, version: str, src: str, base: str) -> None:
    problem = first_error(doc, schema_for(version))
    if problem is not None:
        path, msg = problem
        raise QDebugError(f"does not match schema {version}: {msg}", file=src, where=base + path,
                          fix=_RERUN.format(v=__version__))


def first_error(doc: Any, schema: dict) -> tuple[str, str] | None:
    """(JSON path suffix, message) of the most relevant violation, or None when `doc` is valid."""
    try:
        import jsonschema
    except ImportError:
        return _mini_validate(doc, schema, schema, "")
    cls = jsonschema.validators.validator_for(schema)
    err = jsonschema.exceptions.best_match(cls(schema).iter_errors(doc))
    if err is None:
        return None
    return _path(err.absolute_path), _short(err.message)


def _path(parts: Any) -> str:
    return "".join(_step(p) for p in parts)


def _step(p: Any) -> str:
    """One JSONPath step: [3], .key, or ["/model.22/Mul_2"] for keys that are not identifiers."""
    if isinstance(p, int):
        return f"[{p}]"
    return f".{p}" if re.fullmatch(r"[A-Za-z_]\w*", str(p)) else f"[{json.dumps(str(p))}]"


def _short(msg: str, n: int = 160) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= n else msg[: n - 1] + "…"


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(v: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, _TYPES.get(t, object))


def _mini_validate(v: Any, s: dict | bool, root: dict, path: str) -> tuple[str, str] | None:
    """Built-in fallback for the JSON Schema subset used by qdebug's schema files."""
    if s is True or s is None:
        return None
    if s is False:
        return path, "no value is allowed here"
    if "$ref" in s:
        ref = s["$ref"]
        if ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            found = _mini_validate(v, target, root, path)
            if found:
                return found
    for key in ("oneOf", "anyOf"):
        if key in s:
            found = [_mini_validate(v, b, root, path) for b in s[key]]
            if all(found):
                return min((f for f in found if f), key=lambda f: -len(f[0]))
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_is_type(v, t) for t in types):
            return path, f"{_short(json.dumps(v), 40)} is not of type {' or '.join(types)}"
    if "const" in s and v != s["const"]:
        return path, f"{_short(json.dumps(v), 40)} should be {json.dumps(s['const'])}"
    if "enum" in s and v not in s["enum"]:
        return path, f"{_short(json.dumps(v), 40)} is not one of {s['enum']}"
    if "minimum" in s and _is_type(v, "number") and v < s["minimum"]:
        return path, f"{v} is less than the minimum of {s['minimum']}"
    if isinstance(v, list) and len(v) < s.get("minItems", 0):
        return path, f"{_short(json.dumps(v), 40)} should have at least {s['minItems']} items"
    if isinstance(v, list) and "maxItems" in s and len(v) > s["maxItems"]:
        return path, f"{_short(json.dumps(v), 40)} should have at most {s['maxItems']} items"
    if isinstance(v, dict):
        for key in s.get("required", []):
            if key not in v:
                return path, f"'{key}' is a required property"
        props = s.get("properties", {})
        for key, val in v.items():
            if key in props:
                found = _mini_validate(val, props[key], root, path + _step(key))
            elif "additionalProperties" in s:
                found = _mini_validate(val, s["additionalProperties"], root, path + _step(key))
            else:
                found = None
            if found:
                return found
    if isinstance(v, list) and "items" in s:
        for i, item in enumerate(v):
            found = _mini_validate(item, s["items"], root, f"{path}[{i}]")
            if found:
                return found
    return None
