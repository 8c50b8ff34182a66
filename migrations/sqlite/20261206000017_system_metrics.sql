-- What the machine did while a run trained: the worker process's CPU and
-- memory and, on CUDA, the GPU's utilisation and memory, sampled every few
-- seconds. A sample is keyed by its time, so a batch sent twice stores it once.
CREATE TABLE system_metrics (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    step INTEGER NOT NULL,
    cpu_percent REAL NOT NULL,
    rss_bytes INTEGER NOT NULL,
    gpu_util REAL,
    gpu_memory_bytes INTEGER,
    PRIMARY KEY (run_id, at)
);
