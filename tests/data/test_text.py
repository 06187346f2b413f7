"""Item and user text rendering: exact strings, skipped empty fields, budgets, purity."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from towerrec.data.text import TextConfig, render_item, render_items, render_user, whitespace_tokens

# ------------------------------------------------------------------------------------------- config


def test_from_dict_converts_lists_and_keeps_defaults():
    cfg = TextConfig.from_dict({"item_fields": ["title", "price"], "labels": {"price": "Cost"}, "user_max_items": 3})
    assert cfg.item_fields == ("title", "price")  # lists (as Hydra gives them) become tuples
    assert cfg.labels == {"price": "Cost"}
    assert cfg.user_max_items == 3
    assert cfg.history_fields == TextConfig().history_fields  # untouched options keep their defaults
    assert cfg.field_sep == " | "


def test_from_dict_rejects_unknown_options_by_name():
    with pytest.raises(ValueError, match=r"unknown text option.*'title_field'"):
        TextConfig.from_dict({"title_field": "title", "field_sep": " / "})


def test_from_dict_does_not_mutate_its_input():
    d = {"item_fields": ["title"], "labels": {"brand": "B"}}
    before = copy.deepcopy(d)
    TextConfig.from_dict(d)
    assert d == before


# --------------------------------------------------------------------------------------------- items


def test_render_items_exact_text_in_catalog_order(catalog):
    texts = render_items(catalog, TextConfig())
    assert len(texts) == len(catalog)
    # title | brand | category | attributes (extra columns, in column order) | price
    assert texts[0] == (
        "Trail running shoe | Brand: Stridex | Category: Sports > Running > Shoes"
        " | color: blue, material: mesh | Price: $89.50"
    )
    # no attributes at all: the attributes field is skipped with its separator
    assert texts[1] == "Running socks | Brand: Stridex | Category: Sports > Running | Price: $12.00"
    # empty brand and unknown (NaN) price are skipped; one attribute
    assert texts[3] == "Coffee grinder | Category: Home > Kitchen > Coffee | color: black"
    # only the title is known
    assert texts[7] == "Water bottle"


def test_render_item_price_format_labels_and_separator(catalog):
    cfg = TextConfig(
        item_fields=("title", "price"), labels={"price": "Cost"}, field_sep=" / ", price_format="{:.1f} EUR"
    )
    row = catalog.items.iloc[2]
    assert render_item(row, cfg) == "Espresso machine / Cost: 250.0 EUR"
    # without a label the value stands alone
    assert render_item(row, TextConfig(item_fields=("title", "brand"), labels={})) == "Espresso machine | Brewmaster"


def test_render_item_fields_argument_overrides_config(catalog):
    row = catalog.items.iloc[0]
    assert render_item(row, TextConfig(), fields=("brand", "title")) == "Brand: Stridex | Trail running shoe"


def test_render_item_attributes_need_extra_columns_and_skip_text_column():
    row = pd.Series({"title": "Mug", "color": "red", "text": "precomputed text", "size": "  ", "weight": None})
    cfg = TextConfig(item_fields=("title", "attributes"))
    # the caller names the extra columns; 'text' is never an attribute, blank and None values are skipped
    assert render_item(row, cfg, extra_columns=["color", "text", "size", "weight"]) == "Mug | color: red"
    assert render_item(row, cfg) == "Mug"  # no extra columns named: no attributes


def test_render_item_collapses_whitespace_and_cuts_long_fields():
    row = pd.Series({"title": "Big\n  red\tmug", "description": "x" * 50})
    cfg = TextConfig(item_fields=("title", "description"), max_field_chars=10)
    assert render_item(row, cfg) == "Big red mu | xxxxxxxxxx"


def test_render_item_is_pure(catalog):
    items_before = catalog.items.copy()
    cfg = TextConfig()
    first = render_items(catalog, cfg)
    second = render_items(catalog, cfg)
    assert first == second
    pd.testing.assert_frame_equal(catalog.items, items_before)
    assert cfg == TextConfig()


# --------------------------------------------------------------------------------------------- users


def chars(text: str) -> int:
    """A token counter that makes budgets easy to work out: one token per character."""
    return len(text)


def test_render_user_newest_first_with_separator():
    history = ["Trail running shoe", "Running socks", "Yoga mat"]  # oldest first, as stored
    assert render_user(history, TextConfig()) == "Yoga mat ; Running socks ; Trail running shoe"
    assert render_user(history, TextConfig(item_sep=" || ", user_prefix="Recent: ")) == (
        "Recent: Yoga mat || Running socks || Trail running shoe"
    )


def test_render_user_keeps_newest_max_items():
    history = ["a", "b", "c", "d", "e"]
    assert render_user(history, TextConfig(user_max_items=2)) == "e ; d"
    assert render_user(history, TextConfig(user_max_items=0)) == ""
    assert render_user([], TextConfig(user_prefix="User: ")) == "User: "


def test_render_user_token_budget_counts_items_and_separators():
    # chars(): "c" costs 1; "bb" costs 2 + 3 (" ; ") = 5; "aaaa" costs 4 + 3 = 7. Running totals 1, 6, 13.
    history = ["aaaa", "bb", "c"]
    render = lambda budget: render_user(history, TextConfig(user_max_tokens=budget), count_tokens=chars)  # noqa: E731
    assert render(13) == "c ; bb ; aaaa"
    assert render(12) == "c ; bb"
    assert render(6) == "c ; bb"
    assert render(5) == "c"
    # with this counter the output length is exactly the tokens used, so it stays within the budget
    for budget in range(1, 20):
        assert len(render(budget)) <= budget


def test_render_user_budget_includes_prefix():
    # prefix "U: " costs 3, then "c" 1 -> 4, then "bb" 5 -> 9
    cfg = TextConfig(user_prefix="U: ", user_max_tokens=8)
    assert render_user(["aaaa", "bb", "c"], cfg, count_tokens=chars) == "U: c"


def test_render_user_always_includes_the_newest_item():
    history = ["a", "b", "a very long newest item"]
    assert render_user(history, TextConfig(user_max_tokens=0), count_tokens=chars) == "a very long newest item"
    assert render_user(history, TextConfig(user_max_tokens=2)) == "a very long newest item"  # whitespace tokens


def test_render_user_stops_at_the_first_item_that_does_not_fit():
    # "c" (1) fits, "bbbbbbbb" (8 + 3) does not; the older "a" would fit but the window stays contiguous
    history = ["a", "bbbbbbbb", "c"]
    assert render_user(history, TextConfig(user_max_tokens=6), count_tokens=chars) == "c"


def test_render_user_default_counter_is_whitespace_tokens():
    assert whitespace_tokens("Yoga mat ; Running socks") == 5
    # "Yoga mat" 2, then "Running socks" 2 + 1 (";") -> 5; "Trail running shoe" 3 + 1 would make 9
    history = ["Trail running shoe", "Running socks", "Yoga mat"]
    assert render_user(history, TextConfig(user_max_tokens=8)) == "Yoga mat ; Running socks"
    assert render_user(history, TextConfig(user_max_tokens=9)) == "Yoga mat ; Running socks ; Trail running shoe"


def test_render_user_is_pure():
    history = ["a b", "c d", "e f"]
    before = list(history)
    cfg = TextConfig(user_max_items=2)
    assert render_user(history, cfg) == render_user(history, cfg) == "e f ; c d"
    assert history == before
    assert isinstance(render_user(tuple(history), cfg), str)  # any sequence works
