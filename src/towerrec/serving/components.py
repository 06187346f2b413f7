"""Optional LM components of the service and the time budget they run under.

`LMComponents` is what the service needs from the rerank package: a reranker and a way to build an explainer
for an artifact's catalog (`make_explainer(items_table)`, because the faithfulness check's vocabulary comes
from the items served; a reload builds a new one). Either may be None.

The reranker's protocol: `.rank(history, candidates, query=None)`, history and candidates product dicts
(oldest first / retrieval order), each candidate with its retrieval `score`, returns an object like
`towerrec.rerank.reranker.RerankResult`: `order`, (C,) integer indices into the candidates, best first, and
`lm_score` / `fused_score`, (C,) floats in candidate order, NaN where not scored. The service takes its items
in `order`; one that is not a permutation of range(C), or scores of another shape, is refused (the retrieval
order is served, flagged degraded), since the component is pluggable.

The factory named by `service.lm_factory` (called with the ServeConfig) builds them; `build_lm_components` is
the default, and tests pass their own objects (e.g. a deliberately slow reranker) straight to the service. The
LM is loaded once per process: a reload swaps the retrieval artifact and rebuilds the explainer's vocabulary,
not the LM.

`BudgetedStage` runs one LM call in a small pool of worker threads and waits for it at most `budget` seconds.
On timeout the request goes on without the stage, and the call stops too: it runs under the same deadline
(`towerrec.rerank.deadline`; `build_lm_components` has the LM check it before each decoder layer), so a late
call frees its slot and the cores within about one layer's time instead of finishing for nobody. At most
`max_concurrent` calls run at once; a request that finds every slot taken skips the stage at once ("busy")
instead of queueing behind calls that would blow its budget anyway (a request with no fallback, product copy,
may wait for a slot within its budget instead). This keeps an overloaded LM from taking
the retrieval path down with it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from towerrec.rerank.apply import find_rerank_dir
from towerrec.rerank.deadline import DeadlineExceeded, deadline, watch
from towerrec.serving.config import ServeConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LMComponents:
    reranker: Any | None = None  # .rank(history: list[dict], candidates: list[dict], query=None) -> RerankResult
    make_explainer: Callable[[Any], Any] | None = None  # items table -> .explain / .explain_many / .describe


@dataclasses.dataclass(frozen=True)
class StageResult:
    value: Any = None
    reason: str | None = None  # None: ran in time; else timeout | busy | error
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class BudgetedStage:
    """Run calls of one LM stage with a deadline and bounded concurrency (see the module docstring)."""

    def __init__(self, name: str, max_concurrent: int = 1):
        self.name = name
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix=f"lm-{name}")

    def run(self, fn: Callable[[], Any], budget_s: float, wait_for_slot: bool = False) -> StageResult:
        """Run `fn` within `budget_s` seconds. `wait_for_slot`: queue for a free slot within the budget
        (for a request that has no fallback) instead of skipping at once when all are taken."""
        start = time.perf_counter()
        acquired = self._slots.acquire(timeout=budget_s) if wait_for_slot else self._slots.acquire(blocking=False)
        if not acquired:
            return StageResult(reason="busy", seconds=time.perf_counter() - start)
        remaining = max(0.0, budget_s - (time.perf_counter() - start))
        try:
            future = self._pool.submit(self._call, fn, time.monotonic() + remaining)
        except RuntimeError:  # the pool was shut down
            self._slots.release()
            return StageResult(reason="error", error="the service is shutting down")
        try:
            return StageResult(future.result(timeout=remaining), seconds=time.perf_counter() - start)
        except (concurrent.futures.TimeoutError, DeadlineExceeded):  # the call stops at its next layer
            return StageResult(reason="timeout", seconds=time.perf_counter() - start)
        except Exception as e:  # the stage failed: the request goes on without it
            log.exception("%s stage failed", self.name)
            return StageResult(reason="error", seconds=time.perf_counter() - start, error=f"{type(e).__name__}: {e}")

    def _call(self, fn: Callable[[], Any], at: float) -> Any:
        try:
            with deadline(at):
                return fn()
        finally:
            self._slots.release()  # only when the work ends, so timed-out calls still count against the limit

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def resolve(path: str) -> Callable:
    """'package.module.function' (or 'package.module:function') -> the function."""
    module, _, name = path.replace(":", ".").rpartition(".")
    if not module:
        raise ValueError(f"service.lm_factory must be 'module.function', got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"service.lm_factory={path!r} cannot be imported: {e}") from e


def rerank_dir(cfg: ServeConfig) -> Path | None:
    """The rerank directory to serve (`stage=rerank` output: tuned fusion weight, LoRA adapter), if any:
    `service.rerank_dir` = a path, `auto` (ARTIFACT/rerank when it holds rerank.json) or null (none)."""
    return find_rerank_dir(cfg.rerank_dir, cfg.artifacts, "service.rerank_dir")


def build_lm_components(cfg: ServeConfig) -> LMComponents:
    """The real components: one LM (the `rerank` config node, or a rerank directory) shared by the reranker
    and the explainer, whose vocabulary is built for each artifact served."""
    from towerrec.rerank import Reranker
    from towerrec.rerank.explain import Explainer

    lm = dict(cfg.lm)
    directory = rerank_dir(cfg)
    if directory is not None:  # the tuned settings, with this config's device / dtype / batch sizes
        overrides = {k: lm[k] for k in ("device", "dtype", "cache_dir", "batch_size") if lm.get(k) is not None}
        log.info("LM reranker from %s", directory)
        reranker = Reranker.from_dir(directory, **overrides)
    else:
        reranker = Reranker.from_config(lm)
    explain_cfg = lm.get("explain") or {}

    def explainer_for(items):
        return Explainer.for_artifact(reranker.model, reranker.tokenizer, explain_cfg, items)

    watch(reranker.model)  # the LM stops at the budgets' deadlines (BudgetedStage)
    return LMComponents(reranker=reranker if cfg.rerank.enabled else None,
                        make_explainer=explainer_for if cfg.explain.enabled else None)
