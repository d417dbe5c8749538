#!/usr/bin/env python3
"""A client written as OpenRLHF's `remote_rm_fn` is: POST {"query", "prompts", "labels"} to a remote reward
model's /get_reward and read "rewards" back, with the standard library only.

    python3 scripts/openrlhf_client.py http://127.0.0.1:5000/get_reward queries.json

queries.json holds {"query": [...], "prompts": [...]?}; prints the JSON reply. Used by tests/serve.rs.
"""
import json
import sys
import time
import urllib.error
import urllib.request


def request_api_wrapper(url, data, retries=5):
    """POST `data` as JSON and return the JSON reply; like OpenRLHF, any failure (an HTTP error
    included) is retried, `retries` times, then raised."""
    body = json.dumps(data).encode("utf-8")
    last = None
    for attempt in range(retries):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=180) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read().decode('utf-8', 'replace')}"
        except urllib.error.URLError as e:
            last = str(e)
        time.sleep(0.2 * 2 ** attempt)
    raise SystemExit(f"{url}: no answer after {retries} tries: {last}")


def remote_rm_fn(api_url, queries, prompts=None, labels=None):
    """OpenRLHF's request: always `query`, `prompts` and `labels` (null when absent)."""
    reply = request_api_wrapper(api_url, {"query": queries, "prompts": prompts, "labels": labels})
    for key, values in reply.get("extra_logs", {}).items():
        assert all(isinstance(v, (int, float)) for v in values), f"extra_logs[{key}] must be numbers"
    return reply["rewards"]


if __name__ == "__main__":
    url, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    rewards = remote_rm_fn(url, spec["query"], spec.get("prompts"), spec.get("labels"))
    print(json.dumps({"rewards": rewards}))
