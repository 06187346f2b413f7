"""Pseudonymized user ids: keyed, deterministic, raw ids never visible."""

from __future__ import annotations

import logging
import re

import pytest

from towerrec.data import privacy
from towerrec.data.privacy import ENV_VAR, pseudonymize

RAW = ["alice@example.com", "98765432", "bob", "alice@example.com"]


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_format_and_equal_ids_map_to_equal_pseudonyms():
    out = pseudonymize(RAW, secret="s1")
    assert len(out) == len(RAW)
    assert all(re.fullmatch(r"u_[0-9a-f]{16}", p) for p in out)
    assert out[0] == out[3]  # the same raw id twice
    assert len(set(out)) == 3
    assert [len(p) for p in pseudonymize(["x"], secret="s1", length=8)] == [10]


def test_deterministic_per_secret_and_different_across_secrets():
    assert pseudonymize(RAW, secret="s1") == pseudonymize(RAW, secret="s1")
    a, b = pseudonymize(RAW, secret="s1"), pseudonymize(RAW, secret="s2")
    assert all(x != y for x, y in zip(a, b))


def test_raw_id_is_not_in_the_output():
    for raw, p in zip(RAW, pseudonymize(RAW, secret="s1")):
        assert raw not in p
        assert raw.lower() not in p


def test_distinct_ids_get_distinct_pseudonyms():
    raw = [f"user{i}" for i in range(2000)]
    assert len(set(pseudonymize(raw, secret="s1"))) == len(raw)


def test_ids_are_compared_as_strings():
    # numeric ids read as int by one loader and as str by another must still agree
    assert pseudonymize([42], secret="s1") == pseudonymize(["42"], secret="s1")


def test_environment_variable_is_the_secret(monkeypatch):
    without_env = pseudonymize(RAW)  # development key
    monkeypatch.setenv(ENV_VAR, "from-env")
    assert pseudonymize(RAW) == pseudonymize(RAW, secret="from-env")
    assert pseudonymize(RAW) != without_env
    # an explicit secret wins over the environment
    assert pseudonymize(RAW, secret="s1") != pseudonymize(RAW)
    assert pseudonymize(RAW, secret="s1") == pseudonymize(RAW, secret="s1")


def test_missing_secret_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(privacy, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=privacy.__name__):
        pseudonymize(["a"])
        pseudonymize(["b"])
    warnings = [r for r in caplog.records if ENV_VAR in r.getMessage()]
    assert len(warnings) == 1


def test_development_key_is_used_exactly_when_no_secret_is_set(monkeypatch):
    assert privacy.uses_development_key() and privacy.uses_development_key("")
    assert not privacy.uses_development_key("s1")
    assert privacy.uses_development_key(privacy._DEV_SECRET)  # the public key, even when given explicitly
    monkeypatch.setenv(ENV_VAR, "from-env")
    assert not privacy.uses_development_key()
    monkeypatch.setenv(ENV_VAR, privacy._DEV_SECRET)
    assert privacy.uses_development_key()


def test_the_development_key_gives_the_pseudonyms_of_no_secret():
    # what uses_development_key reports is what pseudonymize did: the same pseudonyms as with no secret at all
    assert pseudonymize(RAW, secret=privacy._DEV_SECRET) == pseudonymize(RAW)
    assert privacy.resolve_secret(privacy._DEV_SECRET) == privacy.resolve_secret()
