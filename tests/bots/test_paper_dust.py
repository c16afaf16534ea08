"""The live bots' parts of ``bots.paper.PaperBook``: dust kept apart with its cost basis, taken
back in, transfers, third-asset fees in the equity, and the stored form (a paper book's stays
as it was)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bots.paper import PaperBook

units = st.floats(min_value=1e-6, max_value=1e3)
prices = st.floats(min_value=0.01, max_value=1e6)
fees = st.floats(min_value=0.0, max_value=50.0)


def long_book(amount: float, price: float, fee: float) -> PaperBook:
    return PaperBook(
        cash=1_000.0, units=amount, entry_price=price, entry_fee=fee,
        committed=amount * price + fee, extreme=price, entry_ms=60_000,
    )  # fmt: skip


@given(units, prices, fees, prices)
def test_dust_and_back_keeps_the_position_and_the_equity(amount, price, fee, mark):
    book = long_book(amount, price, fee)
    equity = book.equity(mark)
    book.to_dust()
    assert not book.long and book.dust == amount
    assert book.equity(mark) == pytest.approx(equity, rel=1e-12)
    book.merge_dust()
    assert book.long and book.dust == 0.0
    assert book.units == amount
    assert book.entry_price == pytest.approx(price, rel=1e-12)
    assert book.entry_fee == pytest.approx(fee, rel=1e-12, abs=1e-12)
    assert book.committed == pytest.approx(amount * price + fee, rel=1e-12)
    assert book.equity(mark) == pytest.approx(equity, rel=1e-12)


@given(units, prices, units, prices, prices)
def test_merging_dust_into_a_new_position_averages_the_cost(amount, price, dust, cost, mark):
    book = long_book(dust, cost, 0.0)
    book.to_dust()
    book.units, book.entry_price, book.committed = amount, price, amount * price
    value = book.equity(mark)
    book.merge_dust()
    assert book.units == pytest.approx(amount + dust, rel=1e-12)
    assert book.units * book.entry_price == pytest.approx(amount * price + dust * cost, rel=1e-9)
    assert book.committed == pytest.approx(amount * price + dust * cost, rel=1e-12)
    assert book.equity(mark) == pytest.approx(value, rel=1e-12)


@given(units, prices, fees, st.floats(min_value=0.0, max_value=1.0), prices)
def test_a_transfer_out_takes_the_dust_first_then_a_share_of_the_position(
    amount, price, fee, fraction, mark
):
    book = long_book(amount, price, fee)
    book.to_dust()
    book.units, book.entry_price, book.committed = amount, price, amount * price
    held = book.held
    book.transfer(-held * fraction, mark)
    assert book.held == pytest.approx(held * (1 - fraction), rel=1e-9, abs=1e-9)
    if held * fraction <= amount:  # the dust went first
        assert book.dust == pytest.approx(max(amount - held * fraction, 0.0), abs=1e-9)


def test_a_transfer_in_joins_the_position_at_its_price_or_the_dust_while_flat():
    book = long_book(1.0, 100.0, 0.1)
    book.transfer(1.0, 200.0)
    assert (book.units, book.entry_price, book.committed) == (2.0, 150.0, 300.1)
    flat = PaperBook(cash=50.0)
    flat.transfer(0.5, 80.0)
    assert (flat.long, flat.dust, flat.dust_price, flat.dust_committed) == (False, 0.5, 80.0, 40.0)
    assert flat.equity(100.0) == 100.0


def test_third_asset_fees_lower_the_equity_not_the_cash():
    book = long_book(1.0, 100.0, 0.075)
    book.other_fees = 0.075
    assert book.cash == 1_000.0 and book.equity(110.0) == 1_000.0 + 110.0 - 0.075


def test_the_stored_form_of_a_paper_book_is_unchanged_and_live_fields_round_trip():
    paper = long_book(2.0, 50.0, 0.1)
    assert set(paper.to_dict()) == {
        "cash", "units", "entry_price", "entry_fee", "committed", "extreme", "entry_ms",
    }  # fmt: skip
    live = long_book(2.0, 50.0, 0.1)
    live.to_dust()
    live.other_fees = 0.3
    stored = json.loads(json.dumps(live.to_dict()))
    assert PaperBook.from_dict(stored) == live
