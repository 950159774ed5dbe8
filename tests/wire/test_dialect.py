"""Dialect files: the shipped ones, lookup by name, `extends`, and every way a file is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from iso8583.specs import default

from gateway.wire.dialect import (
    BUILTIN_SPECS,
    Dialect,
    DialectError,
    find_dialects,
    get_dialect,
    load_dialect,
)
from gateway.wire.framing import Framing

SHIPPED = ("iso87-binary", "iso87-ascii", "iso87-ebcdic", "cup-pos", "visa-base1")

# A small complete dialect: what the gateway needs and no more.
MINIMAL_SPEC = {
    "t": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 4},
    "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8},
    "1": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8},
    "2": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 2, "max_len": 19},
    "3": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 6},
    "4": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 12},
    "11": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 6},
    "39": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 2},
    "41": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 8},
}
MINIMAL = {
    "name": "tiny",
    "spec": MINIMAL_SPEC,
    "duplicate_fields": ["41", "11", "4"],
    "response_echo_fields": ["3", "4", "11", "41"],
    "reversal": {"copy_fields": ["2", "3", "4", "41"], "original_data": "none"},
}


def write_json(directory: Path, name: str, content: dict[str, object]) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(content))
    return path


# --- shipped dialects -------------------------------------------------------------------------


def test_shipped_dialects_are_found() -> None:
    found = find_dialects()
    for name in SHIPPED:
        assert found[name] == BUILTIN_SPECS / f"{name}.toml"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_dialects_load(name: str) -> None:
    dialect = load_dialect(BUILTIN_SPECS / f"{name}.toml")
    assert dialect.name == name
    assert dialect.description
    assert dialect.source == str(BUILTIN_SPECS / f"{name}.toml")
    assert dialect.spec["h"]["max_len"] == 0  # framing owns headers


def test_iso87_binary_is_pyiso8583_default() -> None:
    spec = get_dialect("iso87-binary").spec
    strip = ("desc",)
    for key, entry in default.items():
        ours = {k: v for k, v in spec[key].items() if k not in strip}
        assert ours == {k: v for k, v in entry.items() if k not in strip}, key


def test_iso87_ascii_extends_binary_with_text_bitmaps() -> None:
    binary, ascii_ = get_dialect("iso87-binary"), get_dialect("iso87-ascii")
    assert ascii_.extends == "iso87-binary"
    assert ascii_.spec["p"]["data_enc"] == "ascii"
    assert ascii_.spec["p"]["max_len"] == 16
    assert ascii_.spec["1"]["max_len"] == 16
    assert ascii_.spec["2"] == binary.spec["2"]  # inherited
    assert ascii_.reversal == binary.reversal


def test_cup_pos_rules() -> None:
    cup = get_dialect("cup-pos")
    assert cup.framing == Framing(length="binary2", tpdu=True, header_length=6, max_frame=8192)
    assert cup.spec["t"]["data_enc"] == "b"
    assert cup.reversal.mti == "0400"
    assert cup.reversal.stan == "original"
    assert cup.reversal.original_data == "none"
    assert not cup.reversal.transmission_time  # CUP POS messages carry no DE 7
    assert get_dialect("iso87-binary").reversal.transmission_time
    assert dict(cup.reversal.reason_codes) == {
        "timeout": "98",
        "link_lost": "98",
        "undeliverable": "96",
        "in_doubt": "98",
        "terminal": "98",
        "other": "06",
    }
    assert "12" not in cup.reversal.resolved_codes
    assert cup.is_reversible("0200", "000000")
    assert cup.is_reversible("0100", "030000")
    assert cup.is_reversible("0201", "200000")  # a repeat of a void
    assert not cup.is_reversible("0200", "310000")  # balance inquiry
    assert not cup.is_reversible("0220", "200000")  # refund advice
    assert not cup.is_reversible("0800", None)


def test_dialects_are_immutable() -> None:
    dialect = get_dialect("iso87-binary")
    with pytest.raises(TypeError):
        dialect.spec["2"]["max_len"] = 99  # type: ignore[index]
    with pytest.raises(TypeError):
        dialect.reversal.reason_codes["timeout"] = "00"  # type: ignore[index]


# --- finding and caching ----------------------------------------------------------------------


def test_get_dialect_is_cached() -> None:
    assert get_dialect("cup-pos") is get_dialect("cup-pos")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(DialectError) as caught:
        get_dialect("visa-base2")
    assert caught.value.field == "name"
    for name in SHIPPED:
        assert name in caught.value.problem


def test_extra_dirs_add_and_override(tmp_path: Path) -> None:
    write_json(tmp_path, "tiny", MINIMAL)
    override = {"name": "iso87-binary", "extends": "iso87-ascii", "decline_code": "96"}
    write_json(tmp_path, "iso87-binary", override)
    found = find_dialects([tmp_path])
    assert found["tiny"] == tmp_path / "tiny.json"
    assert found["iso87-binary"] == tmp_path / "iso87-binary.json"
    assert found["cup-pos"] == BUILTIN_SPECS / "cup-pos.toml"
    # The override extends the shipped iso87-ascii, whose own `extends = "iso87-binary"` is
    # found next to it (the shipped file), not the override: no accidental cycle.
    dialect = get_dialect("iso87-binary", [tmp_path])
    assert dialect.source == str(tmp_path / "iso87-binary.json")
    assert dialect.decline_code == "96"
    assert dialect.extends == "iso87-ascii"
    assert dialect.spec["p"]["data_enc"] == "ascii"
    assert get_dialect("iso87-binary").decline_code == "91"


def test_specs_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_json(tmp_path, "tiny", MINIMAL)
    monkeypatch.setenv("GATEWAY_SPECS_DIR", str(tmp_path))
    assert get_dialect("tiny").source == str(tmp_path / "tiny.json")


def test_missing_extra_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DialectError) as caught:
        find_dialects([tmp_path / "nowhere"])
    assert caught.value.field == "directory"


def test_json_and_toml_side_by_side_is_ambiguous(tmp_path: Path) -> None:
    write_json(tmp_path, "tiny", MINIMAL)
    (tmp_path / "tiny.toml").write_text('name = "tiny"\n')
    with pytest.raises(DialectError, match="also in tiny"):
        find_dialects([tmp_path])


def test_toml_extending_a_shipped_dialect(tmp_path: Path) -> None:
    path = tmp_path / "my-acquirer.toml"
    path.write_text(
        'name = "my-acquirer"\n'
        'extends = "cup-pos"\n'
        'match_fields = ["41", "11"]\n'
        "[framing]\n"
        "header_length = 0\n"
        "[reversal.reason_codes]\n"
        'undeliverable = "06"\n'
        "[spec]\n"
        '"35" = { data_enc = "b", len_enc = "bcd", len_type = 1, max_len = 37, '
        'len_count = "nibbles", right_pad = "F" }\n'
    )
    dialect = load_dialect(path)
    cup = get_dialect("cup-pos")
    assert dialect.match_fields == ("41", "11")
    assert dialect.framing == Framing(length="binary2", tpdu=True, header_length=0)
    assert dialect.reversal.reason_codes["undeliverable"] == "06"
    assert dialect.reversal.reason_codes["timeout"] == "98"  # merged reason by reason
    assert dialect.spec["35"]["right_pad"] == "F"
    assert dialect.spec["2"] == cup.spec["2"]
    assert dialect.reversal.stan == "original"


def test_minimal_json_dialect_gets_the_defaults(tmp_path: Path) -> None:
    dialect = load_dialect(write_json(tmp_path, "tiny", MINIMAL))
    assert isinstance(dialect, Dialect)
    assert dialect.match_fields == ("41", "11")
    assert dialect.framing == Framing()
    assert dialect.reversal.original_data == "none"
    assert dialect.reversal.reason_codes["timeout"] == "68"


# --- refused files ----------------------------------------------------------------------------


def spec_with(field: str, **entry: object) -> dict[str, object]:
    base = dict(MINIMAL_SPEC.get(field, MINIMAL_SPEC["3"]))
    base.update(entry)
    return {
        **MINIMAL,
        "spec": {**MINIMAL_SPEC, field: {k: v for k, v in base.items() if v is not None}},
    }


BROKEN = [
    ({**MINIMAL, "colour": "blue"}, "colour", "unknown key"),
    ({**MINIMAL, "name": "other"}, "name", "must match the file name"),
    ({k: v for k, v in MINIMAL.items() if k != "name"}, "name", "missing"),
    ({k: v for k, v in MINIMAL.items() if k != "spec"}, "spec", "missing"),
    (spec_with("4", max_len=None), "spec.4.max_len", "missing"),
    (spec_with("4", data_enc=None), "spec.4.data_enc", "missing"),
    (spec_with("4", len_type="0"), "spec.4.len_type", "whole number"),
    (spec_with("4", max_len=True), "spec.4.max_len", "whole number"),
    (spec_with("4", max_len=-1), "spec.4.max_len", "whole number"),
    (spec_with("4", data_enc="klingon"), "spec.4.data_enc", "unknown encoding"),
    (spec_with("4", len_enc="bcdd"), "spec.4.len_enc", "unknown encoding"),
    (spec_with("4", lenght=2), "spec.4.lenght", "unknown key"),
    (spec_with("4", len_count="digits"), "spec.4.len_count", "'bytes' or 'nibbles'"),
    (spec_with("4", right_pad="0"), "spec.4.right_pad", "counted in nibbles"),
    (
        spec_with("22", data_enc="b", len_count="nibbles", max_len=3),
        "spec.22",
        "give left_pad or right_pad",
    ),
    (
        spec_with("22", data_enc="b", len_count="nibbles", max_len=3, left_pad="0", right_pad="0"),
        "spec.22",
        "not both",
    ),
    (
        spec_with("22", data_enc="b", len_count="nibbles", max_len=3, left_pad="00"),
        "spec.22.left_pad",
        "one hex digit",
    ),
    (spec_with("2", max_len=100), "spec.2.max_len", "does not fit a 2-byte ascii length"),
    (spec_with("200"), "spec.200", "not a field"),
    (spec_with("h", max_len=4), "spec.h.max_len", "framing.header_length"),
    (spec_with("p", max_len=16), "spec.p", "max_len 8"),
    ({**MINIMAL, "spec": {k: v for k, v in MINIMAL_SPEC.items() if k != "1"}}, "spec.1", "missing"),
    (
        {**MINIMAL, "spec": {k: v for k, v in MINIMAL_SPEC.items() if k != "39"}},
        "spec.39",
        "missing",
    ),
    ({**MINIMAL, "framing": {"length": "ascii2"}}, "framing.length", "must be one of"),
    ({**MINIMAL, "framing": {"tpdu": "yes"}}, "framing.tpdu", "true or false"),
    ({**MINIMAL, "framing": {"header_length": -6}}, "framing.header_length", ">= 0"),
    ({**MINIMAL, "framing": {"mtu": 1500}}, "framing.mtu", "unknown key"),
    ({**MINIMAL, "reversal": {"mti": "0200"}}, "reversal.mti", "'0400' or '0420'"),
    ({**MINIMAL, "reversal": {"stan": "random"}}, "reversal.stan", "'new' or 'original'"),
    ({**MINIMAL, "reversal": {"retries": 3}}, "reversal.retries", "unknown key"),
    (
        {**MINIMAL, "reversal": {"transmission_time": "no"}},
        "reversal.transmission_time",
        "true or false",
    ),
    (
        {**MINIMAL, "reversal": {"original_data": "none", "not_found_codes": ["12"]}},
        "reversal.not_found_codes",
        "not among the resolved_codes",
    ),
    (
        {**MINIMAL, "reversal": {"original_data": "de90", "copy_fields": ["2"]}},
        "reversal.original_data",
        "needs field 90",
    ),
    (
        {**MINIMAL, "reversal": {"original_data": "none", "reason_codes": {"boredom": "06"}}},
        "reversal.reason_codes.boredom",
        "unknown reason",
    ),
    (
        {**MINIMAL, "reversal": {"original_data": "none", "reason_codes": {"timeout": "9"}}},
        "reversal.reason_codes.timeout",
        "2-character response code",
    ),
    (
        {**MINIMAL, "reversal": {"original_data": "none", "copy_fields": ["2", "37"]}},
        "reversal.copy_fields[1]",
        "field 37 is not in the spec",
    ),
    ({**MINIMAL, "match_fields": ["41", "37"]}, "match_fields[1]", "field 37 is not in the spec"),
    ({**MINIMAL, "match_fields": ["41", "DE11"]}, "match_fields[1]", "not a field 2..192"),
    ({**MINIMAL, "match_fields": "41"}, "match_fields", "list of field numbers"),
    ({**MINIMAL, "reversible_mtis": ["200"]}, "reversible_mtis[0]", "4 digits"),
    ({**MINIMAL, "decline_code": 91}, "decline_code", "2-character response code"),
    ({**MINIMAL, "extends": "nonesuch"}, "extends", "unknown dialect 'nonesuch'"),
    ({**MINIMAL, "extends": "tiny"}, "extends", "cycle: tiny -> tiny"),
]


@pytest.mark.parametrize(
    ("content", "field", "problem"), BROKEN, ids=[f"{f}:{p}" for _, f, p in BROKEN]
)
def test_broken_files_are_refused(
    tmp_path: Path, content: dict[str, object], field: str, problem: str
) -> None:
    path = write_json(tmp_path, "tiny", content)
    with pytest.raises(DialectError) as caught:
        load_dialect(path)
    error = caught.value
    assert (error.file, error.field) == (str(path), field)
    assert problem in error.problem
    assert str(error) == f"{path}: {field}: {error.problem}"


def test_cycle_through_two_files(tmp_path: Path) -> None:
    write_json(tmp_path, "a", {"name": "a", "extends": "b"})
    write_json(tmp_path, "b", {"name": "b", "extends": "a"})
    with pytest.raises(DialectError) as caught:
        load_dialect(tmp_path / "a.json")
    assert caught.value.field == "extends"
    assert "cycle: a -> b -> a" in caught.value.problem


def test_a_broken_parent_names_the_parent_file(tmp_path: Path) -> None:
    write_json(tmp_path, "parent", {**MINIMAL, "name": "parent", "framing": {"length": "x"}})
    child = write_json(tmp_path, "tiny", {"name": "tiny", "extends": "parent"})
    with pytest.raises(DialectError) as caught:
        load_dialect(child)
    assert caught.value.file == str(tmp_path / "parent.json")
    assert caught.value.field == "framing.length"


@pytest.mark.parametrize(
    ("suffix", "text", "field"),
    [
        (".toml", 'name = "tiny"\nspec = {', "syntax"),
        (".json", '{"name": "tiny",', "syntax"),
        (".json", '["tiny"]', "file"),
    ],
)
def test_unreadable_files(tmp_path: Path, suffix: str, text: str, field: str) -> None:
    path = tmp_path / f"tiny{suffix}"
    path.write_text(text)
    with pytest.raises(DialectError) as caught:
        load_dialect(path)
    assert (caught.value.file, caught.value.field) == (str(path), field)
