"""The artifact format: file names, the manifest and its reader, ArtifactError. What an artifact holds:

An artifact is one directory; serving needs nothing else (no training checkpoint, no pickle):

    manifest.json                 schema_version, dims, index factory + search params, checksums of every
                                  other file, data fingerprint, training config (secrets redacted), metrics,
                                  and a `history` of later add/remove operations
    index.faiss                   FAISS index over the L2-normalised product vectors, inner product, whose ids
                                  are the items' row ids (`index.shard{i}.faiss` instead when sharded)
    items.parquet                 row_id, item_id, title, brand, category, price (what serving shows), text
                                  (the product-tower input) and history_text (how the item reads in a history)
    item_embeddings.safetensors   embeddings (N, D) float32 and row_id (N,), rows aligned with items.parquet
    popularity.safetensors        counts (N,) training interactions, aligned with items.parquet
    text.json                     the TextConfig, so serving renders users exactly as training did
    user_tower/, item_tower/      model.safetensors (the tower's state dict), config.json (the encoder's HF
                                  config), the tokenizer files, tower.json (pooling, projection, max_length...)
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "item_embeddings.safetensors"
POPULARITY_FILE = "popularity.safetensors"
TEXT_FILE = "text.json"
USERS_FILE = "users.parquet"  # pseudonymized user id -> item ids interacted with, oldest first (optional)
TOWER_DIRS = {"user": "user_tower", "item": "item_tower"}
TOWER_WEIGHTS, TOWER_META = "model.safetensors", "tower.json"
ITEM_COLUMNS = ("row_id", "item_id", "title", "brand", "category", "price", "text", "history_text")


class ArtifactError(ValueError):
    """A missing, corrupt, incompatible or unsupported artifact operation; the message names the file."""


def shard_file(i: int) -> str:
    return f"index.shard{i}.faiss"



def index_files(manifest: dict) -> list[str]:
    """The index file names of a manifest: one, or one per shard."""
    shards = int(manifest["index"].get("shards", 1))
    return [shard_file(i) for i in range(shards)] if shards > 1 else [INDEX_FILE]


def read_json(path: Path):
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e


def read_manifest(path: Path) -> dict:
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise ArtifactError(f"{f}: missing; {path} is not a towerrec artifact (or an incomplete one)")
    try:
        manifest = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f}: not valid JSON ({e})") from e
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{f}: schema_version {version!r} is not a known artifact schema version")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{f}: schema_version {version} is newer than this towerrec supports "
                            f"({SCHEMA_VERSION}); upgrade towerrec to load it")
    for key in ("dim", "num_items", "files", "index"):
        if key not in manifest:
            raise ArtifactError(f"{f}: required field {key!r} is missing")
    for rel in manifest["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactError(f"{f}: file entry {rel!r} points outside the artifact")
    return manifest

