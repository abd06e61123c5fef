"""The benchmark: saga throughput and latency against a bare Celery chain (`make bench`).

`bench.bench_tasks` is loaded into the bench's workers with SAGA_EXTRA_MODULES; `bench/run.py`
drives the configurations and writes `bench/results.json`.
"""
