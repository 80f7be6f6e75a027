#!/usr/bin/env python3
"""A real browser for the portal tests: headless Chromium driven over W3C WebDriver.

Python's standard library only (urllib + json, no selenium), so what the tests assert is
what Debian's chromium + chromium-driver do, not what a client library papers over.

  webdriver.py run STEPS.json
      Runs a JSON list of steps in one browser session and prints a JSON list with one
      result per step on stdout. The file may also be {"options": {...}, "steps": [...]}.
      A failing step prints {"error", "step" (0-based index), "op", "url", "results"
      (those of the steps before it)} and exits 1. STEPS below is the vocabulary.
  webdriver.py png-check PNG [--width W] [--height H] [--min-colours N] [--min-ink F]
      Checks with PIL that PNG has that size and is not blank; prints JSON stats and
      exits 1 when a check fails.

Options: "window": [w, h] (default 1024x900: the page's viewport and the screenshot
size), "timeout": seconds for waits (default 10), "map_hosts": {"gw.phigate.test":
"127.0.0.1"} (reach those names at those addresses; any other host but 127.0.0.1 and
localhost is refused, so a hostile page never reaches off the machine).

STEPS (one object each; CSS is a CSS selector; steps that take CSS wait up to
"timeout" seconds (optional key, default the session's) for a match):
  {"go": URL}                       -> {"url", "title", "alert"}  (see PAGE)
  {"fill": CSS, "text": S, "clear": true}  type S (clears first)  -> {"ok": true}
  {"click": CSS}                    -> PAGE after the click (a form POST, a link)
  {"submit": CSS}                   requestSubmit() of the form CSS is, or is inside -> PAGE
  {"wait_for": CSS}                 -> {"ok": true}
  {"wait_url": SUBSTRING}           wait until the URL contains it -> {"url"}
  {"text": CSS}                     rendered text (innerText) -> {"text"}
  {"attr": CSS, "name": N}          -> {"value"} (null if absent)
  {"count": CSS}                    no waiting -> {"count"}
  {"follow": CSS}                   navigate to the element's href -> PAGE + {"href"}
  {"fetch": URL} / {"fetch_link": CSS}  GET from inside the page (its cookies, relative
                                    URLs allowed), for attachments a click would download
                                    -> {"url", "status", "headers": {lower-case: v},
                                        "body" (UTF-8, lossy), "body_b64", "bytes"}
  {"source": true}                  -> {"source"}  (the DOM serialised, as now)
  {"title": true} / {"url": true}   -> {"title"} / {"url"}
  {"eval": JS, "args": [...]}       function body, use return -> {"value"}
  {"cookies": true}                 -> {"cookies": [{"name", "value", "domain", "path",
                                        "httpOnly", "secure", "sameSite", "expiry"?}]}
  {"screenshot": PATH}              viewport PNG -> {"path", "bytes", "width", "height"}
  {"console": true}                 -> {"entries": [{"level", "source", "message",
                                        "timestamp"}]}  (CSP violations show here)
  {"requests": true}                -> {"requests": [{"url", "method", "type", "frame",
                                        "status", "failed", "blocked"}],  (DevTools)
                                        "wire": [{"method", "host", "port", "url",
                                        "allowed"}],                      (the proxy)
                                        "origins", "contacted", "hosts"}
  {"clear_logs": true}              console, requests and wire start again -> {"ok": true}
  {"alert": true|"accept"|"dismiss"} -> {"open", "text", "calls": [{"type", "text"}]}
  {"frame": CSS|null}               into an iframe / back to the top -> {"ok": true}
  {"back": true}                    -> {"url"}
  {"sleep": SECONDS}                -> {"ok": true}
PAGE is {"url", "title", "alert": null}, or {"url": null, "title": null, "alert": TEXT}
while a dialog is open (every other step then fails until an alert step closes it).
console, requests and wire are everything since the session started or clear_logs.
"requests" comes from the DevTools log of the top page's renderer: it includes attempts
CSP blocked ("blocked": "csp") but misses requests made inside out-of-process frames
(sandboxed or cross-site iframes). "wire" is every connection any frame made, through a
recording proxy: the URL for plain HTTP, only host and port for HTTPS (CONNECT).
"contacted" is the sorted host:port list of wire; "hosts" adds every host in requests.
"calls" lists alert()/confirm()/prompt()/print() calls in the current frame's document
(a hook set before the page's scripts; not in out-of-process frames): a dialog opened
while a page with such a frame loads may be closed by Chromium before "open" sees it.
"""
import base64
import json
import os
import shutil
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The W3C key under which an element reference comes back.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


DIALOG_HOOK = """
(() => {
  const calls = [];
  Object.defineProperty(window, '__webdriver_dialogs', {value: calls});
  for (const name of ['alert', 'confirm', 'prompt', 'print']) {
    const real = window[name];
    window[name] = function (...args) {
      calls.push({type: name, text: args.length ? String(args[0]) : ''});
      return real.apply(this, args);
    };
  }
})();
"""


class StepError(Exception):
    pass


FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class WireLog:
    """A recording HTTP proxy on loopback that Chromium sends all its traffic through.

    The DevTools log (requests()) only sees the top page's renderer: a sandboxed or
    cross-site iframe runs in another process and its requests are missing there, while
    every connection of every process goes through here. For HTTPS only the tunnel is
    seen (CONNECT host:port), for plain HTTP the whole URL. Only loopback (and the
    names in map_hosts) are reached; anything else is logged with "allowed": false and
    refused, so a test never leaves the machine.
    """

    def __init__(self, map_hosts):
        self.map_hosts = dict(map_hosts)
        # Unguessable, so a hostile page cannot hide its own requests under it.
        self.internal = "chromium-%s.invalid" % os.urandom(8).hex()
        self.entries = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # closed by quit()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _address(self, host):
        if host in self.map_hosts:
            return self.map_hosts[host]
        if host in ("127.0.0.1", "localhost"):
            return "127.0.0.1"
        return None

    def _serve(self, client):
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                url = None
            else:
                u = urllib.parse.urlsplit(target)
                host, port, url = u.hostname or "", u.port or 80, target
                # One request per connection, so each is logged: Chromium would otherwise
                # reuse this connection for another host without asking again.
                hop = ("connection", "proxy-connection")
                headers = [l for l in lines[1:] if l.split(":")[0].lower() not in hop]
                path = urllib.parse.urlunsplit(("", "", u.path or "/", u.query, ""))
                lines = ["%s %s %s" % (method, path, version)] + headers + ["Connection: close"]
            host = host.strip("[]")
            address = self._address(host)
            if host == self.internal:
                client.sendall(FORBIDDEN)
                return
            with self.lock:
                entry = {"method": method, "host": host, "port": int(port), "url": url}
                self.entries.append(dict(entry, allowed=address is not None))
            if address is None:
                client.sendall(FORBIDDEN)
                return
            upstream = socket.create_connection((address, int(port)), timeout=30)
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            pipe(client, upstream)
        except (OSError, ValueError):
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def take(self):
        with self.lock:
            return list(self.entries)

    def clear(self):
        with self.lock:
            self.entries = []

    def close(self):
        self.sock.close()


def pipe(a, b):
    """Copy bytes both ways until either side closes (or 60 s of silence)."""
    while True:
        ready, _, _ = select.select([a, b], [], [], 60)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class WebDriver:
    """One chromedriver process with one headless Chromium session."""

    def __init__(self, window=(1024, 900), map_hosts=None, timeout=10):
        self.timeout = timeout
        self.driver = None
        self.session = None
        self.wire = None
        self.profile = tempfile.mkdtemp(prefix="phigate-chromium-")
        self.driver_log = os.path.join(self.profile, "chromedriver.log")
        # Logs are drained from chromedriver on every read, so they are kept here and
        # each read returns everything since the session started (or clear_logs).
        self.console_entries = []
        self.network = {}  # requestId -> request record, in first-seen order
        try:
            self.wire = WireLog(map_hosts or {})
            self._start_driver()
            self._new_session(window, map_hosts or {})
        except BaseException:
            self.quit()
            raise

    # -- process and session --------------------------------------------------------

    def _start_driver(self):
        # A free loopback port; chromedriver binds it right after, so a clash is rare and
        # shows up as a start failure with the log below.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = "http://127.0.0.1:%d" % self.port
        # Own process group, so quit() can kill chromedriver and any Chromium it left.
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, "--port=%d" % self.port, "--log-path=" + self.driver_log],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.driver.poll() is not None:
                raise RuntimeError("chromedriver exited: " + self._driver_log_tail())
            try:
                if self._call("GET", "/status", timeout=2).get("ready"):
                    return
            except (OSError, StepError):
                pass
            time.sleep(0.05)
        raise RuntimeError("chromedriver not ready in 20 s: " + self._driver_log_tail())

    def _driver_log_tail(self):
        try:
            with open(self.driver_log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no chromedriver log)"

    def _new_session(self, window, map_hosts):
        args = [
            "--headless=new",
            "--disable-gpu",
            "--user-data-dir=" + os.path.join(self.profile, "profile"),
            "--window-size=%d,%d" % tuple(window),
            # Everything through the recording proxy, loopback included (Chromium
            # bypasses proxies for loopback unless told <-loopback>).
            "--proxy-server=http://127.0.0.1:%d" % self.wire.port,
            "--proxy-bypass-list=<-loopback>",
            # WebRTC would send UDP around the proxy.
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
            # Loopback only: none of Chromium's own traffic to Google (updates, safe
            # browsing, metrics) during a test.
            "--dns-prefetch-disable",
            # Filling a form asks the autofill server; a profile asks for Google accounts.
            "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,"
            "MediaRouter,DialMediaRouteProvider,CertificateTransparencyComponentUpdater",
            # Chromium's own calls home (Google accounts, APIs) go to a name only this
            # session knows, which the proxy refuses and leaves out of the log: they are
            # the browser's, not the page's, and come at odd times.
            "--gaia-url=http://%s" % self.wire.internal,
            "--google-apis-url=http://%s" % self.wire.internal,
            "--lso-url=http://%s" % self.wire.internal,
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--no-first-run",
            "--no-default-browser-check",
            "--metrics-recording-only",
            "--password-store=basic",
            "--use-mock-keychain",
            "--hide-scrollbars",
            "--mute-audio",
        ]
        # Every host but loopback resolves to nothing unless mapped (IP literals too): a
        # remote URL in a hostile page still shows in the request log, as failed, but
        # never leaves the machine.
        rules = ["MAP %s %s" % (h, a) for h, a in sorted(map_hosts.items())]
        rules += ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1"]
        args.append("--host-resolver-rules=" + ", ".join(rules))
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to start as root otherwise.
        caps = {
            "browserName": "chrome",
            # The portal's certificate is from the per-test CA, which Chromium's NSS store
            # does not know.
            "acceptInsecureCerts": True,
            # Leave alert()/confirm() open so a step can see one (alert step); any other
            # command then fails with "unexpected alert open", which is loud on purpose.
            "unhandledPromptBehavior": "ignore",
            "pageLoadStrategy": "normal",
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "perfLoggingPrefs": {"enableNetwork": True, "enablePage": False},
            },
        }
        value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, 60)
        self.session = value["sessionId"]
        self.s("POST", "/timeouts", {"pageLoad": 30000, "script": 30000, "implicit": 0})
        # --window-size is the outer size; grow the window by the browser's own margins so
        # the page (and so a screenshot) gets exactly `window`.
        self.navigate("about:blank")
        inner = self.execute("return [window.innerWidth, window.innerHeight]")
        rect = self.s("GET", "/window/rect")
        width = rect["width"] + window[0] - inner[0]
        height = rect["height"] + window[1] - inner[1]
        self.s("POST", "/window/rect", {"width": width, "height": height})
        # Record every alert/confirm/prompt/print call in each document, before its own
        # scripts run: chromedriver misses a dialog opened while the page is still loading
        # when it has a sandboxed iframe (the call returns at once), so "no dialog was
        # open" alone would not prove no script ran. Out-of-process frames (sandboxed
        # or cross-site iframes) are other targets and do not get this.
        hook = {"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": DIALOG_HOOK}}
        self.s("POST", "/goog/cdp/execute", hook)
        # Chromium's new-tab page loaded before about:blank: its chrome:// requests are not
        # the test's.
        self.clear_logs()

    def quit(self):
        """End the session and always kill chromedriver (and any Chromium left over)."""
        if self.session is not None:
            try:
                self._call("DELETE", "/session/" + self.session, timeout=10)
            except Exception:
                pass
            self.session = None
        if self.driver is not None:
            if self.driver.poll() is None:
                self.driver.terminate()
                try:
                    self.driver.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.driver.pid, signal.SIGKILL)
            except OSError:
                pass  # the group is gone already
            self.driver.wait()
            self.driver = None
        if self.wire is not None:
            self.wire.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- the wire protocol ----------------------------------------------------------

    def _call(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        if data is None and method == "POST":
            data = b"{}"
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json; charset=utf-8")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                reply = json.load(r)
        except urllib.error.HTTPError as e:
            try:
                reply = json.load(e)
            except ValueError:
                raise StepError("%s %s: HTTP %d" % (method, path, e.code))
        value = reply.get("value")
        if isinstance(value, dict) and "error" in value:
            raise StepError("%s: %s" % (value["error"], value.get("message", "").split("\n")[0]))
        return value

    def s(self, method, path, body=None, timeout=60):
        """A command on the session."""
        return self._call(method, "/session/%s%s" % (self.session, path), body, timeout)

    # -- commands -------------------------------------------------------------------

    def navigate(self, url):
        self.s("POST", "/url", {"url": url})

    def current_url(self):
        return self.s("GET", "/url")

    def title(self):
        return self.s("GET", "/title")

    def source(self):
        return self.s("GET", "/source")

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css):
        found = self.s("POST", "/elements", {"using": "css selector", "value": css})
        return [e[ELEMENT] for e in found]

    def wait_for(self, css, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            found = self.find_all(css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise StepError("no element matches %r after %ss" % (css, timeout or self.timeout))
            time.sleep(0.05)

    def send_keys(self, element, text, clear=True):
        if clear:
            self.s("POST", "/element/%s/clear" % element)
        self.s("POST", "/element/%s/value" % element, {"text": text})

    def click(self, element):
        self.s("POST", "/element/%s/click" % element)

    def text(self, element):
        return self.s("GET", "/element/%s/text" % element)

    def attribute(self, element, name):
        return self.s("GET", "/element/%s/attribute/%s" % (element, urllib.parse.quote(name)))

    def execute(self, script, args=()):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def execute_async(self, script, args=()):
        return self.s("POST", "/execute/async", {"script": script, "args": list(args)})

    def submit(self, element):
        # requestSubmit() runs validation and submit handlers as a user's Enter would;
        # the element may be the form or any control inside it.
        self.execute(
            "const e = arguments[0];"
            "const f = e.tagName === 'FORM' ? e : (e.form || e.closest('form'));"
            "if (!f) throw new Error('no form around the element'); f.requestSubmit();",
            [{ELEMENT: element}],
        )

    def cookies(self):
        return self.s("GET", "/cookie")

    def screenshot(self, path):
        png = base64.b64decode(self.s("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return png

    def switch_frame(self, css):
        if css is None:
            self.s("POST", "/frame", {"id": None})
        else:
            self.s("POST", "/frame", {"id": {ELEMENT: self.wait_for(css)}})

    def alert(self, action=None):
        try:
            text = self.s("GET", "/alert/text")
        except StepError as e:
            if str(e).startswith("no such alert"):
                return {"open": False, "text": None}
            raise
        if action in ("accept", "dismiss"):
            try:
                self.s("POST", "/alert/" + action)
            except StepError as e:
                # Chromium closes a dialog by itself when an out-of-process iframe of the
                # page commits its navigation: it may be gone by now.
                if not str(e).startswith(("no such alert", "invalid argument")):
                    raise
        return {"open": True, "text": text}

    def dialog_calls(self):
        """The alert/confirm/prompt/print calls made in the current frame's document."""
        return self.execute("return window.__webdriver_dialogs || null")

    def page(self):
        """{"url", "title"} of the page, or {"url": None, "alert": text} while a dialog is
        open (then nothing else can be read until an alert step closes it)."""
        state = self.alert()
        if state["open"]:
            return {"url": None, "title": None, "alert": state["text"]}
        return {"url": self.current_url(), "title": self.title(), "alert": None}

    def _log(self, kind):
        # chromedriver still serves the legacy log endpoint in W3C mode.
        return self.s("POST", "/se/log", {"type": kind})

    def console(self):
        for e in self._log("browser"):
            self.console_entries.append(
                {
                    "level": e.get("level"),
                    "source": e.get("source"),
                    "message": e.get("message"),
                    "timestamp": e.get("timestamp"),
                }
            )
        return list(self.console_entries)

    def requests(self):
        """Every request the page (and its frames) started, from the DevTools Network
        events in the performance log: url, method, resource type, status, and whether it
        failed or was blocked (e.g. by CSP) before it went out."""
        for e in self._log("performance"):
            msg = json.loads(e["message"])["message"]
            method, p = msg.get("method", ""), msg.get("params", {})
            rid = p.get("requestId")
            if method == "Network.requestWillBeSent":
                if rid in self.network and p.get("redirectResponse"):
                    # A redirect reuses the requestId: keep the hop as its own entry.
                    hop = self.network.pop(rid)
                    hop["status"] = p["redirectResponse"].get("status")
                    self.network["%s#%d" % (rid, len(self.network))] = hop
                self.network[rid] = {
                    "url": p["request"]["url"],
                    "method": p["request"].get("method"),
                    "type": p.get("type"),
                    "frame": p.get("frameId"),
                    "status": None,
                    "failed": None,
                    "blocked": None,
                }
            elif method == "Network.responseReceived" and rid in self.network:
                self.network[rid]["status"] = p["response"].get("status")
            elif method == "Network.loadingFailed" and rid in self.network:
                self.network[rid]["failed"] = p.get("errorText") or None
                cors = p.get("corsErrorStatus", {}).get("corsError")
                self.network[rid]["blocked"] = p.get("blockedReason") or cors
        return list(self.network.values())

    def clear_logs(self):
        self.console()
        self.requests()
        self.console_entries, self.network = [], {}
        self.wire.clear()


# -- steps ---------------------------------------------------------------------------

def origin(url):
    u = urllib.parse.urlsplit(url)
    return "%s://%s" % (u.scheme, u.netloc) if u.netloc else u.scheme + ":"


def hostport(url):
    """host:port of a network URL (default port filled in); None for data:, about: etc."""
    u = urllib.parse.urlsplit(url)
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(u.scheme)
    if not u.hostname or default is None:
        return None
    return "%s:%d" % (u.hostname, u.port or default)


def png_size(png):
    # IHDR is the first chunk: width and height are big-endian at bytes 16..24.
    return struct.unpack(">II", png[16:24])


FETCH_JS = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
fetch(url, {credentials: 'include', redirect: 'follow'}).then(async r => {
  const buf = new Uint8Array(await r.arrayBuffer());
  let bin = ''; for (const b of buf) bin += String.fromCharCode(b);
  const headers = {}; r.headers.forEach((v, k) => headers[k] = v);
  done({url: r.url, status: r.status, headers, body_b64: btoa(bin), bytes: buf.length});
}).catch(e => done({error: String(e)}));
"""


def element(wd, step, key):
    """The element step[key] selects, waiting up to step["timeout"] for it."""
    return wd.wait_for(step[key], step.get("timeout"))


def run_step(wd, step):
    """One step: returns (op name, result). The vocabulary is documented in STEPS."""
    if "go" in step:
        wd.navigate(step["go"])
        return "go", wd.page()
    if "fill" in step:
        wd.send_keys(element(wd, step, "fill"), step["text"], step.get("clear", True))
        return "fill", {"ok": True}
    if "click" in step:
        wd.click(element(wd, step, "click"))
        return "click", wd.page()
    if "submit" in step:
        wd.submit(element(wd, step, "submit"))
        return "submit", wd.page()
    if "wait_for" in step:
        wd.wait_for(step["wait_for"], step.get("timeout"))
        return "wait_for", {"ok": True}
    if "wait_url" in step:
        want, deadline = step["wait_url"], time.monotonic() + step.get("timeout", wd.timeout)
        while want not in wd.current_url():
            if time.monotonic() > deadline:
                raise StepError("URL %r does not contain %r" % (wd.current_url(), want))
            time.sleep(0.05)
        return "wait_url", {"url": wd.current_url()}
    if "text" in step:
        return "text", {"text": wd.text(element(wd, step, "text"))}
    if "attr" in step:
        return "attr", {"value": wd.attribute(element(wd, step, "attr"), step["name"])}
    if "count" in step:
        return "count", {"count": len(wd.find_all(step["count"]))}
    if "follow" in step:
        href = wd.execute("return arguments[0].href", [{ELEMENT: element(wd, step, "follow")}])
        if not href:
            raise StepError("%r has no href" % step["follow"])
        wd.navigate(href)
        return "follow", dict(wd.page(), href=href)
    if "fetch" in step or "fetch_link" in step:
        url = step.get("fetch")
        if url is None:
            link = element(wd, step, "fetch_link")
            url = wd.execute("return arguments[0].href", [{ELEMENT: link}])
        r = wd.execute_async(FETCH_JS, [url])
        if "error" in r:
            raise StepError("fetch %s: %s" % (url, r["error"]))
        body = base64.b64decode(r["body_b64"])
        r["body"] = body.decode("utf-8", "replace")
        return ("fetch" if "fetch" in step else "fetch_link"), r
    if "source" in step:
        return "source", {"source": wd.source()}
    if "title" in step:
        return "title", {"title": wd.title()}
    if "url" in step:
        return "url", {"url": wd.current_url()}
    if "eval" in step:
        return "eval", {"value": wd.execute(step["eval"], step.get("args", []))}
    if "cookies" in step:
        return "cookies", {"cookies": wd.cookies()}
    if "screenshot" in step:
        png = wd.screenshot(step["screenshot"])
        w, h = png_size(png)
        return "screenshot", {
            "path": step["screenshot"], "bytes": len(png), "width": w, "height": h,
        }
    if "console" in step:
        return "console", {"entries": wd.console()}
    if "requests" in step:
        reqs, wire = wd.requests(), wd.wire.take()
        contacted = {"%s:%d" % (w["host"], w["port"]) for w in wire}
        tried = {hostport(r["url"]) for r in reqs} - {None}
        return "requests", {
            "requests": reqs,
            "wire": wire,
            "origins": sorted({origin(r["url"]) for r in reqs}),
            # What went on the wire (asked of the proxy, allowed or not), from any frame.
            "contacted": sorted(contacted),
            # That and every host a page tried, even if CSP or the like stopped it.
            "hosts": sorted(contacted | tried),
        }
    if "clear_logs" in step:
        wd.clear_logs()
        return "clear_logs", {"ok": True}
    if "alert" in step:
        action = step["alert"] if step["alert"] in ("accept", "dismiss") else None
        state = wd.alert(action)
        # The hook's record can only be read once no dialog blocks the page.
        state["calls"] = wd.dialog_calls() if not state["open"] or action else None
        return "alert", state
    if "frame" in step:
        wd.switch_frame(step["frame"])
        return "frame", {"ok": True}
    if "back" in step:
        wd.s("POST", "/back")
        return "back", {"url": wd.current_url()}
    if "sleep" in step:
        time.sleep(float(step["sleep"]))
        return "sleep", {"ok": True}
    raise StepError("unknown step %s" % json.dumps(step))


def cmd_run(path):
    with open(path) as f:
        spec = json.load(f)
    if isinstance(spec, list):
        spec = {"steps": spec}
    steps, options = spec["steps"], spec.get("options", {})
    results, wd, i, op = [], None, None, "start"

    def fail(message):
        url = None
        try:
            url = wd.current_url() if wd else None
        except Exception:
            pass
        print(json.dumps({"error": message, "step": i, "op": op, "url": url, "results": results}))
        return 1

    try:
        started = time.monotonic()
        window = tuple(options.get("window", (1024, 900)))
        wd = WebDriver(window, options.get("map_hosts"), options.get("timeout", 10))
        sys.stderr.write("webdriver.py: session up in %.2f s\n" % (time.monotonic() - started))
        for i, step in enumerate(steps):
            op = next(iter(step), "?")
            op, result = run_step(wd, step)
            results.append(result)
        print(json.dumps(results))
        return 0
    except (StepError, RuntimeError, OSError, KeyError, TypeError, ValueError) as e:
        traceback.print_exc()  # stderr: which call failed, for whoever reads the test log
        return fail("%s: %s" % (type(e).__name__, e))
    finally:
        if wd is not None:
            wd.quit()


# -- png-check -----------------------------------------------------------------------

def cmd_png_check(argv):
    from PIL import Image  # python3-pil; only this subcommand needs it

    opts = {"--width": None, "--height": None, "--min-colours": "8", "--min-ink": "0.001"}
    path = None
    it = iter(argv)
    for a in it:
        if a in opts:
            opts[a] = next(it)
        else:
            path = a
    img = Image.open(path).convert("RGB")
    w, h = img.size
    colours = img.getcolors(maxcolors=w * h)  # [(count, (r, g, b))]
    background_count, background = max(colours)
    stats = {
        "path": path,
        "width": w,
        "height": h,
        "colours": len(colours),
        "background": list(background),
        # Share of pixels that differ from the most common colour: text, borders, etc.
        "ink": round(1 - background_count / (w * h), 4),
    }
    problems = []
    if opts["--width"] and w != int(opts["--width"]):
        problems.append("width %d, expected %s" % (w, opts["--width"]))
    if opts["--height"] and h != int(opts["--height"]):
        problems.append("height %d, expected %s" % (h, opts["--height"]))
    if len(colours) < int(opts["--min-colours"]):
        problems.append("%d distinct colours, expected %s" % (len(colours), opts["--min-colours"]))
    if stats["ink"] < float(opts["--min-ink"]):
        problems.append("only %.4f of pixels differ from the background" % stats["ink"])
    stats["ok"] = not problems
    stats["problems"] = problems
    print(json.dumps(stats))
    return 0 if stats["ok"] else 1


def main():
    # SIGTERM (e.g. the Rust helper's timeout) unwinds through quit() like an error.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        return cmd_run(sys.argv[2])
    if len(sys.argv) >= 3 and sys.argv[1] == "png-check":
        return cmd_png_check(sys.argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
