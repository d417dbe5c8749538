#!/usr/bin/env python3
"""Feeds mutated records to `rmroute prepare`, `rmroute score` and `rmroute serve` and counts what happens.

Each case takes a real record from the shipped sample, mutates it (byte flips, truncations, wrong types,
huge fields, deep nesting, invalid UTF-8, NUL bytes, missing or extra keys) and runs it beside a good record:
- prepare: one Anthropic HH file, the good record on line 1 and the mutated one on line 2 (or an OASST tree
  with one message mutated);
- score: an input file, the good record on line 1 and the mutated one on line 2;
- serve: a POST body to /get_reward or /score of one running server.
A case passes when rmroute either accepts it (the good record, and the mutated one where it is still
valid, in the output; every reward finite) (a blank line is no record: JSON Lines readers skip it) or rejects it naming the file and line (prepare, score) or
answering 4xx with a message that names the field or position (serve). It fails on a panic, a hang (no
answer in --timeout seconds), a 5xx, a rejection that names nothing or blames the good record, or a
good record missing from the output. Prints the counts as a Markdown table; exit status 1 if any failed.
Failing cases are written under --keep for replay.

    scripts/fuzz.py --bin target/release/rmroute [--model DIR] [--cases 10000]
"""
import argparse
import concurrent.futures
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRONG_VALUES = [0, -1, 1.5, 1e308, True, None, [], {}, ["x"], {"a": 1}, "", [None], [[["deep"]]]]


def json_bytes(value):
    return json.dumps(value, ensure_ascii=False).encode()


def paths(value, prefix=()):
    """Every key path into a JSON value."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += paths(inner, prefix + (i,))
    return found


def replace(value, path, new):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return value


def string_paths(value):
    out = []
    for p in paths(value):
        node = value
        for key in p:
            node = node[key]
        if isinstance(node, str):
            out.append(p)
    return out


def mutate(rng, record):
    """(kind, bytes) of one mutation of the JSON value `record`."""
    raw = json_bytes(record)
    kind = rng.choice(["byte_flip", "truncate", "wrong_type", "huge_field", "deep_nesting", "invalid_utf8",
                       "nul_byte", "drop_key", "extra_key", "duplicate_key", "long_text", "empty"])
    if kind == "byte_flip":
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "truncate":
        return kind, raw[: rng.randrange(len(raw))]
    if kind == "wrong_type":
        p = rng.choice(paths(record))
        return kind, json_bytes(replace(record, p, rng.choice(WRONG_VALUES)))
    if kind == "huge_field":
        p = rng.choice(string_paths(record) or [()])
        size = rng.choice([100_000, 1_000_000, 3_000_000])
        return kind, json_bytes(replace(record, p, "x" * size))
    if kind == "deep_nesting":
        p = rng.choice(paths(record))
        depth = rng.choice([200, 10_000, 100_000])
        marker = "\u2063NEST\u2063"
        text = json.dumps(replace(record, p, marker), ensure_ascii=False)
        return kind, text.replace(json.dumps(marker), "[" * depth + "]" * depth).encode()
    if kind in ("invalid_utf8", "nul_byte"):
        insert = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]) if kind == "invalid_utf8" else \
            rng.choice([b"\x00", b"\\u0000"])
        i = rng.randrange(len(raw) + 1)
        return kind, raw[:i] + insert + raw[i:]
    if kind == "drop_key":
        p = rng.choice([p for p in paths(record) if p and isinstance(p[-1], str)] or [()])
        if not p:
            return kind, raw
        value = json.loads(raw)
        parent = value
        for key in p[:-1]:
            parent = parent[key]
        del parent[p[-1]]
        return kind, json_bytes(value)
    if kind == "extra_key":
        if isinstance(record, dict):
            return kind, json_bytes({**record, "unexpected_" + str(rng.randrange(100)): rng.choice(WRONG_VALUES)})
        return kind, raw
    if kind == "duplicate_key":
        if isinstance(record, dict) and record:
            key = rng.choice(list(record))
            return kind, raw[:-1] + b", " + json_bytes(key) + b": " + json_bytes(rng.choice(WRONG_VALUES)) + b"}"
        return kind, raw
    if kind == "long_text":
        p = rng.choice(string_paths(record) or [()])
        words = " ".join(rng.choice(["word", "\u00e9t\u00e9", "\U0001F600", "a\u0301", "\u4e2d\u6587"]) for _ in range(5000))
        return kind, json_bytes(replace(record, p, words))
    return kind, rng.choice([b"", b" ", b"{}", b"[]", b"null", b"\"text\""])


def passed(verdict):
    """Accepted, or rejected naming the file and line (prepare, score) or the field ("400, named")."""
    return verdict == "accepted" or verdict.endswith(", named") and "NOT" not in verdict


def run(cmd, timeout, cwd=None):
    """(returncode or 'hang', stderr text)."""
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return "hang", ""
    return done.returncode, done.stderr.decode("utf-8", "replace")


def classify_rejection(code, err, names):
    if code == "hang":
        return "hang"
    if code == 101 or "panicked" in err:
        return "panic"
    return "rejected, named" if any(n in err for n in names) else "rejected, NOT named"


# ---- prepare ----------------------------------------------------------------------------------------

def prepare_case(args, work, case, rng, seeds):
    domain = rng.choice(["anthropic", "oasst"])
    raw = work / "raw"
    if domain == "anthropic":
        good, bad = rng.sample(seeds["anthropic"], 2)
        kind, mutated = mutate(rng, bad)
        folder = raw / "anthropic" / "helpful-base"
        folder.mkdir(parents=True)
        (folder / "test.jsonl").write_bytes(json_bytes(good) + b"\n" + mutated + b"\n")
        names = ["test.jsonl:2"]
    else:
        tree = rng.choice(seeds["oasst_trees"])
        k = rng.randrange(len(tree))
        kind, mutated = mutate(rng, tree[k])
        folder = raw / "oasst" / "oasst1_validation_en"
        folder.mkdir(parents=True)
        lines = [json_bytes(m) for m in tree]
        lines[k] = mutated
        (folder / "en-validation.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        names = [f"en-validation.jsonl:{k + 1}"]
    out = work / "prepared"
    code, err = run([args.bin, "prepare", "--input", str(raw), "--out", str(out)], args.timeout)
    if code != 0:
        verdict = classify_rejection(code, err, names)
        # The good record is not to blame: an Anthropic rejection must not name line 1.
        if domain == "anthropic" and "test.jsonl:1:" in err:
            verdict = "rejected, names the good record"
        return domain + "/" + kind, verdict, err
    stats = json.loads((out / "stats.json").read_text())["domains"][domain]
    written = sum(len((out / domain / f"{s}.jsonl").read_text().splitlines()) for s in ["train", "test"]
                  if (out / domain / f"{s}.jsonl").exists())
    if written != stats["train"]["pairs"] + stats["test"]["pairs"]:
        return domain + "/" + kind, "output differs from stats.json", err
    # A blank line is no record (JSON Lines readers skip it); every other line is one.
    records = 2 if mutated.strip() else 1
    if domain == "anthropic" and stats["pairs_converted"] + sum(stats["dropped"].values()) != records:
        return domain + "/" + kind, "a record is neither in the output nor counted", err
    if domain == "anthropic" and written < 1:
        return domain + "/" + kind, "the good record is missing", err
    return domain + "/" + kind, "accepted", err


# ---- score ------------------------------------------------------------------------------------------

def score_case(args, work, case, rng, seeds):
    good, bad = rng.sample(seeds["score"], 2)
    kind, mutated = mutate(rng, bad)
    inp = work / "in.jsonl"
    inp.write_bytes(json_bytes(good) + b"\n" + mutated + b"\n")
    out = work / "rewards.jsonl"
    code, err = run([args.bin, "score", "--model", args.model, "--input", str(inp), "--out", str(out), "--quiet"],
                    args.timeout)
    if code != 0:
        verdict = classify_rejection(code, err, ["in.jsonl:2"])
        if "in.jsonl:1:" in err:
            verdict = "rejected, names the good record"
        return kind, verdict, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    values = [v for row in rows for k, v in row.items() if k in ("reward", "chosen", "rejected")]
    records = 2 if mutated.strip() else 1  # a blank line is no record
    if len(rows) != records:
        return kind, f"{len(rows)} output lines for {records} records", err
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return kind, "a reward is not finite", err
    return kind, "accepted", err


# ---- serve ------------------------------------------------------------------------------------------

class Server:
    def __init__(self, args, log):
        self.args, self.log = args, log
        self.start()

    def start(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [self.args.bin, "serve", "--model", self.args.model, "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit("rmroute serve did not start")
                time.sleep(0.1)
        raise SystemExit("rmroute serve did not answer /health")

    def post(self, path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.args.timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (TimeoutError, socket.timeout):
            return "hang", b""
        except OSError:
            return "gone", b""

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def expected_rows(path, body):
    """How many rewards a valid body asks for (None if Python sees no valid request)."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    key = "query" if path == "/get_reward" else "pairs"
    return len(value[key]) if isinstance(value, dict) and isinstance(value.get(key), list) else None


def serve_case(server, rng, seeds):
    path = rng.choice(["/get_reward", "/score"])
    body_seed = rng.choice(seeds["get_reward" if path == "/get_reward" else "score_body"])
    kind, body = mutate(rng, body_seed)
    status, answer = server.post(path, body)
    if status in ("hang", "gone"):
        alive = server.proc.poll() is None
        if not alive:
            server.start()
        return path + " " + kind, "hang" if status == "hang" and alive else "server died", body
    if status == 200:
        rewards = json.loads(answer).get("rewards")
        rows = expected_rows(path, body)
        if not isinstance(rewards, list) or (rows is not None and len(rewards) != rows):
            return path + " " + kind, "200 with the wrong number of rewards", body
        if not all(isinstance(r, (int, float)) and math.isfinite(r) for r in rewards):
            return path + " " + kind, "200 with a reward that is not finite", body
        return path + " " + kind, "accepted", body
    if 400 <= status < 500:
        try:
            message = json.loads(answer)["error"]
        except (ValueError, KeyError, TypeError):
            return path + " " + kind, f"{status} without a JSON error", body
        named = "`" in message or "line" in message or "column" in message or "body" in message \
            or "query" in message or "prompts" in message
        return path + " " + kind, f"{status}, named" if named else f"{status}, NOT named", body
    return path + " " + kind, f"{status} (server error)", body


# ---- driver -----------------------------------------------------------------------------------------

def load_seeds(prepared):
    anthropic = [json.loads(line) for f in sorted((REPO / "data/sample/anthropic").glob("*/test.jsonl"))
                 for line in f.read_text().splitlines()[:40]]
    anthropic = [r for r in anthropic if r["chosen"] != r["rejected"] and r["chosen"].rstrip().split("Assistant:")[-1].strip()]
    messages = [json.loads(line) for line in
                (REPO / "data/sample/oasst/oasst1_validation_en/en-validation.jsonl").read_text().splitlines()]
    trees, current = [], []
    for m in messages:
        if m["parent_id"] is None and current:
            trees.append(current)
            current = []
        current.append(m)
    trees.append(current)
    pairs = [json.loads(line) for d in ["anthropic", "hellaswag", "oasst"]
             for line in (prepared / d / "test.jsonl").read_text().splitlines()[:20]]
    score = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs] + \
            [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs]
    get_reward = [{"query": [r["chosen"], r["rejected"]]} for r in anthropic[:20]] + \
                 [{"query": [p["prompt"] + p["chosen"]], "prompts": [p["prompt"]]} for p in pairs[:20]]
    score_body = [{"pairs": [{"prompt": p["prompt"], "response": p["chosen"]},
                             {"prompt": p["prompt"], "response": p["rejected"]}]} for p in pairs]
    return {"anthropic": anthropic, "oasst_trees": [t for t in trees if len(t) <= 40][:20], "score": score,
            "get_reward": get_reward, "score_body": score_body}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=str(REPO / "target/release/rmroute"))
    parser.add_argument("--model", default=str(REPO.parent / "shared/models/fixtures/tiny-deberta-v3-rm"))
    parser.add_argument("--cases", type=int, default=10_000, help="mutated records per target")
    parser.add_argument("--targets", default="prepare,score,serve")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", default="fuzz-failures", help="where failing cases are written")
    args = parser.parse_args()
    keep = Path(args.keep)
    scratch = Path(tempfile.mkdtemp(prefix="rmroute-fuzz."))
    prepared = scratch / "sample"
    subprocess.run([args.bin, "prepare", "--input", str(REPO / "data/sample"), "--out", str(prepared)],
                   check=True, capture_output=True)
    seeds = load_seeds(prepared)
    counts = {}
    failures = 0

    def record(target, case, kind, verdict, detail):
        nonlocal failures
        counts.setdefault(target, Counter())[verdict] += 1
        counts.setdefault(target + " kinds", Counter())[(kind, verdict)] += 1
        if not passed(verdict):
            failures += 1
            folder = keep / target
            folder.mkdir(parents=True, exist_ok=True)
            data = detail if isinstance(detail, bytes) else detail.encode()
            (folder / f"{case:05}-{kind.replace('/', '_').replace(' ', '_')}.txt").write_bytes(
                f"{verdict}\n".encode() + data[:20_000])

    for target in args.targets.split(","):
        started = time.time()
        if target in ("prepare", "score"):
            step = prepare_case if target == "prepare" else score_case

            def one(case):
                rng = random.Random(f"{args.seed}-{target}-{case}")
                work = scratch / f"{target}-{case}"
                work.mkdir()
                try:
                    kind, verdict, err = step(args, work, case, rng, seeds)
                    if not passed(verdict):
                        # Keep the input beside the error for replay.
                        inputs = b"".join(p.read_bytes()[:10_000] for p in sorted(work.rglob("*.jsonl"))
                                          if "prepared" not in p.parts)
                        err = err.encode() + b"\n--- input ---\n" + inputs
                    return case, kind, verdict, err
                finally:
                    shutil.rmtree(work, ignore_errors=True)

            with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
                for case, kind, verdict, err in pool.map(one, range(args.cases)):
                    record(target, case, kind, verdict, err)
        elif target == "serve":
            with open(scratch / "serve.log", "wb") as log:
                server = Server(args, log)
                try:
                    for case in range(args.cases):
                        rng = random.Random(f"{args.seed}-serve-{case}")
                        kind, verdict, body = serve_case(server, rng, seeds)
                        record(target, case, kind, verdict, body)
                finally:
                    server.stop()
        else:
            raise SystemExit(f"unknown target {target}")
        counts[target]["seconds"] = round(time.time() - started)

    print("| target | cases | accepted | rejected, named | failed (panic, hang, 5xx, unnamed, lost) | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for target in args.targets.split(","):
        c = counts[target]
        seconds = c.pop("seconds")
        total = sum(c.values())
        accepted = c["accepted"]
        named = sum(v for k, v in c.items() if k != "accepted" and passed(k))
        print(f"| {target} | {total} | {accepted} | {named} | {total - accepted - named} | {seconds} |")
    print()
    for target in args.targets.split(","):
        print(f"{target}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts[target].items())))
        bad = [(k, v) for k, v in counts[target + " kinds"].items() if not passed(k[1])]
        for (kind, verdict), n in sorted(bad):
            print(f"  {kind}: {verdict} x{n}")
    shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        print(f"\n{failures} failing cases written under {keep}/")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
