"""Dialects: what one acquirer's ISO 8583 looks like, loaded from data files in specs/.

API CONTRACT (implementation pending):

    class DialectError(ValueError): file: str, field: str, problem: str
        # str(): "<file>: <field>: <problem>"

    @dataclass(frozen=True)
    class ReversalRules:
        mti: str = "0400"                       # "0400" or "0420"; repeats are mti + 1
        copy_fields: tuple[str, ...] = ("2", "3", "4", "12", "13", "14", "18", "22", "25",
                                        "32", "33", "37", "41", "42", "49")
        stan: Literal["new", "original"] = "new"
        original_data: Literal["de90", "none"] = "de90"
        include_approval_code: bool = True      # DE 38 when the original got one
        reason_codes: Mapping[str, str]         # reason -> DE 39; reasons: timeout,
            # link_lost, undeliverable, in_doubt, late, terminal, other.
            # Default (1987): timeout "68", link_lost "68", undeliverable "22"? -> see specs
        resolved_codes: frozenset[str] = {"00", "25", "94"}   # acks that end a reversal

    @dataclass(frozen=True)
    class Dialect:
        name: str
        description: str
        source: str                             # file it came from
        spec: Mapping[str, Mapping[str, Any]]   # pyiso8583 field spec ("t", "p", "1".."128")
        framing: Framing
        match_fields: tuple[str, ...] = ("41", "11")
        duplicate_fields: tuple[str, ...] = ("41", "11", "4", "7", "12", "13")
        reversible_mtis: frozenset[str] = {"0100", "0200"}
        reversible_processing_codes: frozenset[str] | None = None   # DE 3[:2]; None = every code
        non_reversible_processing_codes: frozenset[str] = {"31"}
        decline_code: str = "91"                # DE 39 of the gateway's own decline
        response_echo_fields: tuple[str, ...]   # copied into responses the gateway makes
        sensitive_fields: frozenset[str] = {"35", "36", "45", "52", "55"}  # never logged/stored
        reversal: ReversalRules

        def is_reversible(self, mti: str, processing_code: str | None) -> bool

    def load_dialect(path: Path) -> Dialect
    def find_dialects(extra_dirs: Sequence[Path] = ()) -> dict[str, Path]
    def get_dialect(name: str, extra_dirs: Sequence[Path] = ()) -> Dialect   # cached
    BUILTIN_SPECS: Path   # the project's specs/ directory
"""
