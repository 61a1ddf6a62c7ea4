"""``make bench``: every benchmark on every backend, printed and written to .bench/results.json.

``NEUROPLEX_BENCH_BACKENDS=memory,nats`` narrows the backends.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback

from brokers.testing import BACKENDS, BackendUnavailable, provide
from tests.bench import broker, kv, pipeline
from tests.bench._results import Row, show, write


def main() -> int:
    wanted = os.environ.get("NEUROPLEX_BENCH_BACKENDS", ",".join(BACKENDS)).split(",")
    rows: list[Row] = []
    failed = []
    for backend in [b for b in BACKENDS if b in wanted]:
        try:
            with provide(backend) as provided:
                print(f"-- {backend} ({provided.source})", flush=True)
                for suite in (broker, pipeline, kv):
                    try:
                        rows += asyncio.run(suite.bench(backend, provided.url))
                    except Exception as exc:  # one failed benchmark does not lose the others
                        traceback.print_exc()
                        failed.append(f"{suite.__name__} on {backend} failed: {exc!r}")
        except BackendUnavailable as exc:
            failed.append(f"{backend} unavailable: {exc}")
    show(rows)
    write(rows)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
