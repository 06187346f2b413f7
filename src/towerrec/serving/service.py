"""What the service does, without HTTP: recommend, similar items, product copy, item lookup, reload.

A recommendation, step by step:
1. The user: a known user's stored history (`Artifact.user_history`), then the request's history appended
   (oldest first), then the optional query as the newest "item" (`Retriever.embed_histories`: in the user
   text of a text two-tower artifact, the newest element of a sequence artifact's window). History ids the
   artifact does not know (e.g. removed products) are ignored and listed in `notes`. A query on an artifact
   that embeds no free text (an id-only sequence model) is refused, 422 naming `query`.
2. Filters become one `ItemFilter` (`retrieval.filters.CatalogFilters`, which the batch job shares: category
   prefix, price range; unknown prices are left out when a bound is given), which the Retriever applies as a
   mask over table positions (FAISS) or as a Milvus expression (index.backend=milvus). Seen items are excluded
   by row id.
3. No usable history and no query: the most popular products that pass the filters (`served_by=popularity`).
   Otherwise the user vector (cached under `ServiceState.user_key`, which fully determines it: the exact user
   text, or a sequence model's newest max_len positions and the query; on a miss computed through
   `Retriever.embed_histories` in a batch shared with concurrent requests, `batching.EmbeddingBatcher`) is
   searched with
   `Retriever.search(..., item_filter=...)`: exactly k results whenever k products pass, exact scoring for
   selective filters (FAISS) and as the fallback of approximate indexes. A vector database that fails or
   cannot be reached is a 503 naming it.
4. `rerank`: the top `candidates` (the artifact's product dicts) go to the LM reranker under its time budget
   (`BudgetedStage`); it answers with an order over the candidates' positions and their scores
   (`RerankResult`), checked to be a permutation of them (`rerank.apply`, which the batch job shares). If it is
   late, busy, failing, disabled or answers anything else the retrieval order is returned, `served_by=degraded`,
   with the reason.
5. `explain`: grounded explanations for the first `max_items` items under their own budget; an explanation
   whose text failed the faithfulness check is returned with `text=None`, never as fact.

Errors are typed (`NotFound` -> 404, `NotReady` / `Unavailable` -> 503, `InvalidField` -> 422) and the HTTP
layer maps them; anything else is a bug (500).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import anyio.to_thread
import numpy as np

from towerrec.artifact.items import ItemFilter
from towerrec.artifact.milvus import VectorStoreError
from towerrec.rerank.apply import lm_history, rank_candidates, reordered, rerank_candidates
from towerrec.serving.batching import EmbeddingBatcher
from towerrec.serving.components import BudgetedStage, LMComponents, StageResult, resolve
from towerrec.serving.config import ServeConfig
from towerrec.serving.metrics import Metrics
from towerrec.serving.state import ServiceState, StateHolder, release_memory

log = logging.getLogger(__name__)

MAX_NOTED_IDS = 5


class NotFound(LookupError):
    """An unknown user or item id (404)."""


class NotReady(RuntimeError):
    """No artifact loaded yet, or the configured models are still loading (503)."""


class Unavailable(RuntimeError):
    """A stage the request needs is disabled, busy or over its budget (503)."""


class InvalidField(ValueError):
    """A request value that passed the schema but cannot be served (422 naming the field)."""

    def __init__(self, loc: Sequence[str], msg: str):
        super().__init__(msg)
        self.loc, self.msg = tuple(loc), msg


class RecommendationService:
    """The service's logic over a StateHolder, with optional LM components."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics | None = None, components: LMComponents | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.holder = StateHolder(cfg.artifacts, cfg.user_cache_size, prepare=self._prepare,
                                  precompute_users=cfg.precompute_user_vectors, development=cfg.development,
                                  index=cfg.index)
        self.components = components
        self.component_status = self._initial_component_status(components)
        self.batcher = None
        if cfg.embed_batch_size > 1:
            self.batcher = EmbeddingBatcher(cfg.embed_batch_size, cfg.embed_batch_wait_ms,
                                            on_batch=self.metrics.embed_batch.observe)
        self.release_delay_s = 1.0  # after a reload swap, how long until the freed heap is handed back (release_memory)
        self.rerank_stage = BudgetedStage("rerank", cfg.rerank.max_concurrent)
        self.explain_stage = BudgetedStage("explain", cfg.explain.max_concurrent)

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def _initial_component_status(self, components: LMComponents | None) -> dict[str, str]:
        status = {}
        for name, stage in (("reranker", self.cfg.rerank), ("explainer", self.cfg.explain)):
            if not stage.enabled:
                status[name] = "disabled"
            elif components is not None:
                present = components.reranker if name == "reranker" else components.make_explainer
                status[name] = "loaded" if present is not None else "failed: not provided"
            else:
                status[name] = "loading"
        return status

    def load(self) -> None:
        """Load the LM components (when configured and not given: the first state's explainer needs them), then
        the artifact. Raises on failure."""
        cfg = self.cfg
        if self.components is None and cfg.lm_needed:
            try:
                self.components = resolve(cfg.lm_factory)(cfg)
            except Exception as e:
                for name, stage in (("reranker", cfg.rerank), ("explainer", cfg.explain)):
                    if stage.enabled:
                        self.component_status[name] = f"failed: {type(e).__name__}: {e}"
                self.metrics.ready.set(0)
                raise
            self.component_status = self._initial_component_status(self.components)
        state = self.holder.load_initial()
        self._adopt(state)

    def start(self, on_failure: Callable[[BaseException], None] | None = None) -> threading.Thread:
        """Load in a background thread (the server answers /healthz and /readyz meanwhile)."""

        def run():
            try:
                self.load()
            except BaseException as e:
                log.exception("loading failed: %s", e)
                if self.holder.error is None:
                    self.holder.error = f"{type(e).__name__}: {e}"
                if on_failure is not None:
                    on_failure(e)

        thread = threading.Thread(target=run, name="towerrec-load", daemon=True)
        thread.start()
        return thread

    def _prepare(self, state: ServiceState) -> None:
        """Build a loaded state's explainer (its vocabulary is the artifact's catalog) before it is served."""
        if self.components is not None and self.components.make_explainer is not None:
            state.explainer = self.components.make_explainer(state.artifact.items)

    def _adopt(self, state: ServiceState) -> None:
        self.metrics.set_artifact(state.version, state.num_items)
        self.metrics.ready.set(1 if self.ready else 0)

    @property
    def ready(self) -> bool:
        return self.holder.current is not None and all(
            s in ("loaded", "disabled") for s in self.component_status.values())

    def readiness(self) -> dict:
        state = self.holder.current
        error = self.holder.error or next((s for s in self.component_status.values() if s.startswith("failed")),
                                          None)
        return {"ready": self.ready, "artifact": state.info() if state else None,
                "components": dict(self.component_status), "error": error, "pid": os.getpid()}

    def reload(self, path: str | None = None) -> dict:
        """Load `path` (default: the served directory) fully, then swap it in; raises ReloadInProgress, or the
        load error (the served artifact stays)."""
        previous = self.holder.current
        start = time.perf_counter()
        try:
            state = self.holder.reload(path, blocking=False)
        except Exception:
            self.metrics.reloads.labels(outcome="failed").inc()
            raise
        self._adopt(state)
        self.metrics.reloads.labels(outcome="ok").inc()
        seconds = time.perf_counter() - start
        old = previous.version if previous else None
        del previous
        # once the replaced state's requests in flight are done (and it is freed), its heap goes back to the OS
        timer = threading.Timer(self.release_delay_s, release_memory)
        timer.daemon = True
        timer.start()
        log.info("reloaded: %s -> %s in %.1f s", old, state.version, seconds)
        return {"previous": old, "artifact": state.info(), "seconds": seconds}

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.rerank_stage.shutdown()
        self.explain_stage.shutdown()

    def _state(self) -> ServiceState:
        state = self.holder.current
        if state is None or not self.ready:
            raise NotReady(self.holder.error and f"the service failed to load: {self.holder.error}"
                           or "the service is still loading its artifact and models")
        return state

    # ---- users and filters -------------------------------------------------------------------------------
    def _history(self, state: ServiceState, user_id: str | None, history: Sequence[str],
                 notes: list[str]) -> np.ndarray:
        """Table positions of the user's history, oldest first (stored history, then the request's)."""
        ids: list[str] = []
        if user_id is not None:
            stored = state.artifact.user_history(user_id)
            if stored is None:
                raise NotFound(f"unknown user id {user_id!r}: not a user of the served artifact "
                               f"(send a history of item ids instead)")
            ids.extend(stored)
        ids.extend(history)
        if not ids:
            return np.zeros(0, dtype=np.int64)
        pos = state.table.positions_of_items(ids)
        unknown = [i for i, p in zip(ids, pos) if p < 0]
        if unknown:
            shown = ", ".join(repr(u) for u in list(dict.fromkeys(unknown))[:MAX_NOTED_IDS])
            notes.append(f"{len(unknown)} history item id(s) unknown to the artifact were ignored: {shown}")
        return pos[pos >= 0].astype(np.int64)

    def _cached_vector(self, state: ServiceState, positions: np.ndarray, query: str | None):
        """(cache key, the cached (D,) user vector or None on a miss)."""
        if query is not None and not state.has_text_path:  # refused before it can fail a shared batch
            raise InvalidField(("body", "query"), "the served artifact's model is id-only (model.text=false), so "
                                                  "it cannot embed a free-text query: send a history or a user "
                                                  "id without one")
        key = state.user_key(positions, query)
        vec = state.user_vectors.get(key)
        self.metrics.user_cache.labels(result="miss" if vec is None else "hit").inc()
        return key, vec

    def _user_vector(self, state: ServiceState, positions: np.ndarray, query: str | None) -> np.ndarray:
        key, vec = self._cached_vector(state, positions, query)
        if vec is None:
            with self.metrics.time_stage("embed"):  # waiting for the batch included
                if self.batcher is not None:
                    vec = self.batcher.embed(state.retriever, positions, query, key=key)  # (D,)
                else:
                    vec = state.retriever.embed_histories([positions], [query])[0]  # (D,)
            state.user_vectors.put(key, vec)
        return vec

    async def _user_vector_async(self, state: ServiceState, positions: np.ndarray, query: str | None) -> np.ndarray:
        """`_user_vector` for the event loop: a miss waits for its batch without holding a thread."""
        key, vec = self._cached_vector(state, positions, query)
        if vec is None:
            with self.metrics.time_stage("embed"):
                if self.batcher is not None:
                    vec = await asyncio.wrap_future(self.batcher.submit(state.retriever, positions, query, key=key))
                else:
                    vec = await anyio.to_thread.run_sync(
                        lambda: state.retriever.embed_histories([positions], [query])[0])  # (D,)
            state.user_vectors.put(key, vec)
        return vec

    # ---- search ------------------------------------------------------------------------------------------
    def _search(self, state: ServiceState, vec: np.ndarray, k: int, exclude_rows: set[int],
                item_filter: ItemFilter | None) -> list[tuple[int, float]]:
        """Top-k (table position, cosine) passing the filter, leaving out `exclude_rows`, best first."""
        with self.metrics.time_stage("search"):
            try:
                hits = state.retriever.search(vec[None], k, [exclude_rows], item_filter=item_filter)[0]
            except VectorStoreError as e:
                raise Unavailable(str(e)) from e
            positions = state.table.positions_of_rows([row for row, _ in hits])
        return [(p, score) for p, (_, score) in zip(positions.tolist(), hits)]

    def _items(self, state: ServiceState, hits: list[tuple[int, float]], retrieval: bool) -> list[dict]:
        return [{**state.table.products[p], "score": s, "retrieval_score": s if retrieval else None,
                 "lm_score": None, "explanation": None, "_position": p} for p, s in hits]

    def _lm_history(self, state: ServiceState, positions: np.ndarray) -> list[dict]:
        return lm_history(state.table, positions, state.artifact.text.user_max_items)

    # ---- endpoints ---------------------------------------------------------------------------------------
    def recommend(self, req) -> dict:
        state, positions, query, notes = self._recommend_inputs(req)
        vec = None if len(positions) == 0 and query is None else self._user_vector(state, positions, query)
        return self._recommend(state, req, positions, query, notes, vec)

    def on_event_loop(self, req) -> bool:
        """Whether `recommend_async` serves `req`: everything but rerank and explain (LM stages that block under
        their budgets) and searches of a Milvus collection (network calls)."""
        return not (req.rerank or req.explain) and self.cfg.index.backend == "faiss"

    async def recommend_async(self, req) -> dict:
        """`recommend` on the event loop, for the requests of `on_event_loop`: the cheap work runs there, one
        request after another, and a user-vector miss awaits its shared batch."""
        if not self.on_event_loop(req):
            raise ValueError("recommend_async serves requests without rerank and explain, on the FAISS backend")
        state, positions, query, notes = self._recommend_inputs(req)
        vec = None if len(positions) == 0 and query is None else await self._user_vector_async(state, positions,
                                                                                                query)
        return self._recommend(state, req, positions, query, notes, vec)

    def _recommend_inputs(self, req):
        state = self._state()
        notes: list[str] = []
        positions = self._history(state, req.user_id, req.history, notes)
        query = req.query if req.query and req.query.strip() else None
        return state, positions, query, notes

    def _recommend(self, state: ServiceState, req, positions: np.ndarray, query: str | None, notes: list[str],
                   vec: np.ndarray | None) -> dict:
        """The answer, given the user vector (None: no history and no query, the popularity answer)."""
        item_filter = state.filters.item_filter(req.filters, notes)
        exclude_pos = positions if req.filters.exclude_seen else np.zeros(0, dtype=np.int64)
        degraded = False
        if vec is None:
            served_by = "popularity"
            items = self._items(state, state.filters.popular(req.k, exclude_pos, item_filter), retrieval=False)
            if req.rerank:
                notes.append("rerank skipped: no history and no query to rerank for (popularity)")
        else:
            served_by = "retrieval"
            fetch = max(req.k, self._rerank_candidates()) if req.rerank else req.k
            exclude_rows = set(state.table.row_ids[exclude_pos].tolist())
            items = self._items(state, self._search(state, vec, fetch, exclude_rows, item_filter), retrieval=True)
            if req.rerank:
                reranked, reason = self._rerank(state, positions, items, query)
                if reranked is not None:
                    items, served_by = reranked, "rerank"
                else:
                    served_by, degraded = "degraded", True
                    notes.append(_fallback_note("rerank", reason, self.cfg.rerank.budget_ms))
            items = items[: req.k]
        if req.explain and items:
            reason = self._explain(state, positions, items)
            if reason is not None:
                degraded = True
                notes.append(_fallback_note("explain", reason, self.cfg.explain.budget_ms))
        self.metrics.served.labels(served_by=served_by).inc()
        for item in items:
            item.pop("_position", None)
        return {"items": items, "served_by": served_by, "degraded": degraded, "notes": notes,
                "artifact": state.version}

    def _rerank(self, state: ServiceState, positions: np.ndarray, items: list[dict],
                query: str | None) -> tuple[list[dict] | None, str | None]:
        """(items in the LM's order with its scores, None) or (None, why the retrieval order stands)."""
        reranker = self.components.reranker if self.components and self.cfg.rerank.enabled else None
        if reranker is None:
            self.metrics.fallbacks.labels(stage="rerank", reason="disabled").inc()
            return None, "disabled"
        if not items:
            return items, None
        max_history = state.artifact.text.user_max_items
        result = self.rerank_stage.run(
            lambda: rank_candidates(reranker, state.table, positions, items, max_history, query),
            self.cfg.rerank.budget_ms / 1000)
        self._record_stage("rerank", result)
        if not result.ok:
            return None, result.reason
        try:
            return reordered(items, result.value), None
        except (AttributeError, TypeError, ValueError) as e:
            log.warning("the reranker's answer is not a ranking of its %d candidates (%s): rerank ignored",
                        len(items), e)
            self.metrics.fallbacks.labels(stage="rerank", reason="error").inc()
            return None, "error"

    def _rerank_candidates(self) -> int:
        """Retrieval candidates handed to the LM: service.rerank.candidates, else the reranker's top_n."""
        return rerank_candidates(self.components.reranker if self.components else None, self.cfg.rerank.candidates)

    def _explain(self, state: ServiceState, positions: np.ndarray, items: list[dict]) -> str | None:
        """Attach explanations to the first `max_items` items; the reason when they could not be made."""
        explainer = state.explainer
        if explainer is None:
            self.metrics.fallbacks.labels(stage="explain", reason="disabled").inc()
            return "disabled"
        targets = items[: self.cfg.explain.max_items]
        history = self._lm_history(state, positions)
        shown = [state.table.products[it["_position"]] for it in targets]

        def run():
            if hasattr(explainer, "explain_many"):
                return explainer.explain_many(history, shown)
            return [explainer.explain(history, s) for s in shown]

        result = self.explain_stage.run(run, self.cfg.explain.budget_ms / 1000)
        self._record_stage("explain", result)
        if not result.ok:
            return result.reason
        for item, e in zip(targets, result.value):
            item["explanation"] = explanation_dict(e)
        return None

    def _record_stage(self, stage: str, result: StageResult) -> None:
        if result.ok:
            self.metrics.stage_latency.labels(stage=stage).observe(result.seconds)
        else:
            self.metrics.fallbacks.labels(stage=stage, reason=result.reason).inc()

    def similar_items(self, req) -> dict:
        state = self._state()
        pos = _position(state, req.item_id)
        notes: list[str] = []
        item_filter = state.filters.item_filter(req.filters, notes)
        vec = state.artifact.embeddings[pos]  # (D,) the product tower's vector: no user tower involved
        hits = self._search(state, vec, req.k, {int(state.table.row_ids[pos])}, item_filter)
        items = self._items(state, hits, retrieval=True)
        for item in items:
            item.pop("_position", None)
        return {"item_id": req.item_id, "items": items, "notes": notes, "artifact": state.version}

    def describe(self, req) -> dict:
        state = self._state()
        pos = _position(state, req.item_id)
        positions = self._history(state, req.user_id, req.history, [])
        explainer = state.explainer
        if explainer is None:
            raise Unavailable("product copy needs the LM: start the service with service.explain.enabled=true")
        history = self._lm_history(state, positions) if len(positions) else []
        item = state.table.products[pos]
        result = self.explain_stage.run(lambda: explainer.describe(history, item),
                                        self.cfg.explain.describe_budget_ms / 1000, wait_for_slot=True)
        self._record_stage("describe", result)
        if not result.ok:
            raise Unavailable(_fallback_note("describe", result.reason, self.cfg.explain.describe_budget_ms))
        e = explanation_dict(result.value)
        return {"item_id": req.item_id, "text": e["text"], "grounded": e["grounded"], "refused": e["text"] is None,
                "attempts": e["attempts"], "artifact": state.version}

    def item(self, item_id: str) -> dict:
        state = self._state()
        pos = _position(state, item_id)
        return {**state.table.products[pos], "popularity": int(state.popularity[pos]), "text": state.texts[pos],
                "artifact": state.version}


def _position(state: ServiceState, item_id: str) -> int:
    """Table position of an item id of the served artifact; NotFound if it has none."""
    pos = state.position(item_id)
    if pos < 0:
        raise NotFound(f"unknown item id {item_id!r}: not in the served artifact")
    return pos


def explanation_dict(e) -> dict:
    """An Explanation as the API shows it: its text only when it passed the faithfulness check."""
    grounded = bool(getattr(e, "grounded", False))
    text = getattr(e, "text", None)
    return {"text": text if grounded and text else None, "grounded": grounded,
            "attempts": int(getattr(e, "attempts", 0) or 0)}


def _fallback_note(stage: str, reason: str | None, budget_ms: float) -> str:
    why = {"timeout": f"it exceeded its {budget_ms:g} ms budget", "busy": "the LM was busy with other requests",
           "error": "it failed (see the service log)", "disabled": "the LM is not enabled on this service"}
    consequence = {"rerank": "retrieval order returned", "explain": "items returned without explanations",
                   "describe": "no product copy"}
    return f"{stage} skipped: {why.get(reason, reason)}; {consequence[stage]}"
