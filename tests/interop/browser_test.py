#!/usr/bin/env python3
"""Drives headless Chromium through tests/interop/browser.html against a running ringgate demo.

Usage: browser_test.py ws://127.0.0.1:PORT/ws [--max-message-size BYTES] [--idle-timeout SECONDS]
                       [--timeout SECONDS]

Standard library only. Serves this directory on a free 127.0.0.1 port, starts Chromium on the page,
and waits for the page to POST its results to /result (progress lines arrive on /log and are echoed
as they come). Prints one line per check and `N passed, N failed` last; exits 1 on any failure or
on timeout. Chromium is found as $CHROMIUM, else `chromium` or `chromium-browser` on PATH.
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))


class State:
    def __init__(self):
        self.result = None
        self.done = threading.Event()


def make_handler(state):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=HERE, **kw)

        def log_message(self, fmt, *args):  # quiet: only the page's own lines are printed
            pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace")
            path = urllib.parse.urlparse(self.path).path
            if path == "/log":
                print(f"  browser: {body}", file=sys.stderr, flush=True)
            elif path == "/result":
                try:
                    state.result = json.loads(body)
                except ValueError as e:
                    state.result = {"error": f"unparsable result: {e}: {body[:200]!r}"}
                state.done.set()
            else:
                self.send_error(404)
                return
            self.send_response(204)
            self.end_headers()

    return Handler


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--max-message-size", type=int, default=1 << 20)
    ap.add_argument("--idle-timeout", type=float, default=0,
                    help="the server's idle timeout in seconds: check that its pings keep an idle "
                         "connection alive (needs a short --ping-interval on the server; 0: skip)")
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args()
    # On SIGTERM (the runner's time limit) unwind, so that Chromium's process group is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    chromium = find_chromium()
    if not chromium:
        print("FAIL browser: chromium not found (apt-get install chromium)")
        print("0 passed, 1 failed")
        sys.exit(1)
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"browser: {version}", flush=True)

    state = State()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    page = "http://127.0.0.1:%d/browser.html?%s" % (
        httpd.server_address[1],
        urllib.parse.urlencode(
            {"ws": args.url, "max": args.max_message_size, "idle": args.idle_timeout}
        ),
    )

    profile = tempfile.mkdtemp(prefix="ringgate-chromium-")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--no-proxy-server", f"--user-data-dir={profile}", page,
    ]
    log_path = os.path.join(profile, "chromium.log")
    t0 = time.monotonic()
    with open(log_path, "wb") as chrome_log:
        # Its own process group, so that its renderer and helper processes go with it.
        proc = subprocess.Popen(cmd, stdout=chrome_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = t0 + args.timeout
        while not state.done.wait(0.2):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                break
    finally:
        exited_by_itself = proc.poll() is not None
        if not exited_by_itself:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Helpers (renderer, zygote, ...) of the group may outlive the main process briefly.
        end = time.monotonic() + 5
        while group_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.05)
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        httpd.shutdown()
        with open(log_path, errors="replace") as f:
            log_tail = f.readlines()[-20:]
        shutil.rmtree(profile, ignore_errors=True)

    elapsed = time.monotonic() - t0
    passed = failed = 0
    res = state.result
    if res is None:
        if exited_by_itself:
            why = f"chromium exited with status {proc.returncode} before the page reported"
        else:
            why = f"no result within {args.timeout:.0f}s"
        print(f"FAIL browser: {why}; last lines of the chromium log:")
        for line in log_tail:
            print("  " + line.rstrip())
        failed += 1
    else:
        print(f"browser userAgent: {res.get('userAgent')}")
        for r in res.get("results", []):
            print(f"{'PASS' if r['ok'] else 'FAIL'} browser: {r['name']} ({r['detail']})")
            if r["ok"]:
                passed += 1
            else:
                failed += 1
        if res.get("error"):
            print(f"FAIL browser: page error: {res['error']}")
            failed += 1
        if not res.get("results"):
            print("FAIL browser: the page reported no checks")
            failed += 1
    print(f"browser run took {elapsed:.1f}s")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
