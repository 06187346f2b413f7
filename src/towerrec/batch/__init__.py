"""Batch recommendations: top-k for every user of an artifact as one resumable job
(`python -m towerrec.batch ARTIFACT --out recs.parquet --k 50`; README: "Batch recommendations").

    sources  who is recommended for: the artifact's known users, or a JSONL/CSV histories file (streamed)
    job      recommend_all: chunk by chunk, as the service answers, optional LM rerank
    store    the work directory: the job's manifest, one file per finished chunk, the final assembly
"""

from towerrec.batch.job import BatchOptions, BatchSummary, ChunkReport, recommend_all
from towerrec.batch.store import BatchError

__all__ = ["BatchError", "BatchOptions", "BatchSummary", "ChunkReport", "recommend_all"]
