"""The hand-encoded receivers of an allocation are exactly what protobuf builds field by field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allocation.v1 import allocation_pb2
from controller.validation import MAX_QUANTITY
from controller.wire import encode_shares

ACCOUNT_NAMES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-",
    min_size=1,
    max_size=64,
)


@given(
    st.lists(
        st.tuples(ACCOUNT_NAMES, st.integers(1, MAX_QUANTITY)),
        max_size=50,
        unique_by=lambda s: s[0],
    )
)
def test_encoded_shares_equal_the_messages_added_one_by_one(
    shares: list[tuple[str, int]],
) -> None:
    accounts = [account for account, _ in shares]
    quantities = [quantity for _, quantity in shares]
    expected = allocation_pb2.FillAllocation()
    for account, quantity in shares:
        expected.allocations.add(account=account, quantity=quantity)
    merged = allocation_pb2.FillAllocation(fill_id="f")
    merged.MergeFromString(encode_shares(accounts, quantities))
    assert merged.fill_id == "f"
    assert list(merged.allocations) == list(expected.allocations)
    assert merged.SerializeToString(deterministic=True).endswith(
        expected.SerializeToString(deterministic=True)
    )


def test_a_quantity_of_several_varint_bytes_is_encoded_whole() -> None:
    merged = allocation_pb2.FillAllocation()
    merged.MergeFromString(encode_shares(["a", "b", "c"], [127, 128, 10**10]))
    assert [(s.account, s.quantity) for s in merged.allocations] == [
        ("a", 127),
        ("b", 128),
        ("c", 10**10),
    ]
