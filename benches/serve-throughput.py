"""Throughput of `act-studio serve` against llama.cpp's own OpenAI server, side by side.

    python3 benches/serve-throughput.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --maps football.safetensors [--llama-python ~/.cache/llamacpp-bench-venv/bin/python]

Starts our server (target/release/act-studio) and, when --llama-python is given, llama-cpp-python's
server (`python -m llama_cpp.server`, 2 threads) on the same GGUF, one at a time. For 1, 4 and 8
clients it sends one text completion per client (64 tokens each, temperature 0.8, distinct seeds)
all at once, and the same requests one after another, and reports generated tokens per second
(from the answers' usage counts) over the wall time: the median of --rounds rounds. Then the cost
of per-request steering: 8 clients with `"steering": {CONCEPT: 1}` on every row against none,
rounds interleaved. Needs only the standard library on the client side.

Every request sends the same prompt by default, so a server's prompt cache (ours, and
llama-cpp-python's reuse of the previous prompt) may skip its prefill; --distinct-prompts gives
every request its own (a number in front), which no cache can serve whole. --server-arg passes
more arguments to our server (e.g. --server-arg=--prompt-cache-mb=0).
"""

import argparse
import concurrent.futures
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

PROMPT = "Once upon a time, in a small village by the sea, there lived"
DISTINCT = False
_request_number = itertools.count(1)


def prompt():
    """The prompt of the next request: each its own with --distinct-prompts."""
    return f"{next(_request_number)}. {PROMPT}" if DISTINCT else PROMPT


def post(url, body):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def one(url, seed, tokens, steering):
    body = {"prompt": prompt(), "max_tokens": tokens, "temperature": 0.8, "seed": seed}
    if steering:
        body["steering"] = steering
    return post(url, body)["usage"]["completion_tokens"]


def round_tps(url, clients, tokens, together, steering=None, seed0=0):
    t = time.perf_counter()
    if together:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            counts = list(pool.map(lambda i: one(url, seed0 + i, tokens, steering), range(clients)))
    else:
        counts = [one(url, seed0 + i, tokens, steering) for i in range(clients)]
    return sum(counts) / (time.perf_counter() - t)


def wait_up(url, proc, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5):
                return
        except Exception:
            time.sleep(0.5)
    sys.exit("server did not come up")


def measure(name, url, args, steering_concept=None):
    rows = []
    one(url, 0, 8, None)  # warm up
    counts = (1, 4, 8)
    seq = {c: [] for c in counts}
    tog = {c: [] for c in counts}
    # Rounds outermost, so that a machine that slows down or speeds up meanwhile weighs on
    # every client count alike; the 8/1 ratio is also taken round by round.
    for r in range(args.rounds):
        for clients in counts:
            seq[clients].append(round_tps(url, clients, args.tokens, False, seed0=r * 100))
            tog[clients].append(round_tps(url, clients, args.tokens, True, seed0=r * 100))
    for clients in counts:
        s, t = statistics.median(seq[clients]), statistics.median(tog[clients])
        rows.append((clients, s, t))
        print(f"{name}: {clients} clients: sequential {s:.1f} tok/s, "
              f"concurrent {t:.1f} tok/s (rounds: {', '.join(f'{x:.1f}' for x in tog[clients])})",
              flush=True)
    ratios = [b / a for a, b in zip(tog[1], tog[8])]
    print(f"{name}: 8 clients / 1 client = {rows[2][2] / rows[0][2]:.2f}x (medians); per round "
          f"{', '.join(f'{x:.2f}' for x in ratios)}: median {statistics.median(ratios):.2f}x", flush=True)
    if steering_concept:
        plain, steered = [], []
        for r in range(args.rounds + 2):
            plain.append(round_tps(url, 8, args.tokens, True, seed0=r * 10))
            steered.append(round_tps(url, 8, args.tokens, True, {steering_concept: 1.0}, seed0=r * 10))
        p, s = statistics.median(plain), statistics.median(steered)
        print(f"{name}: 8 clients steered ({steering_concept} = 1 on every row) {s:.1f} tok/s vs plain {p:.1f}: "
              f"overhead {100 * (p / s - 1):+.1f} %", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--maps", help="a maps file to measure steering with")
    ap.add_argument("--concept", default="football")
    ap.add_argument("--binary", default="target/release/act-studio")
    ap.add_argument("--llama-python")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--distinct-prompts", action="store_true")
    ap.add_argument("--server-arg", action="append", default=[])
    args = ap.parse_args()
    global DISTINCT
    DISTINCT = args.distinct_prompts
    ours = [args.binary, "serve", "--model", args.model, "--port", str(args.port), *args.server_arg]
    if args.maps:
        ours += ["--maps", args.maps]
    proc = subprocess.Popen(ours, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_up(url, proc)
        rss = 0
        ours_rows = measure("act-studio", url, args, args.concept if args.maps else None)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
        print(f"act-studio: peak RSS {rss / 1024:.0f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    if not args.llama_python:
        return
    port = args.port + 1
    llama = [args.llama_python, "-m", "llama_cpp.server", "--model", args.model, "--port", str(port),
             "--n_threads", "2", "--n_ctx", "2048"]
    proc = subprocess.Popen(llama, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, proc)
        llama_rows = measure("llama.cpp server", url, args)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
        print(f"llama.cpp server: peak RSS {rss / 1024:.0f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    for (c, _, a), (_, _, b) in zip(ours_rows, llama_rows):
        print(f"{c} clients: act-studio {a:.1f} tok/s, llama.cpp server {b:.1f} tok/s: {a / b:.2f}x")


if __name__ == "__main__":
    main()
