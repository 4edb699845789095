#!/usr/bin/env python3
"""Drives headless Chromium through tests/interop/browser.html against a running ringgate demo.

Usage: browser_test.py ws://127.0.0.1:PORT/ws [--max-message-size BYTES] [--idle-timeout SECONDS]
                       [--timeout SECONDS]
       browser_test.py ws://127.0.0.1:PORT/ws --token-file FILE [--expect-user USER]
                       [--expect-claims JSON] [--timeout SECONDS]

Standard library only. Serves this directory on a free 127.0.0.1 port, starts Chromium on the page,
and waits for the page to POST its results to /result (progress lines arrive on /log and are echoed
as they come). Prints one line per check and `N passed, N failed` last; exits 1 on any failure or
on timeout. Chromium is found as $CHROMIUM, else `chromium` or `chromium-browser` on PATH.

With --token-file (a JWT the server accepts, e.g. from a `ringgate demo` with `[auth] mode = "jwt"`)
the page runs the authentication checks instead: it offers the token as the subprotocol
`bearer.<token>` beside `game.v1`, and the same token with one signature character changed must be
refused. The token reaches the page by an injected config (GET /auth.json from this driver), not in
the page's URL or Chromium's command line.
"""

import argparse
import base64
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
        self.auth_config = None  # served as /auth.json for the authentication checks


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def token_payload(token):
    """The claims of a compact JWT (not verified: the server does that)."""
    seg = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def tamper(token):
    """The token with one character in the middle of its signature changed: still well-formed,
    same length, but a different signature (every bit of a middle base64url character is used;
    only the last character can carry padding bits). Returns (tampered, description)."""
    head, payload, sig = token.split(".")
    i = len(sig) // 2
    old = sig[i]
    new = B64URL[(B64URL.index(old) + 1) % 64]
    bad = f"{head}.{payload}.{sig[:i]}{new}{sig[i + 1:]}"
    return bad, f"signature character {i + 1} of {len(sig)} changed {old!r} -> {new!r}"


def make_handler(state):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=HERE, **kw)

        def log_message(self, fmt, *args):  # quiet: only the page's own lines are printed
            pass

        def do_GET(self):
            if urllib.parse.urlparse(self.path).path == "/auth.json":
                if state.auth_config is None:
                    self.send_error(404)
                    return
                body = json.dumps(state.auth_config).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

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
    ap.add_argument("--token-file",
                    help="run the authentication checks with this JWT (the file's text, one line), "
                         "offered as the subprotocol bearer.<token> beside game.v1")
    ap.add_argument("--expect-user",
                    help="the user whoami must show for the token (default: its sub claim)")
    ap.add_argument("--expect-claims",
                    help="the JSON object whoami must show as claims (the server's forward_claims "
                         "of the token); default: not checked")
    args = ap.parse_args()
    label = "browser-auth" if args.token_file else "browser"
    # On SIGTERM (the runner's time limit) unwind, so that Chromium's process group is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    chromium = find_chromium()
    if not chromium:
        print(f"FAIL {label}: chromium not found (apt-get install chromium)")
        print("0 passed, 1 failed")
        sys.exit(1)
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"browser: {version}", flush=True)

    state = State()
    query = {"ws": args.url, "max": args.max_message_size, "idle": args.idle_timeout}
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
            claims = token_payload(token)
            expect_claims = json.loads(args.expect_claims) if args.expect_claims else None
        except (OSError, ValueError, IndexError) as e:
            print(f"FAIL {label}: cannot use the token in {args.token_file}: {e}")
            print("0 passed, 1 failed")
            sys.exit(1)
        bad, how = tamper(token)
        user = args.expect_user or claims.get("sub")
        print(f"{label}: token for sub={claims.get('sub')!r}, claims {sorted(claims)}; "
              f"tampered copy: {how}", flush=True)
        state.auth_config = {"token": token, "tampered": bad, "user": user,
                             "claims": expect_claims}
        query = {"ws": args.url, "suite": "auth"}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    page = "http://127.0.0.1:%d/browser.html?%s" % (
        httpd.server_address[1], urllib.parse.urlencode(query))

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
        print(f"FAIL {label}: {why}; last lines of the chromium log:")
        for line in log_tail:
            print("  " + line.rstrip())
        failed += 1
    else:
        print(f"browser userAgent: {res.get('userAgent')}")
        for r in res.get("results", []):
            print(f"{'PASS' if r['ok'] else 'FAIL'} {label}: {r['name']} ({r['detail']})")
            if r["ok"]:
                passed += 1
            else:
                failed += 1
        if res.get("error"):
            print(f"FAIL {label}: page error: {res['error']}")
            failed += 1
        if not res.get("results"):
            print(f"FAIL {label}: the page reported no checks")
            failed += 1
    print(f"{label} run took {elapsed:.1f}s")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
