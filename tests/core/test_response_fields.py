"""The shell extracts RESPONSE_FIELDS from every acquirer response: whatever the core reads of
a response must be among them, or the check that reads it is silently off in production (the
core's own tests hand it every field). Found the hard way: DE 7/12/13/37, which tell apart two
requests sharing a key, were read by the core and never extracted by the shell."""

from __future__ import annotations

import ast
import inspect

from gateway.core import engine, notices
from gateway.core.events import RESPONSE_FIELDS, RESPONSE_FIELDS_LATER


def _names_read(source: str, mapping: str) -> set[str]:
    """Literal keys of ``<mapping>.get("N")`` calls, e.g. ``event.fields.get("39")``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and ast.unparse(node.func.value) == mapping
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_every_response_field_the_core_reads_is_extracted() -> None:
    read = _names_read(inspect.getsource(engine), "event.fields")
    read |= _names_read(inspect.getsource(notices.response_data), "fields")
    read |= set(engine._TELLING_FIELDS)
    assert read, "the scan found nothing: it no longer sees how the core reads responses"
    extracted = {*RESPONSE_FIELDS, *RESPONSE_FIELDS_LATER}
    assert read <= extracted, sorted(read - extracted)
