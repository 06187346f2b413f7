"""The artifact's catalog in Milvus (towerrec.artifact.milvus), against Milvus Lite: a load writes every product
with its fields and vector, a second load replaces the collection behind the alias, a collection of another
artifact version is refused, and the filter expressions keep exactly what the FAISS path's masks keep (odd
characters in a category included). The CLI (`python -m towerrec.artifact milvus`) and its errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers.milvus import milvus_cfg, require_milvus_lite

from towerrec.artifact import Artifact, ArtifactError
from towerrec.artifact.cli import main
from towerrec.artifact.items import ItemFilter
from towerrec.artifact.milvus import MilvusCatalog, connect, filter_expression, load_into_milvus
from towerrec.artifact.update import add_items, remove_items
from towerrec.index import IndexConfig, MilvusConfig
from towerrec.retrieval import Retriever

ODD_CATEGORY = 'Tools > 3" "Pipes" \\ Fittings > 50% _off_'


@pytest.fixture(scope="module", autouse=True)
def _milvus_lite(tmp_path_factory):
    require_milvus_lite(tmp_path_factory)


@pytest.fixture(scope="module")
def odd(base, tmp_path_factory):
    """A copy of the shared export with products whose category holds quotes, a backslash and LIKE wildcards,
    and one with no price."""
    path = shutil.copytree(base, tmp_path_factory.mktemp("odd") / "artifact")
    rows = [{"item_id": "odd-1", "title": "Pipe fitting", "brand": "X", "category": ODD_CATEGORY, "price": 4.5},
            {"item_id": "odd-2", "title": "Pipe", "brand": "X", "category": ODD_CATEGORY.rsplit(" > ", 1)[0],
             "price": None},
            {"item_id": "odd-3", "title": "Pipe wrench", "brand": "X", "category": "Tools > 3", "price": 12.0}]
    add_items(path, pd.DataFrame(rows))
    return Artifact.load(path)


@pytest.fixture(scope="module")
def loaded(odd, tmp_path_factory):
    """(artifact, cfg): `odd` loaded into a fresh Milvus Lite file with an exact index."""
    cfg = milvus_cfg(tmp_path_factory.mktemp("milvus"))
    load_into_milvus(odd, cfg, progress=False)
    return odd, cfg


def test_expressions_of_the_filter_objects():
    assert filter_expression(None) == "" and filter_expression(ItemFilter(" ")) == ""
    assert filter_expression(ItemFilter("Home>Kitchen ")) == 'array_contains(category_path, "Home > Kitchen")'
    assert filter_expression(ItemFilter('A "b" \\ c')) == 'array_contains(category_path, "A \\"b\\" \\\\ c")'
    assert filter_expression(ItemFilter(price_min=2, price_max=10.5), {7, 3}) == \
        "has_price and price >= 2.0 and price <= 10.5 and row_id not in [3, 7]"
    assert filter_expression(ItemFilter(price_max=0.001)) == "has_price and price <= 0.001"
    with pytest.raises(ValueError, match="filters.price_min must be a finite number"):
        ItemFilter(price_min=float("nan"))


def test_load_writes_every_product_with_its_fields_and_vector(loaded):
    art, cfg = loaded
    client = connect(cfg)
    rows = client.query(cfg.collection, filter="row_id >= 0", output_fields=["*"], limit=art.num_items + 10)
    assert len(rows) == art.num_items
    rows = sorted(rows, key=lambda r: r["position"])
    assert [r["row_id"] for r in rows] == art.row_ids.tolist()
    assert [r["item_id"] for r in rows] == art.items["item_id"].tolist()
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], dtype=np.float32), art.embeddings)
    odd = next(r for r in rows if r["item_id"] == "odd-1")
    assert odd["category"] == ODD_CATEGORY and list(odd["category_path"]) == [
        "Tools", 'Tools > 3" "Pipes" \\ Fittings', ODD_CATEGORY]
    no_price = next(r for r in rows if r["item_id"] == "odd-2")
    assert (no_price["has_price"], no_price["price"]) == (False, 0.0)
    priced = art.table.prices[[r["position"] for r in rows]]
    assert [r["has_price"] for r in rows] == (~np.isnan(priced)).tolist()
    client.close()


def test_expressions_keep_exactly_what_the_masks_keep(loaded):
    """Every category prefix of the catalog (and ones matching nothing or cutting a segment), price ranges and
    their combinations, with exclusions: Milvus returns exactly the products the FAISS path's mask keeps."""
    art, cfg = loaded
    catalog = MilvusCatalog.open(art, cfg)
    retriever = Retriever(art)
    prices = art.table.prices[~np.isnan(art.table.prices)]
    lo, hi = float(np.quantile(prices, 0.25)), float(np.quantile(prices, 0.75))
    filters = [ItemFilter(c) for c in sorted(retriever.categories)] + [
        ItemFilter("No such category"), ItemFilter("Tools > 3\" \"Pi"), ItemFilter("Tools>3"),
        ItemFilter(price_min=lo), ItemFilter(price_max=hi), ItemFilter(price_min=lo, price_max=hi),
        ItemFilter(price_min=hi, price_max=lo), ItemFilter("Tools", price_max=5.0)]
    exclude = set(art.row_ids[::7].tolist())
    q = art.embeddings[:1]
    for f in filters:
        mask = retriever.filter_mask(f)
        for excl in (set(), exclude):
            _, labels = catalog.search(q, art.num_items, filter_expression(f, excl))
            got = set(labels[0][labels[0] >= 0].tolist())
            assert got == set(art.row_ids[mask].tolist()) - excl, f
    assert retriever.filter_mask(ItemFilter(ODD_CATEGORY)).sum() == 1
    catalog.close()


def test_a_second_load_replaces_the_collection_behind_the_alias(base, tmp_path):
    art = Artifact.load(base)
    cfg = milvus_cfg(tmp_path)
    first = load_into_milvus(art, cfg, progress=False)
    second = load_into_milvus(art, cfg, progress=False)
    third = load_into_milvus(art, cfg, progress=False)
    assert first["previous"] is None and second["previous"] == first["name"] != second["name"]
    assert third["dropped"] == [first["name"]]  # the one before is kept for services still reading it
    client = connect(cfg)
    assert sorted(client.list_collections()) == sorted([second["name"], third["name"]])
    assert client.describe_alias(cfg.collection)["collection_name"] == third["name"]
    assert client.get_collection_stats(third["name"])["row_count"] == art.num_items
    client.close()
    load_into_milvus(art, MilvusConfig(**{**cfg.to_dict(), "keep_previous": False}), progress=False)
    client = connect(cfg)
    assert len(client.list_collections()) == 1
    client.close()


def test_a_collection_of_another_version_or_none_is_refused(art_dir, tmp_path):
    cfg = milvus_cfg(tmp_path)
    art = Artifact.load(art_dir)
    with pytest.raises(ArtifactError, match="has no collection 'towerrec_items'.*python -m towerrec.artifact milvus"):
        MilvusCatalog.open(art, cfg)
    load_into_milvus(art, cfg, progress=False)
    MilvusCatalog.open(art, cfg).close()
    remove_items(art_dir, [art.items["item_id"].iloc[0]])  # a new version of the artifact
    changed = Artifact.load(art_dir)
    with pytest.raises(ArtifactError, match=f"version {changed.version}, but .* holds version {art.version}"):
        Retriever(changed, index={"backend": "milvus", "milvus": cfg})


def test_settings_are_checked_with_the_key_named(tmp_path):
    with pytest.raises(ValueError, match="index.milvus.collection must be"):
        MilvusConfig(collection="my-items")
    with pytest.raises(ValueError, match="unknown index.milvus option"):
        IndexConfig.from_any({"milvus": {"url": "x.db"}})
    with pytest.raises(ValueError, match="index.backend must be one of faiss, milvus"):
        IndexConfig.from_any({"backend": "qdrant"})
    with pytest.raises(ValueError, match="index.milvus.uri is not set"):
        connect(MilvusConfig())
    with pytest.raises(ValueError, match="must end in .db"):
        connect(MilvusConfig(uri=str(tmp_path / "catalog")))
    cfg = IndexConfig.from_any({"backend": "milvus", "milvus": {"uri": "a.db", "token": "root:Milvus"}})
    assert cfg.milvus.secret() == "root:Milvus" and "token" not in json.dumps(cfg.to_dict())


def test_cli_loads_an_artifact_and_reports_errors_in_one_line(base, tmp_path, capsys):
    db = tmp_path / "cli.db"
    for _ in range(2):  # idempotent: the second run replaces the first's collection
        assert main(["milvus", str(base), "--uri", str(db), "--index-type", "FLAT", "--no-progress"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["items"] == Artifact.load(base).num_items and summary["index_type"] == "FLAT"
    assert summary["previous"] is not None
    assert main(["milvus", str(base), "--uri", str(tmp_path / "catalog"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: index.milvus.uri must end in .db") and "\n" not in err
    client = connect(MilvusConfig(uri=str(db)))  # a collection of someone else's under the alias's name
    client.create_collection("plain", dimension=4)
    client.close()
    assert main(["milvus", str(base), "--uri", str(db), "--collection", "plain", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: Milvus at {db}: 'plain' is a collection, not an alias that towerrec loads; drop it or " \
                  "choose another index.milvus.collection"
