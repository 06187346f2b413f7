"""Pseudonymized user ids: raw ids are replaced at load time by a keyed hash (HMAC-SHA256).

The key comes from config (`data.user_id_secret`) or the TOWERREC_USER_SECRET environment variable.
Without a key the same ids can be recomputed by anyone, so a fixed development key is used with a
warning. Raw ids never leave the loader: logs, metrics and exports see only the pseudonyms.
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


def resolve_secret(secret: str | None = None) -> bytes:
    global _warned
    secret = secret or os.environ.get(ENV_VAR)
    if not secret:
        if not _warned:
            log.warning("no user-id secret set (data.user_id_secret or $%s): using the development key", ENV_VAR)
            _warned = True
        secret = _DEV_SECRET
    return secret.encode("utf-8")


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
