"""The artifact's catalog in Milvus: load it into a collection (`load_into_milvus`, `python -m towerrec.artifact
milvus`) and search it (`MilvusCatalog`, what the Retriever searches when index.backend=milvus).

One entity per product: row_id (primary key: the FAISS id, stable across add/remove), position (its row of
items.parquet), item_id, category (the normalised path), category_path (its prefixes, so a category filter is one
array_contains), price and has_price (an unknown price is stored as 0 with has_price false) and embedding (the
stored product vector; inner-product metric on unit vectors: cosine, the scores FAISS gives).

A load writes a new collection `<collection>_v<milliseconds>`, tagged with the artifact's version (its
manifest's sha256), checks its count, then points the alias `<collection>` at it (created, or altered:
searches switch at once) and drops older generations; the one the alias pointed to before is kept
(`keep_previous`) for services still reading it until they reload. Loading the same artifact again replaces
the collection the same way. `MilvusCatalog.open` resolves the alias once and refuses a collection whose
version is not the artifact's, so a served artifact and the vectors searched always agree.

Filters: `filter_expression(ItemFilter, exclude_rows)` is the Milvus expression of the filter object the FAISS
path turns into a mask: array_contains(category_path, "A > B"), has_price and the price bounds, and
row_id not in [...] for excluded products. Strings are JSON-quoted (quotes and backslashes escaped).

pymilvus (and milvus-lite, for a local .db file) come with the optional extra `towerrec[milvus]` and are
imported on use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from towerrec.artifact.format import ITEMS_FILE, ArtifactError, reason
from towerrec.artifact.items import ItemFilter
from towerrec.artifact.reader import Artifact
from towerrec.data.schema import category_key, category_path_prefixes
from towerrec.index import MilvusConfig

log = logging.getLogger(__name__)

MAX_LIMIT = 16384  # Milvus's largest topk
MAX_VARCHAR = 65535  # bytes
MAX_ARRAY = 4096
VECTOR, PRIMARY = "embedding", "row_id"
VERSION_KEY, PATH_KEY = "towerrec.artifact_version", "towerrec.artifact"
ITEMS_KEY, DIM_KEY = "towerrec.num_items", "towerrec.dim"
REMOTE = ("http://", "https://", "tcp://", "unix:")


class VectorStoreError(ConnectionError):
    """Milvus failed or cannot be reached; the message names the URI and the collection."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise ImportError("index.backend=milvus needs pymilvus (and milvus-lite for a local .db file): "
                          "pip install 'towerrec[milvus]'") from e
    return pymilvus


def is_lite(uri: str) -> bool:
    """Whether `uri` is a local Milvus Lite file (else a server)."""
    return not str(uri).startswith(REMOTE)


@contextlib.contextmanager
def _milvus_errors(cfg: MilvusConfig, what: str):
    """Any client or server error while doing `what` becomes one VectorStoreError naming the URI and collection."""
    try:
        yield
    except (VectorStoreError, ArtifactError):
        raise
    except Exception as e:  # MilvusException, grpc errors: no common base
        raise VectorStoreError(f"Milvus at {cfg.uri} (collection {cfg.collection}): {what} failed "
                               f"({reason(e)})") from e


def connect(cfg: MilvusConfig):
    """A MilvusClient for `cfg.uri` (Milvus Lite in this process for a .db file, else the server)."""
    if not cfg.uri:
        raise ValueError("index.milvus.uri is not set: give a local file such as catalog.db (Milvus Lite) or a "
                         "server address such as http://HOST:19530")
    if is_lite(cfg.uri) and not str(cfg.uri).endswith(".db"):
        raise ValueError(f"index.milvus.uri must end in .db (a Milvus Lite file) or start with http:// or https:// "
                         f"(a Milvus server), got {cfg.uri!r}")
    pymilvus = _pymilvus()
    if is_lite(cfg.uri):
        Path(cfg.uri).parent.mkdir(parents=True, exist_ok=True)  # Milvus Lite wants its folder to exist
        try:
            import milvus_lite  # noqa: F401  (pymilvus starts it for .db URIs)
        except ImportError as e:
            raise ImportError(f"index.milvus.uri={cfg.uri!r} is a Milvus Lite file, which needs milvus-lite: "
                              "pip install 'towerrec[milvus]'") from e
    with _milvus_errors(cfg, "connecting"):
        return pymilvus.MilvusClient(uri=str(cfg.uri), token=cfg.secret(), db_name=cfg.db_name,
                                     timeout=cfg.timeout_s)


def _alias_target(client, alias: str) -> str | None:
    """The collection `alias` points to; None when there is no such alias (asked first: a describe_alias of a
    missing alias is logged by pymilvus as an error)."""
    if alias not in (client.list_aliases() or {}).get("aliases", []):
        return None
    return client.describe_alias(alias)["collection_name"]


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def filter_expression(item_filter: ItemFilter | None, exclude_rows: Collection[int] = ()) -> str:
    """The Milvus boolean expression keeping what `item_filter` keeps, minus `exclude_rows` ("" keeps all)."""
    parts = []
    f = item_filter or ItemFilter()
    if f.category is not None:
        parts.append(f"array_contains(category_path, {_quote(f.category)})")
    if f.priced:
        parts.append("has_price")
        if f.price_min is not None:
            parts.append(f"price >= {float(f.price_min)!r}")
        if f.price_max is not None:
            parts.append(f"price <= {float(f.price_max)!r}")
    if exclude_rows:
        parts.append(f"{PRIMARY} not in [{', '.join(str(int(r)) for r in sorted(exclude_rows))}]")
    return " and ".join(parts)


def _columns(artifact: Artifact) -> dict:
    """The entity fields, column by column, aligned with the table positions."""
    table = artifact.table
    categories = [category_key(c) if c else "" for c in (p["category"] for p in table.products)]
    prices = table.prices
    known = ~np.isnan(prices)
    return {"row_id": table.row_ids, "position": np.arange(len(table), dtype=np.int64),
            "item_id": [str(i) for i in table.item_ids], "category": categories,
            "category_path": [category_path_prefixes(c) for c in categories],
            "price": np.where(known, prices, 0.0), "has_price": known, VECTOR: artifact.embeddings}


def _max_bytes(artifact: Artifact, column: str, values: list[str]) -> int:
    longest = max((len(v.encode()) for v in values), default=0)
    if longest > MAX_VARCHAR:
        raise ArtifactError(f"{artifact.path / ITEMS_FILE}: a {column} of {longest} bytes is longer than Milvus "
                            f"stores ({MAX_VARCHAR})")
    return max(1, longest)


def _schema(client, artifact: Artifact, columns: dict):
    DataType = _pymilvus().DataType
    depth = max((len(p) for p in columns["category_path"]), default=0)
    if depth > MAX_ARRAY:
        raise ArtifactError(f"{artifact.path / ITEMS_FILE}: a category path of {depth} levels is deeper than "
                            f"Milvus arrays hold ({MAX_ARRAY})")
    category_bytes = _max_bytes(artifact, "category", columns["category"])
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(PRIMARY, DataType.INT64, is_primary=True)
    schema.add_field("position", DataType.INT64)
    schema.add_field("item_id", DataType.VARCHAR, max_length=_max_bytes(artifact, "item_id", columns["item_id"]))
    schema.add_field("category", DataType.VARCHAR, max_length=category_bytes)
    schema.add_field("category_path", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=max(1, depth),
                     max_length=category_bytes)
    schema.add_field("price", DataType.DOUBLE)
    schema.add_field("has_price", DataType.BOOL)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=artifact.dim)
    return schema


def load_into_milvus(artifact: Artifact, cfg: MilvusConfig, progress: bool = True) -> dict:
    """Load the artifact's products into a new collection, swap the alias `cfg.collection` to it, drop older
    generations; returns what was done (uri, collection, name, items, dim, version, previous, dropped,
    seconds). Idempotent: a second load of the same artifact replaces the collection."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    alias, n = cfg.collection, artifact.num_items
    columns = _columns(artifact)
    client = connect(cfg)
    try:
        with _milvus_errors(cfg, "reading the alias"):
            previous = _alias_target(client, alias)
            if previous is None and client.has_collection(alias):
                raise VectorStoreError(f"Milvus at {cfg.uri}: {alias!r} is a collection, not an alias that towerrec "
                                       "loads; drop it or choose another index.milvus.collection")
        name = f"{alias}_v{time.time_ns() // 1_000_000}"
        with _milvus_errors(cfg, f"creating collection {name}"):
            index = client.prepare_index_params()
            index.add_index(VECTOR, index_type=str(cfg.index_type), metric_type="IP", params=dict(cfg.index_params))
            client.create_collection(name, schema=_schema(client, artifact, columns), index_params=index,
                                     properties={VERSION_KEY: artifact.version, PATH_KEY: str(artifact.path),
                                                 ITEMS_KEY: str(n), DIM_KEY: str(artifact.dim)})
        try:
            with _milvus_errors(cfg, f"loading {n} products into {name}"):
                bar = tqdm(total=n, desc=f"milvus {alias}", unit="items", disable=not progress)
                for lo in range(0, n, cfg.insert_batch):
                    hi = min(n, lo + cfg.insert_batch)
                    client.insert(name, [{k: _value(v[i]) for k, v in columns.items()} for i in range(lo, hi)])
                    bar.update(hi - lo)
                bar.close()
                client.flush(name)
                client.load_collection(name)
                count = int(client.get_collection_stats(name)["row_count"])
                if count != n:
                    raise VectorStoreError(f"Milvus at {cfg.uri}: collection {name} holds {count} entities after "
                                           f"loading {n} products")
                if n:  # a probe search: the index must answer before the alias points at it
                    probe = MilvusCatalog(client, cfg, name, artifact.dim).search(artifact.embeddings[:1], 1)[1]
                    if probe[0, 0] < 0:
                        raise VectorStoreError(f"Milvus at {cfg.uri}: collection {name} answers no search after "
                                               "loading")
                if previous is None:
                    client.create_alias(name, alias)
                else:
                    client.alter_alias(name, alias)
        except BaseException:
            with contextlib.suppress(Exception):
                client.drop_collection(name)  # the alias still points where it did
            raise
        keep = {name} | ({previous} if previous and cfg.keep_previous else set())
        with _milvus_errors(cfg, "dropping older collections"):
            stale = [c for c in client.list_collections() if re.fullmatch(rf"{alias}_v\d+", c) and c not in keep]
            for c in stale:
                client.drop_collection(c)
    finally:
        with contextlib.suppress(Exception):
            client.close()
    summary = {"uri": str(cfg.uri), "collection": alias, "name": name, "items": n, "dim": artifact.dim,
               "version": artifact.version, "index_type": str(cfg.index_type), "previous": previous,
               "dropped": stale, "seconds": round(time.perf_counter() - start, 2)}
    log.info("loaded %d products of %s into Milvus %s as %s (alias %s) in %.1f s", n, artifact.path, cfg.uri, name,
             alias, summary["seconds"])
    return summary


def _value(v):
    """One entity field as the client takes it (numpy scalars -> Python; vectors stay float32 arrays)."""
    if isinstance(v, np.ndarray):
        return v
    return v.item() if isinstance(v, np.generic) else v


class MilvusCatalog:
    """The collection an artifact was loaded into, searched by vector with a filter expression."""

    def __init__(self, client, cfg: MilvusConfig, name: str, dim: int):
        self.client, self.cfg, self.name, self.dim = client, cfg, name, dim

    @classmethod
    def open(cls, artifact: Artifact, cfg: MilvusConfig) -> "MilvusCatalog":
        """Connect, resolve the alias, check the collection holds this artifact (its version), load it.

        ArtifactError (naming the artifact and the URI, and the command that loads it) when it does not."""
        client = connect(cfg)
        load = f"python -m towerrec.artifact milvus {artifact.path} --uri {cfg.uri} --collection {cfg.collection}"
        with _milvus_errors(cfg, "reading the collection"):
            name = _alias_target(client, cfg.collection)
            if name is None:
                raise ArtifactError(f"{artifact.path}: Milvus at {cfg.uri} has no collection {cfg.collection!r}; "
                                    f"load the artifact into it first: {load}")
            props = client.describe_collection(name).get("properties") or {}
        if props.get(VERSION_KEY) != artifact.version:
            raise ArtifactError(f"{artifact.path}: version {artifact.version}, but Milvus collection "
                                f"{cfg.collection!r} at {cfg.uri} holds version {props.get(VERSION_KEY)} (from "
                                f"{props.get(PATH_KEY)}); load this artifact: {load}")
        with _milvus_errors(cfg, f"loading collection {name}"):
            client.load_collection(name)
        log.info("searching Milvus %s collection %s (alias %s) for %s", cfg.uri, name, cfg.collection, artifact.path)
        return cls(client, cfg, name, artifact.dim)

    def search(self, q: np.ndarray, limit: int, expr: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), each (B, limit) best first, padded with -inf / -1, like a FAISS search."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        params = dict(self.cfg.search_params)
        if "ef" in params:  # HNSW needs ef >= limit
            params["ef"] = max(int(params["ef"]), limit)
        with _milvus_errors(self.cfg, "search"):
            result = self.client.search(self.name, data=[row for row in np.asarray(q, dtype=np.float32)],
                                        filter=expr, limit=limit, output_fields=[], anns_field=VECTOR,
                                        search_params={"metric_type": "IP", "params": params})
        scores = np.full((len(q), limit), -np.inf, dtype=np.float32)
        labels = np.full((len(q), limit), -1, dtype=np.int64)
        for i, hits in enumerate(result):
            m = len(hits)
            labels[i, :m] = hits.ids
            scores[i, :m] = hits.distances
        return scores, labels

    def describe(self) -> dict:
        return {"backend": "milvus", "uri": str(self.cfg.uri), "collection": self.cfg.collection, "name": self.name,
                "index_type": str(self.cfg.index_type)}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
