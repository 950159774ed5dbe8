"""ShardedDict (gateway/core/sharded.py) answers exactly as one dict would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.sharded import SHARDS, ShardedDict

_keys = st.tuples(st.sampled_from(["0200", "0100", None]), st.text(max_size=3))
_ops = st.lists(
    st.tuples(st.sampled_from(["set", "del", "setdefault", "get"]), _keys, st.integers()),
    max_size=200,
)


@given(_ops)
def test_it_answers_as_one_dict_would(ops: list[tuple[str, tuple[str | None, str], int]]) -> None:
    model: dict[tuple[str | None, str], int] = {}
    sharded: ShardedDict[tuple[str | None, str], int] = ShardedDict()
    for op, key, value in ops:
        if op == "set":
            model[key] = sharded[key] = value
        elif op == "del" and key in model:
            del model[key]
            del sharded[key]
        elif op == "setdefault":
            assert sharded.setdefault(key, value) == model.setdefault(key, value)
        assert sharded.get(key) == model.get(key)
        assert sharded.get(key, -1) == model.get(key, -1)
        assert (key in sharded) == (key in model)
        assert (key in sharded.shard(key)) == (key in model)
    assert len(sharded) == len(model)
    assert bool(sharded) == bool(model)
    assert sorted(sharded.values()) == sorted(model.values())
    for key, value in model.items():
        assert sharded[key] == value


def test_entries_spread_over_the_shards() -> None:
    """What makes a rebuild small: 60,000 lingering requests' keys, no shard with more than
    twice its share."""
    sharded: ShardedDict[tuple[str, str, str], int] = ShardedDict()
    for n in range(60_000):
        sharded[("0200", f"{n % 999_999 + 1:06d}", f"TERM{n % 50:04d}")] = n
    sizes = [len(shard) for shard in sharded._shards]
    assert len(sizes) == SHARDS
    assert max(sizes) < 2 * 60_000 / SHARDS, max(sizes)
    assert repr(sharded) == "ShardedDict(60000 entries)"
