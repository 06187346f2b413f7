"""Request and response models of the HTTP API (pydantic); FastAPI builds the OpenAPI schema from them.

Request models carry the configured limits (k, history length, text length) as schema constraints, so they
are built per service by `request_models(cfg)`: an out-of-range value is a 422 naming the field, and the
OpenAPI schema states the same bounds a client (or a fuzzer) sees enforced. Unknown fields are refused (422)
rather than ignored, so a misspelt option ("exclude_seem") cannot silently do nothing, and types are strict
(`"k": "5"` or `"price_max": false` is a 422, as the schema says, not silently coerced). Response models are
fixed and module-level.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from towerrec.serving.config import ServeConfig

ServedBy = Literal["retrieval", "rerank", "popularity", "degraded"]


# ------------------------------------------------------------------------------------------ responses


class ItemInfo(BaseModel):
    """What the catalog shows of a product."""

    item_id: str
    title: str
    brand: str | None = None
    category: str | None = Field(None, description="category path, levels joined by ' > '")
    price: float | None = Field(None, description="None when unknown")


class Explanation(BaseModel):
    text: str | None = Field(description="why this product suits the shopper; None when no grounded text could "
                                         "be generated (ungrounded output is refused, never shown)")
    grounded: bool = Field(description="the text names only facts found in the product's fields or the history")
    attempts: int = Field(ge=0, description="generations tried (flagged ones are regenerated)")


class ScoredItem(ItemInfo):
    score: float = Field(description="the ranking score: fused LM + retrieval score when reranked (retrieval "
                                     "score for items past the LM's top_n), cosine similarity for retrieval, "
                                     "training interaction count for popularity")
    retrieval_score: float | None = Field(None, description="cosine similarity of user and product vectors")
    lm_score: float | None = Field(None, description="the reranker's score, when reranked")
    explanation: Explanation | None = None


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    served_by: ServedBy = Field(description="retrieval: the artifact's retrieval order; rerank: LM-reranked; "
                                            "popularity: cold start (no history, no query); degraded: rerank was "
                                            "asked for but did not run in time, retrieval order returned")
    degraded: bool = Field(description="a requested stage (rerank, explanations) was skipped: see notes")
    notes: list[str] = Field(default_factory=list, description="why a stage was skipped, ignored history items")
    artifact: str = Field(description="version (manifest hash) of the artifact that served the request")


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    notes: list[str] = Field(default_factory=list)
    artifact: str


class DescribeResponse(BaseModel):
    item_id: str
    text: str | None = Field(description="personalized product copy; None when refused")
    grounded: bool
    refused: bool = Field(description="no generation passed the faithfulness check: nothing is shown")
    attempts: int = Field(ge=0)
    artifact: str


class ItemResponse(ItemInfo):
    popularity: int = Field(ge=0, description="training interactions with this product")
    text: str = Field(description="the product tower's input text")
    artifact: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ArtifactInfo(BaseModel):
    path: str
    version: str
    model: str = Field(description="the model kind: two_tower (text towers) or sequence (a transformer over the "
                                   "history's product vectors)")
    text: bool = Field(description="whether the artifact embeds free text: false for an id-only sequence model, "
                                   "where a request with a query is refused (422)")
    num_items: int
    dim: int
    index: str
    search: str = Field("faiss", description="where searches go: faiss (the artifact's index) or "
                                             "'milvus URI/COLLECTION' (index.backend=milvus)")
    known_users: int
    loaded_at: str


class ReadyResponse(BaseModel):
    ready: bool
    artifact: ArtifactInfo | None = None
    components: dict[str, str] = Field(default_factory=dict, description="LM components: loaded | disabled | "
                                                                         "loading | failed: ...")
    error: str | None = None
    pid: int = Field(description="the server process that answered (one of service.workers)")


class ReloadResponse(BaseModel):
    previous: str | None = Field(description="version served before the swap")
    artifact: ArtifactInfo
    seconds: float
    workers: int = Field(1, description="server processes the reload reaches: this one swapped the artifact in; "
                                        "with service.workers > 1, a rolling restart of every worker follows")


class ErrorResponse(BaseModel):
    detail: str


# ------------------------------------------------------------------------------------------ requests


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: str | None = Field(None, max_length=4096, description="artifact directory; default: the one served")


@dataclasses.dataclass(frozen=True)
class RequestModels:
    Filters: type[BaseModel]
    RecommendRequest: type[BaseModel]
    SimilarItemsRequest: type[BaseModel]
    DescribeRequest: type[BaseModel]


def _whole_number(value):
    """5.0 -> 5: JSON Schema counts a number with no fractional part as an integer; strict mode would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def request_models(cfg: ServeConfig) -> RequestModels:
    """Request models bounded by the service's limits."""
    WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
    Id = Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_id_chars)]
    Text = Annotated[str, StringConstraints(max_length=cfg.max_text_chars)]
    Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]

    class Filters(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        exclude_seen: bool = Field(True, description="leave out products already in the history")
        category: Text | None = Field(None, description="keep products under this category path "
                                                        "(e.g. 'Home > Kitchen' matches 'Home > Kitchen > Coffee')")
        price_min: Price | None = Field(None, description="keep products priced at least this (unknown prices "
                                                          "are left out when a price bound is given)")
        price_max: Price | None = Field(None, description="keep products priced at most this (below price_min: "
                                                          "nothing matches, said in notes)")

    class RecommendRequest(BaseModel):
        """A known user, and/or a history of item ids (oldest first), and/or a free-text query."""

        model_config = ConfigDict(extra="forbid", strict=True)
        user_id: Id | None = Field(None, description="pseudonymized id of a user the artifact knows; their "
                                                     "stored history comes first, `history` is appended to it")
        history: list[Id] = Field(default_factory=list, max_length=cfg.max_history,
                                  description="item ids, oldest first; ids unknown to the artifact are ignored "
                                              "(listed in notes)")
        query: Text | None = Field(None, description="free text combined with the history (personalized "
                                                     "search); 422 on an artifact that embeds no free text (an "
                                                     "id-only sequence model: /readyz artifact.text is false)")
        k: WholeNumber = Field(10, ge=1, le=cfg.max_k, description="products to return")
        filters: Filters = Field(default_factory=Filters)
        rerank: bool = Field(False, description="rerank retrieval candidates with the LM (within its time budget)")
        explain: bool = Field(False, description="grounded explanations for the top items (within a time budget)")

    class SimilarItemsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        item_id: Id
        k: WholeNumber = Field(10, ge=1, le=cfg.max_k, description="products to return")
        filters: Filters = Field(default_factory=Filters, description="category and price; exclude_seen has no "
                                                                      "effect (the product itself is always left out)")

    class DescribeRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        item_id: Id
        user_id: Id | None = None
        history: list[Id] = Field(default_factory=list, max_length=cfg.max_history)

    return RequestModels(Filters, RecommendRequest, SimilarItemsRequest, DescribeRequest)
