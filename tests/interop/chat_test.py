#!/usr/bin/env python3
"""Drives ringgate's chat page in two headless Chromium tabs, users ann and bob, against a running
`ringgate demo`.

Usage: chat_test.py http://127.0.0.1:PORT/ [--ws-path /ws] [--timeout SECONDS]
                    [--screenshot FILE]

Standard library only. Chromium is found as $CHROMIUM, else `chromium` or `chromium-browser` on
PATH, and is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
ending in a NUL byte on file descriptors 3 and 4), so the page is the one ringgate serves, under its
own Content-Security-Policy, with no test code in it. Each step types into the page's fields and
clicks its buttons; every wait is a promise in the page (a MutationObserver on the message list or
the status) with a time limit, never a fixed sleep.

The checks, in order: the page loads with the WebSocket path injected; ann connects and /whoami
shows her user and target; a raw line is echoed unchanged; then the room protocol (join, say, all,
leave): ann in red and bob in blue each get `joined <room>`; ann's `say` reaches ann only, bob's
reaches bob only; ann's `all` reaches both; bob moves to red (`left blue`, `joined red`) and gets
ann's next red message; `kick` shows close code 4000 and its reason; Disconnect shows 1000. Against
a server that echoes `join red` instead of answering `joined red` (no rooms), the room checks are
reported failed without waiting for each. With --screenshot FILE, both tabs are captured after the
conversation and shown side by side in a third tab, whose capture is written to FILE (PNG).

Prints one line per check and `N passed, N failed` last; exits 1 on any failure.
"""

import argparse
import base64
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

LABEL = "browser-chat"
WAIT = 5.0  # seconds for one expected line or state: the echo server answers in milliseconds
VIEW = (660, 520)  # each tab's viewport, CSS pixels


class CdpError(Exception):
    pass


class Chromium:
    """Headless Chromium in its own process group, spoken to over the DevTools pipe."""

    def __init__(self, exe, profile, log_path):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Above 4, so that dup2 onto 3 and 4 neither clobbers nor keeps a close-on-exec flag.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        argv = [
            exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            "--no-proxy-server", "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
            "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank",
        ]
        actions = [
            (os.POSIX_SPAWN_DUP2, high[0], 3),
            (os.POSIX_SPAWN_DUP2, high[1], 4),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        self.pid = os.posix_spawn(exe, argv, os.environ, file_actions=actions, setsid=True)
        for fd in high:
            os.close(fd)
        self.out = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.inp = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.lock = threading.Condition()
        self.next_id = 0
        self.replies = {}
        self.events = []  # (sessionId, method, params), kept for the whole run (a short one)
        self.gone = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = self.inp.read(65536)
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self.lock:
                for raw in messages:
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue  # not ours to judge; a call waiting on it times out
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    else:
                        self.events.append((msg.get("sessionId"), msg.get("method"),
                                            msg.get("params", {})))
                self.lock.notify_all()
        with self.lock:
            self.gone = True
            self.lock.notify_all()

    def call(self, method, params=None, session=None, timeout=30.0):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self.lock:
            while mid not in self.replies:
                left = deadline - time.monotonic()
                if self.gone or left <= 0:
                    why = "chromium exited" if self.gone else f"none within {timeout:.0f}s"
                    raise CdpError(f"{method}: no answer ({why})")
                self.lock.wait(left)
            reply = self.replies.pop(mid)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, method, session, since, timeout):
        """The first event `method` of `session` at index `since` or later in self.events."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for sid, m, params in self.events[since:]:
                    if sid == session and m == method:
                        return params
                left = deadline - time.monotonic()
                if self.gone or left <= 0:
                    raise CdpError(f"no {method} within {timeout:.0f}s")
                self.lock.wait(left)

    def errors(self, session):
        """The page's JavaScript exceptions and error-level log entries (a CSP refusal is one)."""
        out = []
        with self.lock:
            for sid, m, p in self.events:
                if sid != session:
                    continue
                if m == "Runtime.exceptionThrown":
                    d = p.get("exceptionDetails", {})
                    out.append(d.get("exception", {}).get("description") or d.get("text"))
                elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    out.append(p["entry"].get("text"))
                elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                    out.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
        return out

    def stop(self):
        try:
            self.call("Browser.close", timeout=5)
        except (CdpError, OSError):
            pass
        end = time.monotonic() + 5
        while time.monotonic() < end and group_alive(self.pid):
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)  # the process's end has no other signal we can wait on here
        if group_alive(self.pid):
            os.killpg(self.pid, signal.SIGKILL)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class Tab:
    """One page target, with helpers that act on the chat page's elements by id."""

    def __init__(self, browser, name):
        self.b = browser
        self.name = name
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget",
                                    {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": VIEW[0], "height": VIEW[1], "deviceScaleFactor": 1, "mobile": False})

    def call(self, method, params=None, timeout=30.0):
        return self.b.call(method, params, self.session, timeout)

    def open(self, url):
        with self.b.lock:
            since = len(self.b.events)
        self.call("Page.navigate", {"url": url})
        self.b.wait_event("Page.loadEventFired", self.session, since, 30)

    def js(self, expr, timeout=WAIT + 10):
        r = self.call("Runtime.evaluate", {"expression": expr, "awaitPromise": True,
                                           "returnByValue": True}, timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CdpError(d.get("exception", {}).get("description") or d.get("text"))
        return r.get("result", {}).get("value")

    def fill(self, el, value):
        self.js(f"(() => {{ const e = document.getElementById({json.dumps(el)}); "
                f"e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input')); }})()")

    def check(self, el, on):
        self.js(f"document.getElementById({json.dumps(el)}).checked = {json.dumps(on)}")

    def click(self, el):
        self.js(f"document.getElementById({json.dumps(el)}).click()")

    def say(self, text, to_all=False):
        self.check("all", to_all)
        self.fill("text", text)
        self.click("send")

    def state(self, want, timeout=WAIT):
        """Waits until #status has data-state `want`; returns (ok, status text)."""
        return tuple(self.js(f"""new Promise((resolve) => {{
          const s = document.getElementById('status');
          const done = () => s.dataset.state === {json.dumps(want)};
          if (done()) return resolve([true, s.textContent]);
          const t = setTimeout(() => {{ o.disconnect(); resolve([false, s.textContent]); }},
                               {int(timeout * 1000)});
          const o = new MutationObserver(() => {{
            if (done()) {{ o.disconnect(); clearTimeout(t); resolve([true, s.textContent]); }}
          }});
          o.observe(s, {{attributes: true, childList: true, characterData: true, subtree: true}});
        }})"""))

    def line(self, wants, timeout=WAIT):
        """Waits for an incoming line equal to one of `wants` (a string or a list), or one that
        starts with '{' when wants is None; returns it, or None after `timeout`."""
        return self.js(f"""new Promise((resolve) => {{
          const wants = {json.dumps(wants)};
          const list = document.getElementById('messages');
          const match = (t) => wants === null ? t.startsWith('{{')
                                : (Array.isArray(wants) ? wants.includes(t) : t === wants);
          const find = () => [...list.querySelectorAll('li.in .msg')]
                               .map((m) => m.textContent).find(match);
          if (find() !== undefined) return resolve(find());
          const t = setTimeout(() => {{ o.disconnect(); resolve(null); }}, {int(timeout * 1000)});
          const o = new MutationObserver(() => {{
            const got = find();
            if (got !== undefined) {{ o.disconnect(); clearTimeout(t); resolve(got); }}
          }});
          o.observe(list, {{childList: true}});
        }})""")

    def lines(self):
        return self.js("[...document.querySelectorAll('#messages li.in .msg')]"
                       ".map((m) => m.textContent)")

    def screenshot(self):
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def report(self, ok, name, detail):
        print(f"{'PASS' if ok else 'FAIL'} {LABEL}: {name} ({detail})", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def run(browser, page_url, ws_path, checks, screenshot):
    ann, bob = Tab(browser, "ann"), Tab(browser, "bob")
    tag = secrets.token_hex(4)

    # 1. The page itself, as served: title, the injected path, fields present.
    ann.open(f"{page_url}?user=ann&room=red")
    info = ann.js("""({title: document.title, path: WS_PATH,
        ids: ['name','room','connect','join','text','all','send','messages','status']
             .filter((id) => !document.getElementById(id)),
        name: document.getElementById('name').value,
        room: document.getElementById('room').value})""")
    checks.report(info["title"] == "ringgate chat" and info["path"] == ws_path and not info["ids"]
                  and (info["name"], info["room"]) == ("ann", "red"), "the page loads",
                  f"title {info['title']!r}, WS_PATH {info['path']!r} (expected {ws_path!r}), "
                  f"missing ids {info['ids']}, fields from the query "
                  f"{info['name']!r}/{info['room']!r}")

    # 2. Connect, and who the server thinks ann is.
    ann.click("connect")
    ok, status = ann.state("open")
    whoami = None
    if ok:
        ann.say("/whoami")
        got = ann.line(None)
        whoami = json.loads(got) if got else None
    want_target = f"{ws_path}?user=ann"
    checks.report(ok and whoami is not None and whoami.get("user") == "ann"
                  and whoami.get("target") == want_target, "ann connects",
                  f"status {status!r}; whoami user {whoami and whoami.get('user')!r}, target "
                  f"{whoami and whoami.get('target')!r} (expected {want_target!r})")

    # 3. Anything that is not a command comes back as sent.
    raw = f"echo check {tag} \u00e9\u2603"
    ann.say("/" + raw)
    got = ann.line(raw)
    checks.report(got == raw, "a raw line is echoed", f"sent {raw!r}, got {got!r}")

    # 4. The rooms. ann asked for red when she connected; bob asks for blue.
    bob.open(f"{page_url}?user=bob&room=blue")
    bob.click("connect")
    ok, status = bob.state("open")
    checks.report(ok, "bob connects", f"status {status!r}")
    got_ann = ann.line(["joined red", "join red"])
    got_bob = bob.line(["joined blue", "join blue"])
    rooms = got_ann == "joined red" and got_bob == "joined blue"
    checks.report(rooms, "join answers joined <room>", f"ann got {got_ann!r}, bob got {got_bob!r}")
    if got_ann == "join red":
        for name in ("say reaches the room only", "say in another room stays there",
                     "all reaches everyone", "switching rooms: leave, then join",
                     "the new room's messages arrive"):
            checks.report(False, name, "not run: the server echoed 'join red', it has no rooms")
    else:
        ann.say(f"hello {tag}")
        got = ann.line(f"ann@red: hello {tag}")
        checks.report(got is not None, "say reaches the room only",
                      f"ann got {got!r}; bob's absence is checked after the broadcast below")
        bob.say(f"hi from blue {tag}")
        got = bob.line(f"bob@blue: hi from blue {tag}")
        checks.report(got is not None, "say in another room stays there",
                      f"bob got {got!r}; ann's absence is checked after the broadcast below")
        # The broadcast leaves ann after both says were handled (each was seen by its sender), and
        # the game server answers each session in order: once both have it, a say that wrongly
        # reached the other room would have arrived before it.
        ann.say(f"everyone {tag}", to_all=True)
        want = f"ann@all: everyone {tag}"
        a, b = ann.line(want), bob.line(want)
        leaked = [f"bob saw {t!r}" for t in bob.lines() if t.startswith("ann@red:")]
        leaked += [f"ann saw {t!r}" for t in ann.lines() if t.startswith("bob@blue:")]
        checks.report(a is not None and b is not None and not leaked, "all reaches everyone",
                      f"ann got {a!r}, bob got {b!r}; across rooms: {leaked or 'nothing'}")
        bob.fill("room", "red")
        bob.click("join")
        left, joined = bob.line("left blue"), bob.line("joined red")
        checks.report(left is not None and joined is not None, "switching rooms: leave, then join",
                      f"bob got {left!r} and {joined!r}")
        ann.say(f"again {tag}")
        want = f"ann@red: again {tag}"
        a, b = ann.line(want), bob.line(want)
        checks.report(a is not None and b is not None, "the new room's messages arrive",
                      f"ann got {a!r}, bob got {b!r}")

    if screenshot:
        shoot(browser, ann, bob, screenshot, checks)

    # 5. Closes show their code and reason.
    bob.say("/kick")
    ok, status = bob.state("closed")
    checks.report(ok and 'code 4000, reason "kicked"' in status, "a server close is shown",
                  f"status {status!r}")
    ann.click("connect")
    ok, status = ann.state("closed")
    checks.report(ok and status.startswith("closed: code 1000"), "Disconnect closes with 1000",
                  f"status {status!r}")

    errors = browser.errors(ann.session) + browser.errors(bob.session)
    checks.report(not errors, "no script errors or policy refusals in the page",
                  "; ".join(map(str, errors[:5])) or "none")


def shoot(browser, ann, bob, path, checks):
    """Both tabs side by side, each as its own window shows it, in one PNG."""
    shots = {t.name: base64.b64encode(t.screenshot()).decode() for t in (ann, bob)}
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{shots[n]}"><figcaption>{n}</figcaption></figure>'
        for n in ("ann", "bob"))
    html = ("<!doctype html><meta charset=utf-8><style>body{margin:0;display:flex;gap:12px;"
            "padding:12px;background:#d9dde3;font:14px system-ui}figure{margin:0}img{display:block;"
            "border:1px solid #999;background:#fff}figcaption{text-align:center;padding-top:4px}"
            f"</style>{figures}")
    board = Tab(browser, "both")
    board.call("Emulation.setDeviceMetricsOverride",
               {"width": 2 * VIEW[0] + 40, "height": VIEW[1] + 50, "deviceScaleFactor": 1,
                "mobile": False})
    board.open("data:text/html;base64," + base64.b64encode(html.encode()).decode())
    png = board.screenshot()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)
    checks.report(png.startswith(b"\x89PNG"), "screenshot", f"{len(png)} bytes in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url", help="the chat page, e.g. http://127.0.0.1:8080/")
    ap.add_argument("--ws-path", default="/ws", help="the WebSocket path the page must carry")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--screenshot", metavar="FILE", help="write both users' views here (PNG)")
    args = ap.parse_args()
    # On SIGTERM (the runner's time limit) unwind, so that Chromium's process group is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    page_url = urllib.parse.urlsplit(args.url)._replace(query="", fragment="").geturl()

    chromium = find_chromium()
    if not chromium:
        print(f"FAIL {LABEL}: chromium not found (apt-get install chromium)")
        print("0 passed, 1 failed")
        sys.exit(1)
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"browser: {version}", flush=True)

    checks = Checks()
    profile = tempfile.mkdtemp(prefix="ringgate-chromium-")
    log_path = os.path.join(profile, "chromium.log")
    t0 = time.monotonic()
    browser = Chromium(chromium, profile, log_path)
    # The whole run under one limit: a hung step must not outlive the runner's own.
    timer = threading.Timer(args.timeout, lambda: os.killpg(browser.pid, signal.SIGKILL))
    timer.start()
    try:
        run(browser, page_url, args.ws_path, checks, args.screenshot)
    except (CdpError, OSError, ValueError, TypeError, KeyError) as e:
        checks.report(False, "the run", f"stopped: {type(e).__name__}: {e}")
        with open(log_path, errors="replace") as f:
            for line in f.readlines()[-20:]:
                print("  " + line.rstrip())
    finally:
        timer.cancel()
        browser.stop()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"{LABEL} run took {time.monotonic() - t0:.1f}s")
    print(f"{checks.passed} passed, {checks.failed} failed")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
