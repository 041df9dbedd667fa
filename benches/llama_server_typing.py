#!/usr/bin/env python3
"""The typing benchmark's keystrokes against llama-server: time from a keystroke to the first
proposed token, as `cargo bench --bench typing` measures infill (run by hand, not in CI).

    INFILL_BENCH_MODEL=q8_0.gguf INFILL_BENCH_WINDOW=window.json cargo bench --bench typing
    python3 benches/llama_server_typing.py LLAMA_SERVER MODEL.gguf window.json [ROUNDS]

Starts llama-server on 127.0.0.1 with `--cache-reuse 256` (its reuse of shifted chunks of a
cached prompt, the nearest thing to infill's reuse out of place), two threads and a 2,048-token
context; sends the window's prefix and suffix to /infill once (the cold prompt), then the prefix
with one more typed character each time, asking for one token. Prints the cold prompt's time and
the keystrokes' p50, p90 and mean, as the typing benchmark prints infill's. Standard library only.
"""

import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    server, model, window_path = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    window = json.load(open(window_path))
    port = free_port()
    proc = subprocess.Popen(
        [server, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-c", "2048",
         "-t", "2", "--cache-reuse", "256", "-np", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                sys.exit("llama-server did not start")
            time.sleep(0.2)

        def request(prefix):
            body = json.dumps({
                "input_prefix": prefix, "input_suffix": window["suffix"], "n_predict": 1,
                "cache_prompt": True, "temperature": 0, "samplers": ["top_k"], "top_k": 1,
            }).encode()
            req = urllib.request.Request(base + "/infill", body,
                                         {"Content-Type": "application/json"})
            started = time.perf_counter()
            reply = json.load(urllib.request.urlopen(req, timeout=600))
            ms = (time.perf_counter() - started) * 1e3
            return ms, reply.get("timings", {}).get("prompt_n")

        cold, keys, computed = [], [], []
        for _ in range(rounds):
            # A different prompt first, so each round's cold request starts from another cache.
            request("# another file\n")
            cold.append(request(window["prefix"])[0])
            prefix = window["prefix"]
            for c in window["typed"]:
                prefix += c
                ms, n = request(prefix)
                keys.append(ms)
                computed.append(n or 0)
        keys.sort()
        print(f"llama-server --cache-reuse 256: cold prompt {statistics.median(cold):.0f} ms; "
              f"a keystroke to the first token: p50 {keys[len(keys) // 2]:.0f} ms, "
              f"p90 {keys[len(keys) * 9 // 10]:.0f} ms, mean {statistics.mean(keys):.0f} ms "
              f"({statistics.median(computed):.0f} prompt tokens computed per keystroke, median)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
