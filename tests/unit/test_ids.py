from __future__ import annotations

from tidings import ids


def test_ids_carry_their_prefix_and_sort_by_time() -> None:
    earlier = ids.new_id(ids.MESSAGE, now_ms=1_000)
    later = ids.new_id(ids.MESSAGE, now_ms=2_000)

    assert earlier.startswith("msg_")
    assert earlier < later
    assert len({ids.new_id(ids.DELIVERY) for _ in range(1000)}) == 1000
