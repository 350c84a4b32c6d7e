"""A judge-cache writer process for tests/test_evals_safety.py, in a module of its own so that a spawned process
imports only the judge cache (no torch, no transformers)."""

from frpo.judges.cache import JudgeCache, cache_key


def write(directory, worker, n, start_event):
    start_event.wait(30)
    with JudgeCache(directory) as cache:
        for i in range(0, n, 5):  # batches of 5; keys 0..n-1 of the shared range are written by every worker
            rows = [(cache_key("j", "v", f"p{worker}-{k}", "r"), "j", "v", f"p{worker}-{k}", "r",
                     {"score": k / n, "worker": worker}) for k in range(i, i + 5)]
            rows += [(cache_key("j", "v", f"shared-{k}", "r"), "j", "v", f"shared-{k}", "r",
                      {"score": 0.5, "worker": worker}) for k in range(i, i + 5)]
            cache.put_many(rows)
            assert len(cache.get_many([r[0] for r in rows])) == len(rows)  # reading while others write
