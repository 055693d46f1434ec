"""The keyring's lookups (primary, get) and its append of a rotation stay exact."""

from __future__ import annotations

from raftsso.keyring import Keyring, KeyState, KeyVersion


def _v(i: int, state: KeyState = KeyState.STAGED) -> KeyVersion:
    return KeyVersion(i, state, bytes(33), f"fp{i}", float(i))


def test_rotations_append_and_lookups_match_a_walk() -> None:
    ring = Keyring().with_version(_v(1, KeyState.PRIMARY))
    for i in range(2, 60):
        ring = ring.with_version(_v(i))
        if i % 7 == 0:
            ring = ring.promote(i, float(i))
        walked = next(v.id for v in ring.versions if v.state is KeyState.PRIMARY)
        assert ring.primary == walked
        assert [v.id for v in ring.versions] == list(range(1, i + 1))
        assert all(ring.get(v.id) is v for v in ring.versions)
        assert ring.get(0) is None and ring.get(i + 1) is None


def test_a_primary_appended_becomes_the_primary() -> None:
    ring = Keyring().with_version(_v(1, KeyState.PRIMARY))
    assert ring.primary == 1
    # Another primary appended (restore builds keyrings this way before promoting).
    ring = ring.with_version(_v(2, KeyState.PRIMARY))
    assert ring.primary == 2


def test_replacing_or_inserting_out_of_order_keeps_ids_sorted() -> None:
    ring = Keyring().with_version(_v(5, KeyState.PRIMARY)).with_version(_v(2))
    assert [v.id for v in ring.versions] == [2, 5]
    ring = ring.with_version(_v(5))  # replaced: no primary left
    assert ring.primary is None
    assert ring.get(5) is not None and ring.get(5).state is KeyState.STAGED  # type: ignore[union-attr]


def test_an_unsorted_keyring_built_by_hand_still_finds_every_version() -> None:
    ring = Keyring((_v(3), _v(1, KeyState.PRIMARY), _v(2)))
    assert ring.primary == 1
    assert [ring.get(i).id for i in (1, 2, 3)] == [1, 2, 3]  # type: ignore[union-attr]
    assert ring == Keyring((_v(3), _v(1, KeyState.PRIMARY), _v(2)))  # the cache is no field
