"""Category paths (towerrec.data.schema): the normalised key and the prefixes that category filters match."""

from __future__ import annotations

from towerrec.data.schema import category_key, category_path_prefixes, category_prefixes


def test_category_key_normalises_the_separator():
    assert category_key("Home>Kitchen >  Coffee ") == "Home > Kitchen > Coffee"
    assert category_key("Books") == "Books"


def test_prefixes_of_one_path_and_of_a_catalog():
    assert category_path_prefixes("Home>Kitchen > Coffee") == ["Home", "Home > Kitchen", "Home > Kitchen > Coffee"]
    assert category_path_prefixes("") == [] and category_path_prefixes(None) == []
    assert category_prefixes(["Home > Kitchen > Coffee", "Books", None, ""]) == {
        "Home", "Home > Kitchen", "Home > Kitchen > Coffee", "Books"}
