"""``make bench``: the benchmark of the inference service against the real local stack.

Run ``python -m bench --help`` from the repository root; ``docs/performance.md`` describes the
method and keeps the last results.
"""
