"""Pseudonymized user ids: raw ids are replaced at load time by a keyed hash (HMAC-SHA256).

The key comes from config (`data.user_id_secret`) or the TOWERREC_USER_SECRET environment variable.
Without a key the same ids can be recomputed by anyone, so a fixed development key is used with a
warning, and exports and `serve.py` refuse its pseudonyms outside a development run
(`uses_development_key` says whether a secret falls back to it). Raw ids never leave the loader: logs,
metrics and exports see only the pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

ENV_VAR = "TOWERREC_USER_SECRET"
_DEV_SECRET = "towerrec-development-key"
_warned = False


def _configured(secret: str | None) -> str | None:
    return secret or os.environ.get(ENV_VAR) or None


def uses_development_key(secret: str | None = None) -> bool:
    """Whether `pseudonymize(..., secret)` hashes with the development key: no secret and no $TOWERREC_USER_SECRET
    (or one equal to the development key, which is public)."""
    return _configured(secret) in (None, _DEV_SECRET)


def resolve_secret(secret: str | None = None) -> bytes:
    global _warned
    if not uses_development_key(secret):
        return _configured(secret).encode("utf-8")
    if not _warned:
        log.warning("no user-id secret set (data.user_id_secret or $%s): using the development key, whose "
                    "pseudonyms anyone can recompute; exports and serve.py refuse them outside a development run",
                    ENV_VAR)
        _warned = True
    return _DEV_SECRET.encode("utf-8")


def pseudonymize(raw_ids: Iterable[object], secret: str | None = None, length: int = 16) -> list[str]:
    """Keyed hash of each raw id: 'u_' + `length` hex chars. Equal ids map to equal pseudonyms."""
    key = resolve_secret(secret)
    cache: dict[str, str] = {}
    out = []
    for raw in raw_ids:
        s = str(raw)
        p = cache.get(s)
        if p is None:
            p = "u_" + hmac.new(key, s.encode("utf-8"), hashlib.sha256).hexdigest()[:length]
            cache[s] = p
        out.append(p)
    return out
