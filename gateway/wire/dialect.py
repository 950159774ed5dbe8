"""Dialects: what one acquirer's ISO 8583 looks like, loaded from data files in specs/.

A dialect file (TOML or JSON, one dialect per file, named after it) holds the pyiso8583 field
spec, the framing, and the rules the core follows: which fields match a response to its
request, which requests hold funds, how a reversal is built. A file may say
``extends = "other-dialect"`` and give only what differs: ``spec`` is merged field by field
(a field given replaces the parent's whole entry), ``framing`` and ``reversal`` key by key
(``reversal.reason_codes`` reason by reason), every other key replaces the parent's value.

    load_dialect(path)                   # one file (and its parents); DialectError if unusable
    find_dialects(extra_dirs) -> {name: path}   # BUILTIN_SPECS, $GATEWAY_SPECS_DIR, extra_dirs
    get_dialect(name, extra_dirs)        # by name, loaded once and cached

Every problem is a :class:`DialectError` naming the file, the key (``spec.35.max_len``,
``reversal.mti``) and what is wrong with it.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from gateway.wire.framing import LENGTH_HEADERS, Framing

REVERSAL_REASONS = ("timeout", "link_lost", "undeliverable", "in_doubt", "terminal", "other")


def _builtin_specs() -> Path:
    """specs/ beside the package in a source tree; gateway/_specs in an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_specs"
    return installed if installed.is_dir() else package.parent / "specs"


BUILTIN_SPECS = _builtin_specs()
SPECS_DIR_ENV = "GATEWAY_SPECS_DIR"  # more dialect directories, separated by os.pathsep
DIALECT_SUFFIXES = (".toml", ".json")
LAST_FIELD = 192  # a third bitmap (announced by bit 65) reaches fields 129..192 (Visa uses it)


class DialectError(ValueError):
    """A dialect file that cannot be used. Names the file, the field (or key) and the problem."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ReversalRules:
    """How this acquirer wants a reversal built (reversal-rules.md, 'Building the reversal')."""

    mti: str = "0400"  # "0400" or "0420"; each repeat goes out as mti + 1
    copy_fields: tuple[str, ...] = (
        "2", "3", "4", "12", "13", "14", "18", "22", "25", "32", "33", "37", "41", "42", "49",
    )  # fmt: skip
    stan: Literal["new", "original"] = "new"
    original_data: Literal["de90", "none"] = "de90"
    include_approval_code: bool = True  # DE 38 when the original was approved
    # DE 7 set to each attempt's send time (ISO 8583:1987); CUP POS messages carry no DE 7.
    transmission_time: bool = True
    # reason -> DE 39 of the reversal; keys are REVERSAL_REASONS. ISO 8583:1987 action codes:
    # 68 "response received too late" (the acquirer's answer never reached us in time, or we
    # cannot know that it did), 22 "suspected malfunction" (an approval we could not deliver),
    # 17 "customer cancellation" (the terminal gave up and reversed), 06 "error".
    reason_codes: Mapping[str, str] = field(
        default_factory=lambda: {
            "timeout": "68",
            "link_lost": "68",
            "undeliverable": "22",
            "in_doubt": "68",
            "terminal": "17",
            "other": "06",
        }
    )
    # DE 39 values of a 0410/0430 that end the reversal: done, original not found, already done
    resolved_codes: frozenset[str] = frozenset({"00", "25", "94"})
    # Of those, the ones that say "original not found": nothing was released. If the original's
    # approval arrives after such an answer (the reversal overtook it), it is reversed again.
    not_found_codes: frozenset[str] = frozenset({"25"})


@dataclass(frozen=True)
class Dialect:
    name: str
    description: str
    source: str  # the file it was loaded from
    spec: Mapping[str, Mapping[str, Any]]  # pyiso8583 field spec: "h", "t", "p", "1".."192"
    framing: Framing = field(default_factory=Framing)
    # Response matching: request MTI + 10 and these fields equal (where both carry them).
    match_fields: tuple[str, ...] = ("41", "11")
    # Two requests with these fields equal (where present) are the same request sent twice.
    duplicate_fields: tuple[str, ...] = ("41", "11", "4", "7", "12", "13")
    reversible_mtis: frozenset[str] = frozenset({"0100", "0200"})
    # DE 3 first two digits that hold funds; None means every code not listed as non-reversible.
    reversible_processing_codes: frozenset[str] | None = None
    non_reversible_processing_codes: frozenset[str] = frozenset({"31"})
    decline_code: str = "91"  # DE 39 of the decline the gateway itself sends a terminal
    # Fields copied from the request into a response the gateway makes itself.
    response_echo_fields: tuple[str, ...] = (
        "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49",
    )  # fmt: skip
    # Never logged, published or journaled: track data, PIN block, CVV-bearing fields, ICC data.
    sensitive_fields: frozenset[str] = frozenset({"35", "36", "45", "52", "55"})
    reversal: ReversalRules = field(default_factory=ReversalRules)
    extends: str | None = None  # the dialect this one was built on, if any

    def is_reversible(self, mti: str, processing_code: str | None) -> bool:
        """Does a request of this MTI and DE 3 hold funds, so that it may need a reversal?"""
        base = mti[:3] + "0"
        if base not in self.reversible_mtis:
            return False
        prefix = (processing_code or "")[:2]
        if prefix in self.non_reversible_processing_codes:
            return False
        if self.reversible_processing_codes is None:
            return True
        return prefix in self.reversible_processing_codes


# --- finding and loading ----------------------------------------------------------------------


def specs_dirs(extra_dirs: Sequence[Path] = ()) -> tuple[Path, ...]:
    """Where dialect files are looked up, in order (a later directory overrides an earlier)."""
    dirs = [BUILTIN_SPECS]
    env = os.environ.get(SPECS_DIR_ENV, "")
    dirs += [Path(part) for part in env.split(os.pathsep) if part]
    dirs += [Path(d) for d in extra_dirs]
    return tuple(dirs)


def find_dialects(extra_dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Dialect name -> file, over BUILTIN_SPECS, $GATEWAY_SPECS_DIR and ``extra_dirs``."""
    return _find_in(specs_dirs(extra_dirs))


def _find_in(dirs: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in dirs:
        if not directory.is_dir():
            if directory == BUILTIN_SPECS:
                continue  # an installed package without the specs/ folder: only extra dirs
            raise DialectError(str(directory), "directory", "not found")
        here: dict[str, Path] = {}
        for path in sorted(directory.iterdir()):
            if path.suffix not in DIALECT_SUFFIXES or not path.is_file():
                continue
            if path.stem in here:
                raise DialectError(
                    str(path), "name", f"dialect {path.stem!r} is also in {here[path.stem].name}"
                )
            here[path.stem] = path
        found.update(here)
    return found


def load_dialect(path: Path, extra_dirs: Sequence[Path] = ()) -> Dialect:
    """Load and check one dialect file; ``extends`` is looked up next to it, then by name."""
    path = Path(path)
    dirs = specs_dirs(extra_dirs)
    raw, parent = _resolve(path, dirs, ())
    return _build(str(path), raw, parent)


def get_dialect(name: str, extra_dirs: Sequence[Path] = ()) -> Dialect:
    """The dialect of this name (cached: each file is read once per directory list)."""
    return _get_cached(name, specs_dirs(extra_dirs))


@functools.lru_cache(maxsize=64)
def _get_cached(name: str, dirs: tuple[Path, ...]) -> Dialect:
    known = _find_in(dirs)
    if name not in known:
        raise DialectError(
            name, "name", f"unknown dialect; known: {', '.join(sorted(known)) or 'none'}"
        )
    raw, parent = _resolve(known[name], dirs, ())
    return _build(str(known[name]), raw, parent)


clear_dialect_cache = _get_cached.cache_clear


def _read(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DialectError(file, "file", exc.strerror or "cannot be read") from None
    except UnicodeDecodeError:
        raise DialectError(file, "file", "not UTF-8 text") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise DialectError(file, "syntax", str(exc)) from None
    if not isinstance(data, dict):
        raise DialectError(file, "file", "must hold a table/object of dialect keys")
    return data


def _resolve(
    path: Path, dirs: tuple[Path, ...], chain: tuple[Path, ...]
) -> tuple[dict[str, Any], str | None]:
    """The file's keys merged over its parents' keys, each file checked on its own."""
    file = str(path)
    raw = _read(path)
    _check_file(file, path.stem, raw)
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw, None
    parent_path = _find_parent(file, path, parent_name, dirs)
    seen = (*chain, path.resolve())
    if parent_path.resolve() in seen:
        names = " -> ".join(p.stem for p in (*seen, parent_path))
        raise DialectError(file, "extends", f"cycle: {names}")
    parent_raw, _ = _resolve(parent_path, dirs, seen)
    return _merge(parent_raw, raw), parent_name


def _find_parent(file: str, path: Path, name: str, dirs: tuple[Path, ...]) -> Path:
    for suffix in DIALECT_SUFFIXES:
        sibling = path.with_name(name + suffix)
        if sibling.is_file():
            return sibling
    known = _find_in(dirs)
    if name not in known:
        raise DialectError(
            file, "extends", f"unknown dialect {name!r}; known: {', '.join(sorted(known))}"
        )
    return known[name]


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = {**parent, **child}
    if "spec" in parent and "spec" in child:
        merged["spec"] = {**parent["spec"], **child["spec"]}
    if "framing" in parent and "framing" in child:
        merged["framing"] = {**parent["framing"], **child["framing"]}
    if "reversal" in parent and "reversal" in child:
        reversal = {**parent["reversal"], **child["reversal"]}
        if "reason_codes" in parent["reversal"] and "reason_codes" in child["reversal"]:
            reversal["reason_codes"] = {
                **parent["reversal"]["reason_codes"],
                **child["reversal"]["reason_codes"],
            }
        merged["reversal"] = reversal
    return merged


# --- checks -----------------------------------------------------------------------------------

_TOP_KEYS = frozenset(
    {
        "name", "description", "extends", "spec", "framing", "match_fields",
        "duplicate_fields", "reversible_mtis", "reversible_processing_codes",
        "non_reversible_processing_codes", "decline_code", "response_echo_fields",
        "sensitive_fields", "reversal",
    }
)  # fmt: skip
_FIELD_REQUIRED = ("data_enc", "len_enc", "len_type", "max_len")
_FIELD_OPTIONAL = ("len_count", "left_pad", "right_pad", "desc")
_FRAMING_KEYS = frozenset({"length", "tpdu", "header_length", "max_frame"})
_REVERSAL_KEYS = frozenset(
    {
        "mti", "copy_fields", "stan", "original_data", "include_approval_code", "transmission_time",
        "reason_codes", "resolved_codes", "not_found_codes",
    }
)  # fmt: skip
_NON_DATA_KEYS = ("h", "t", "p", "1")  # header, MTI, primary and secondary bitmap
_LIST_OF_FIELDS = ("match_fields", "duplicate_fields", "response_echo_fields", "sensitive_fields")
_LIST_OF_CODES = {
    "reversible_mtis": 4,
    "reversible_processing_codes": 2,
    "non_reversible_processing_codes": 2,
}
_HEX = frozenset("0123456789ABCDEF")


def _check_file(file: str, stem: str, raw: dict[str, Any]) -> None:
    """Everything one file says must make sense on its own (before merging with a parent)."""
    for key in raw:
        if key not in _TOP_KEYS:
            raise DialectError(file, key, f"unknown key; known: {', '.join(sorted(_TOP_KEYS))}")
    if "name" not in raw:
        raise DialectError(file, "name", "missing")
    if raw["name"] != stem:
        raise DialectError(file, "name", f"{raw['name']!r} must match the file name {stem!r}")
    for key in ("description", "extends"):
        if key in raw and not isinstance(raw[key], str):
            raise DialectError(file, key, "must be text")
    if "spec" in raw:
        spec = _mapping(file, "spec", raw["spec"])
        for key, entry in spec.items():
            _check_field_spec(file, key, entry)
    if "framing" in raw:
        _check_framing(file, _mapping(file, "framing", raw["framing"]))
    for key in _LIST_OF_FIELDS:
        if key in raw:
            raw[key] = _field_list(file, key, raw[key])
    for key, width in _LIST_OF_CODES.items():
        if key in raw and not (key == "reversible_processing_codes" and raw[key] is None):
            _code_list(file, key, raw[key], width, digits=True)
    if "decline_code" in raw:
        _code(file, "decline_code", raw["decline_code"])
    if "reversal" in raw:
        _check_reversal(file, _mapping(file, "reversal", raw["reversal"]))


def _mapping(file: str, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DialectError(file, key, "must be a table/object")
    return value


def _check_field_spec(file: str, key: str, entry: object) -> None:
    where = f"spec.{key}"
    if key not in _NON_DATA_KEYS and not (key.isdigit() and 2 <= int(key) <= LAST_FIELD):
        raise DialectError(file, where, f"not a field: use h, t, p, or 1..{LAST_FIELD}")
    spec = _mapping(file, where, entry)
    for name in spec:
        if name not in _FIELD_REQUIRED and name not in _FIELD_OPTIONAL:
            known = ", ".join(_FIELD_REQUIRED + _FIELD_OPTIONAL)
            raise DialectError(file, f"{where}.{name}", f"unknown key; known: {known}")
    for name in _FIELD_REQUIRED:
        if name not in spec:
            raise DialectError(file, f"{where}.{name}", "missing")
    data_enc, len_enc = spec["data_enc"], spec["len_enc"]
    _encoding(file, f"{where}.data_enc", data_enc, ("b",))
    _encoding(file, f"{where}.len_enc", len_enc, ("b", "bcd"))
    len_type, max_len = spec["len_type"], spec["max_len"]
    if not _is_int(len_type) or not 0 <= len_type <= 4:
        raise DialectError(file, f"{where}.len_type", "must be a whole number 0..4")
    if not _is_int(max_len) or max_len < 0:
        raise DialectError(file, f"{where}.max_len", "must be a whole number >= 0")
    len_count = spec.get("len_count", "bytes")
    if len_count not in ("bytes", "nibbles"):
        raise DialectError(file, f"{where}.len_count", "must be 'bytes' or 'nibbles'")
    if "desc" in spec and not isinstance(spec["desc"], str):
        raise DialectError(file, f"{where}.desc", "must be text")
    _check_pads(file, where, spec)

    if key == "h":
        if max_len != 0:
            raise DialectError(
                file, f"{where}.max_len", "must be 0: framing.header_length carries headers"
            )
    elif key in _NON_DATA_KEYS:
        size = (2 if data_enc == "b" else 4) if key == "t" else (8 if data_enc == "b" else 16)
        if len_type != 0 or max_len != size:
            raise DialectError(
                file, where, f"must be fixed (len_type 0) with max_len {size} for this data_enc"
            )
    elif len_type:
        largest = _largest_length(len_enc, len_type)
        if max_len > largest:
            raise DialectError(
                file,
                f"{where}.max_len",
                f"{max_len} does not fit a {len_type}-byte {len_enc} length prefix "
                f"(largest {largest})",
            )


def _check_pads(file: str, where: str, spec: dict[str, Any]) -> None:
    data_enc, len_count = spec["data_enc"], spec.get("len_count", "bytes")
    pads = [name for name in ("left_pad", "right_pad") if name in spec]
    if len(pads) > 1:
        raise DialectError(file, where, "give left_pad or right_pad, not both")
    for name in pads:
        pad = spec[name]
        if data_enc != "b" or len_count != "nibbles":
            raise DialectError(
                file, f"{where}.{name}", "only binary/BCD fields counted in nibbles are padded"
            )
        if not isinstance(pad, str) or len(pad) != 1 or pad not in _HEX:
            raise DialectError(file, f"{where}.{name}", "must be one hex digit 0-9 or A-F")
    max_len = spec["max_len"]
    half_byte = data_enc == "b" and len_count == "nibbles" and max_len % 2
    if half_byte and not spec["len_type"] and not pads:
        raise DialectError(
            file, where, f"{max_len} nibbles fill half a byte: give left_pad or right_pad"
        )


def _largest_length(len_enc: str, len_type: int) -> int:
    if len_enc == "b":
        return int(256**len_type - 1)
    if len_enc == "bcd":
        return int(10 ** (2 * len_type) - 1)
    return int(10**len_type - 1)


def _encoding(file: str, where: str, value: object, special: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise DialectError(file, where, "must be text")
    if value in special:
        return
    try:
        codecs.lookup(value)
    except LookupError:
        raise DialectError(
            file, where, f"unknown encoding {value!r}: use {' or '.join(special)} or a codec name"
        ) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_framing(file: str, framing: dict[str, Any]) -> None:
    for key in framing:
        if key not in _FRAMING_KEYS:
            known = ", ".join(sorted(_FRAMING_KEYS))
            raise DialectError(file, f"framing.{key}", f"unknown key; known: {known}")
    if "length" in framing and framing["length"] not in LENGTH_HEADERS:
        raise DialectError(file, "framing.length", f"must be one of {', '.join(LENGTH_HEADERS)}")
    if "tpdu" in framing and not isinstance(framing["tpdu"], bool):
        raise DialectError(file, "framing.tpdu", "must be true or false")
    if "header_length" in framing and (
        not _is_int(framing["header_length"]) or framing["header_length"] < 0
    ):
        raise DialectError(file, "framing.header_length", "must be a whole number >= 0")
    if "max_frame" in framing and (not _is_int(framing["max_frame"]) or framing["max_frame"] <= 0):
        raise DialectError(file, "framing.max_frame", "must be a whole number > 0")


def _check_reversal(file: str, reversal: dict[str, Any]) -> None:
    for key in reversal:
        if key not in _REVERSAL_KEYS:
            known = ", ".join(sorted(_REVERSAL_KEYS))
            raise DialectError(file, f"reversal.{key}", f"unknown key; known: {known}")
    if "mti" in reversal and reversal["mti"] not in ("0400", "0420"):
        raise DialectError(file, "reversal.mti", "must be '0400' or '0420'")
    if "copy_fields" in reversal:
        reversal["copy_fields"] = _field_list(file, "reversal.copy_fields", reversal["copy_fields"])
    if "stan" in reversal and reversal["stan"] not in ("new", "original"):
        raise DialectError(file, "reversal.stan", "must be 'new' or 'original'")
    if "original_data" in reversal and reversal["original_data"] not in ("de90", "none"):
        raise DialectError(file, "reversal.original_data", "must be 'de90' or 'none'")
    for flag in ("include_approval_code", "transmission_time"):
        if flag in reversal and not isinstance(reversal[flag], bool):
            raise DialectError(file, f"reversal.{flag}", "must be true or false")
    if "reason_codes" in reversal:
        codes = _mapping(file, "reversal.reason_codes", reversal["reason_codes"])
        for reason, code in codes.items():
            if reason not in REVERSAL_REASONS:
                raise DialectError(
                    file,
                    f"reversal.reason_codes.{reason}",
                    f"unknown reason; known: {', '.join(REVERSAL_REASONS)}",
                )
            _code(file, f"reversal.reason_codes.{reason}", code)
    for key in ("resolved_codes", "not_found_codes"):
        if key in reversal:
            _code_list(file, f"reversal.{key}", reversal[key], 2, digits=False)
    if "not_found_codes" in reversal:
        resolved = set(reversal.get("resolved_codes", ReversalRules().resolved_codes))
        outside = sorted(set(reversal["not_found_codes"]) - resolved)
        if outside:
            raise DialectError(
                file, "reversal.not_found_codes", f"{outside} are not among the resolved_codes"
            )


def _field_list(file: str, where: str, value: object) -> list[str]:
    """Field numbers 2..192, written as text or numbers; returned as text."""
    if not isinstance(value, list):
        raise DialectError(file, where, "must be a list of field numbers")
    fields: list[str] = []
    for index, item in enumerate(value):
        text = str(item) if _is_int(item) else item
        if not isinstance(text, str) or not text.isdigit() or not 2 <= int(text) <= LAST_FIELD:
            raise DialectError(
                file, f"{where}[{index}]", f"{item!r} is not a field 2..{LAST_FIELD}"
            )
        fields.append(str(int(text)))
    return fields


def _code_list(file: str, where: str, value: object, width: int, *, digits: bool) -> None:
    if not isinstance(value, list):
        raise DialectError(file, where, "must be a list")
    for index, item in enumerate(value):
        if digits:
            if not isinstance(item, str) or len(item) != width or not item.isdigit():
                raise DialectError(file, f"{where}[{index}]", f"{item!r} is not {width} digits")
        else:
            _code(file, f"{where}[{index}]", item)


def _code(file: str, where: str, value: object) -> None:
    """A response code (DE 39, an 2)."""
    if not isinstance(value, str) or len(value) != 2 or not value.isalnum():
        raise DialectError(file, where, f"{value!r} is not a 2-character response code")


# --- building ---------------------------------------------------------------------------------

_HEADERLESS = MappingProxyType(
    {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0}
)


def _build(file: str, raw: dict[str, Any], parent: str | None) -> Dialect:
    """The Dialect of a merged, checked file, after the checks that need the whole of it."""
    if "spec" not in raw:
        raise DialectError(file, "spec", "missing (give it, or extend a dialect that has one)")
    spec = {key: MappingProxyType(dict(entry)) for key, entry in raw["spec"].items()}
    spec.setdefault("h", _HEADERLESS)
    for key in ("t", "p", "1"):
        if key not in spec:
            raise DialectError(file, f"spec.{key}", "missing (MTI, bitmap and secondary bitmap)")
    for key in ("11", "39", "41"):
        if key not in spec:
            raise DialectError(file, f"spec.{key}", "missing: the gateway reads and writes it")

    defaults = Dialect(name="", description="", source="", spec={})
    rules = ReversalRules()
    reversal_raw: dict[str, Any] = raw.get("reversal", {})
    reason_codes = {**rules.reason_codes, **reversal_raw.get("reason_codes", {})}
    reversal = ReversalRules(
        mti=reversal_raw.get("mti", rules.mti),
        copy_fields=tuple(reversal_raw.get("copy_fields", rules.copy_fields)),
        stan=reversal_raw.get("stan", rules.stan),
        original_data=reversal_raw.get("original_data", rules.original_data),
        include_approval_code=reversal_raw.get(
            "include_approval_code", rules.include_approval_code
        ),
        transmission_time=reversal_raw.get("transmission_time", rules.transmission_time),
        reason_codes=MappingProxyType(reason_codes),
        resolved_codes=frozenset(reversal_raw.get("resolved_codes", rules.resolved_codes)),
        not_found_codes=frozenset(reversal_raw.get("not_found_codes", rules.not_found_codes)),
    )
    codes = raw.get("reversible_processing_codes", defaults.reversible_processing_codes)
    dialect = Dialect(
        name=raw["name"],
        description=raw.get("description", ""),
        source=file,
        spec=MappingProxyType(cast(dict[str, Mapping[str, Any]], spec)),
        framing=Framing(**raw.get("framing", {})),
        match_fields=tuple(raw.get("match_fields", defaults.match_fields)),
        duplicate_fields=tuple(raw.get("duplicate_fields", defaults.duplicate_fields)),
        reversible_mtis=frozenset(raw.get("reversible_mtis", defaults.reversible_mtis)),
        reversible_processing_codes=None if codes is None else frozenset(codes),
        non_reversible_processing_codes=frozenset(
            raw.get("non_reversible_processing_codes", defaults.non_reversible_processing_codes)
        ),
        decline_code=raw.get("decline_code", defaults.decline_code),
        response_echo_fields=tuple(raw.get("response_echo_fields", defaults.response_echo_fields)),
        sensitive_fields=frozenset(raw.get("sensitive_fields", defaults.sensitive_fields)),
        reversal=reversal,
        extends=parent,
    )
    for where, fields in (
        ("match_fields", dialect.match_fields),
        ("duplicate_fields", dialect.duplicate_fields),
        ("response_echo_fields", dialect.response_echo_fields),
        ("reversal.copy_fields", reversal.copy_fields),
    ):
        for index, name in enumerate(fields):
            if name not in spec:
                raise DialectError(file, f"{where}[{index}]", f"field {name} is not in the spec")
    if reversal.original_data == "de90" and "90" not in spec:
        raise DialectError(file, "reversal.original_data", "'de90' needs field 90 in the spec")
    return dialect
