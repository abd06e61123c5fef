"""What sealed fields cost, per operation, on the example shop's order (CPU of this process).

    .venv/bin/python bench/sealing_cost.py            # 3,000 calls a measure, median of 9 rounds

Seal the card (once per start), open a sealed order (once per step of a saga that seals), scan an
order with nothing sealed (every step of every other saga pays it), the idempotency hash of a clear
and of a sealed order, and the mask a reader is shown. No server needed.
"""
from __future__ import annotations

import argparse
import base64
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.sagas import order_fulfillment  # noqa: E402

from workflows.core.sealed import masked  # noqa: E402
from workflows.runtime.sealing import Sealer, new_key, open_input, parse_keys  # noqa: E402
from workflows.store.records import input_hash  # noqa: E402

ORDER: dict[str, Any] = {
    "order_id": "order-1", "customer_id": "cust-1", "email": "c@example.com",
    "items": [{"sku": "SKU-1", "quantity": 2, "price": "12.50"}], "payment": {"card": "4242424242424242"},
    "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="calls a measure")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    sealer = Sealer(parse_keys(f"k1:{new_key()}"), base64.b64decode(new_key()))
    sealed = sealer.seal(order_fulfillment, ORDER)
    measures: list[tuple[str, Callable[[], Any]]] = [
        ("seal the card (once per start)", lambda: sealer.seal(order_fulfillment, ORDER)),
        ("open a sealed order (per step)", lambda: open_input(sealer, sealed)),
        ("scan an order with nothing sealed (per step)", lambda: open_input(sealer, ORDER)),
        ("input_hash, clear order", lambda: input_hash("order_fulfillment", ORDER)),
        ("input_hash, sealed order", lambda: input_hash("order_fulfillment", sealed)),
        ("mask for a reader", lambda: masked(sealed)),
    ]
    for name, fn in measures:
        median = statistics.median(timeit.timeit(fn, number=args.n) / args.n * 1e6 for _ in range(args.rounds))
        print(f"{name:48s} {median:7.1f} us")


if __name__ == "__main__":
    main()
