"""The recommendation service behind `python serve.py` (FastAPI under uvicorn).

    config      ServeConfig: limits, LM stage switches and budgets (conf/serve.yaml)
    state       ServiceState (one verified artifact, precomputed) and StateHolder (atomic reload)
    service     RecommendationService: recommend / similar items / describe / item, no HTTP
    batching    EmbeddingBatcher: concurrent user-tower calls share one forward pass
    components  optional LM reranker and explainer, and the time budget they run under
    schemas     pydantic request/response models (the OpenAPI schema)
    metrics     Prometheus metrics and their middleware
    app         create_app(cfg): routes, error mapping, body limit
    server      run(cfg): uvicorn, SIGHUP reload
"""

from towerrec.serving.app import create_app
from towerrec.serving.components import LMComponents
from towerrec.serving.config import ServeConfig, StageSettings
from towerrec.serving.service import RecommendationService

__all__ = ["create_app", "LMComponents", "RecommendationService", "ServeConfig", "StageSettings"]
