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
    users.parquet                 known users' item ids (optional)

The manifest's `model.kind` says which towers these are (absent: `two_tower`, artifacts exported before it):

    two_tower   the text towers above: a user is their history rendered as text (text.json) through the user
                tower; a product is its text through the product tower (tower.json has no "kind")
    sequence    the sequence towers (towerrec.model.sequence). item_embeddings.safetensors holds the product
                vectors the user tower reads for history items, so a history is embedded by lookups and the
                small transformer alone. user_tower/: tower.json {"kind": "sequence", dim, max_len, layers,
                heads, ff_mult, dropout} and model.safetensors (no encoder, no tokenizer). item_tower/: what
                embeds a product or a free-text query from text: tower.json {"kind": "sequence_items", text,
                dim, pooling, max_length, adapter, ...}, and, when `model.text` is true, model.safetensors (the
                text encoder, frozen or fine-tuned, + the adapter [and mlp]), config.json and the tokenizer; an
                id-only model (`model.text` false) has no text path, so products cannot be added and queries not
                embedded

Every file is listed in manifest.json with its sha256 and size; a file present but not listed is refused, so
nothing is ever read unverified. The one exception is rerank/, which `stage=rerank` writes into an exported
artifact later and towerrec.rerank reads with its own loader (its files are verified when they are listed).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "item_embeddings.safetensors"
POPULARITY_FILE = "popularity.safetensors"
TEXT_FILE = "text.json"
USERS_FILE = "users.parquet"  # pseudonymized user id -> item ids interacted with, oldest first (optional)
USER_COLUMNS = ("user_id", "items")
TOWER_DIRS = {"user": "user_tower", "item": "item_tower"}
TOWER_WEIGHTS, TOWER_META, TOWER_CONFIG = "model.safetensors", "tower.json", "config.json"
ITEM_COLUMNS = ("row_id", "item_id", "title", "brand", "category", "price", "text", "history_text")
TWO_TOWER, SEQUENCE = "two_tower", "sequence"  # manifest model.kind
MODEL_KINDS = (TWO_TOWER, SEQUENCE)
SEQUENCE_USER, SEQUENCE_ITEMS = "sequence", "sequence_items"  # tower.json kind of a sequence artifact's towers


class ArtifactError(ValueError):
    """A missing, corrupt, incompatible or unsupported artifact operation; the message names the file."""


RERANK_DIR = "rerank"  # written later by `stage=rerank`, read by its own loader: may hold unlisted files
REASON_CHARS = 200


def shard_file(i: int) -> str:
    return f"index.shard{i}.faiss"


def index_files(manifest: dict) -> list[str]:
    """The index file names of a manifest: one, or one per shard."""
    shards = int(manifest["index"].get("shards", 1))
    return [shard_file(i) for i in range(shards)] if shards > 1 else [INDEX_FILE]


def reason(e: BaseException) -> str:
    """An exception as a short one-line reason (library messages can span lines and pages)."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)  # FAISS: where in its C++ source, then the reason
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


@contextlib.contextmanager
def reading(f: Path, what: str):
    """Any error while reading `f` becomes an ArtifactError "{f}: {what} ({reason})"; ArtifactErrors pass."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as e:  # library read errors have no common base (RuntimeError, SafetensorError, ...)
        raise ArtifactError(f"{f}: {what} ({reason(e)})") from e


def read_json(path: Path, missing: str = "missing"):
    with reading(path, "cannot be read"):
        if not path.is_file():
            raise ArtifactError(f"{path}: {missing}")
        text = path.read_bytes()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({reason(e)})") from e


class Fields:
    """Type checks of a JSON object's fields, each failure one sentence naming the file and the field."""

    def __init__(self, f: Path, obj: dict, prefix: str = ""):
        self.f, self.obj, self.prefix = f, obj, prefix

    def fail(self, key: str, rule: str):
        value = repr(self.obj[key])
        value = value if len(value) <= 60 else value[:57] + "..."
        raise ArtifactError(f"{self.f}: field {self.prefix + key!r} must be {rule}, got {value}")

    def has(self, key: str, required: bool) -> bool:
        if key in self.obj:
            return True
        if required:
            raise ArtifactError(f"{self.f}: required field {self.prefix + key!r} is missing")
        return False

    def int(self, key: str, minimum: int, required: bool = True) -> None:
        if self.has(key, required):
            v = self.obj[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                self.fail(key, "a positive integer" if minimum == 1 else "a non-negative integer")

    def type(self, key: str, types: type | tuple, rule: str, required: bool = True) -> None:
        """obj[key] is one of `types` (a bool only where bool is one of them)."""
        types = types if isinstance(types, tuple) else (types,)
        if self.has(key, required):
            v = self.obj[key]
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                self.fail(key, rule)

    def equal(self, key: str, expected: str | bool) -> None:
        v = self.obj[key] if self.has(key, True) else None
        if type(v) is not type(expected) or v != expected:
            self.fail(key, "true" if expected is True else repr(expected))


def _check_files(f: Path, files: dict) -> None:
    for rel, entry in files.items():
        p = Path(rel)
        if not rel or p.is_absolute() or ".." in p.parts:
            raise ArtifactError(f"{f}: file entry {rel!r} points outside the artifact")
        if rel == MANIFEST:
            raise ArtifactError(f"{f}: files entry {rel!r}: the manifest cannot list itself")
        prefix = f"files.{rel}."
        if not isinstance(entry, dict):
            raise ArtifactError(f"{f}: field {prefix[:-1]!r} must be a mapping {{sha256, bytes}}")
        fields = Fields(f, entry, prefix)
        if fields.has("sha256", True) and not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"])):
            fields.fail("sha256", "64 lower-case hex digits")
        fields.int("bytes", 0)


def _check_index(f: Path, index: dict) -> None:
    fields = Fields(f, index, "index.")
    if fields.has("factory", True) and not (isinstance(index["factory"], str) and index["factory"]):
        fields.fail("factory", "a non-empty string")
    fields.int("shards", 1, required=False)
    fields.type("search", dict, "a mapping", required=False)
    search = Fields(f, index.get("search") or {}, "index.search.")
    for name in search.obj:
        search.type(name, (int, float), "a number")
    fields.type("config", dict, "a mapping", required=False)


def model_kind(manifest: dict) -> str:
    """The manifest's model kind (`two_tower` for artifacts exported before it was recorded)."""
    return (manifest.get("model") or {}).get("kind", TWO_TOWER)


def has_text_path(manifest: dict) -> bool:
    """Whether products and free text can be embedded from text (false only for id-only sequence models)."""
    return model_kind(manifest) != SEQUENCE or bool(manifest["model"]["text"])


def _check_model(f: Path, manifest: dict) -> None:
    fields = Fields(f, manifest)
    if not fields.has("model", False):
        return
    fields.type("model", dict, "a mapping {kind, ...}")
    model = Fields(f, manifest["model"], "model.")
    model.type("kind", str, f"one of {', '.join(MODEL_KINDS)}")
    if manifest["model"]["kind"] not in MODEL_KINDS:
        model.fail("kind", f"one of {', '.join(MODEL_KINDS)}")
    if manifest["model"]["kind"] == SEQUENCE:
        model.type("text", bool, "true or false")
        model.type("item_ids", bool, "true or false", required=False)
        model.int("max_len", 1, required=False)


def read_manifest(path: Path) -> dict:
    """manifest.json of the artifact at `path`, with every field that loading and serving rely on checked."""
    f = Path(path) / MANIFEST
    manifest = read_json(f, f"missing; {path} is not a towerrec artifact (or an incomplete one)")
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{f}: must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{f}: schema_version {version!r} is not a known artifact schema version")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{f}: schema_version {version} is newer than this towerrec supports "
                            f"({SCHEMA_VERSION}); upgrade towerrec to load it")
    fields = Fields(f, manifest)
    fields.int("dim", 1)
    fields.int("num_items", 0)
    fields.int("next_row_id", 0, required=False)
    fields.equal("metric", "ip")
    fields.equal("normalized", True)
    fields.type("files", dict, "a mapping of relative path -> {sha256, bytes}")
    _check_files(f, manifest["files"])
    fields.type("index", dict, "a mapping {factory, shards, search}")
    _check_index(f, manifest["index"])
    for key in ("data", "encoder", "max_length", "metrics", "train_config"):
        fields.type(key, dict, "a mapping", required=False)
    data = Fields(f, manifest.get("data") or {}, "data.")
    data.type("fingerprint", (str, type(None)), "a string", required=False)
    data.type("development_key", (bool, type(None)), "true, false or null", required=False)  # serving refuses true
    _check_model(f, manifest)
    fields.type("history", list, "a list", required=False)
    fields.type("created_at", str, "a string", required=False)
    return manifest
