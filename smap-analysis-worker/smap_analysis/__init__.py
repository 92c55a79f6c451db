"""smap-analysis-worker: Celery workers, one per shard queue, running OmniAnomaly inference on Triton."""
