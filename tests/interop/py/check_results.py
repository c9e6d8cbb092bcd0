"""Checks server messages against the official Python SDK's per-version wire schemas.

The SDK's `mcp_types.methods` validates a result for a (method, protocol version) pair the way
its client does (2025-11-25 shapes for the handshake era, 2026-07-28 for the stateless one;
those models are generated from the spec's schema.ts). The gateway's tests feed this script
what the demo server, the stdio bridge and replay answered.

Input, one JSON object per line on stdin:
  {"label": "...", "version": "2026-07-28", "method": "tools/list", "result": {...}}
  {"label": "...", "version": "2025-11-25", "notification": "notifications/progress", "params": {...}}
Output: one JSON line {"checked": N, "failures": [{"label", "error"}]}; exit 0 iff none failed.
"""

import json
import sys

from mcp_types import methods


def check(item: dict) -> None:
    version = item["version"]
    if "notification" in item:
        methods.parse_server_notification(item["notification"], version, item.get("params"))
    else:
        methods.validate_server_result(item["method"], version, item["result"])


def main() -> int:
    checked, failures = 0, []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        item = json.loads(line)
        checked += 1
        try:
            check(item)
        except Exception as e:  # any refusal (unknown method for the version, bad shape) counts
            failures.append({"label": item.get("label", "?"), "error": f"{type(e).__name__}: {e}"})
    print(json.dumps({"checked": checked, "failures": failures}))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
