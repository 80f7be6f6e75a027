//! The real-browser harness itself (tests/peers/webdriver.py, tests/common/browser.rs),
//! proved against a small HTTPS site in Python (http.server + ssl, the test CA's server
//! certificate) before the portal tests rely on it: a form POST, a redirect, a cookie,
//! an attachment link, a reply submitted from a textarea, a screenshot PIL finds not
//! blank, and a request log that shows only the site's own origin for a hostile snippet
//! its CSP blocks, but does show a page that leaks (including from a sandboxed iframe,
//! which the DevTools log alone misses).

mod common;

use common::browser::{browser_available, browser_run, png_check};
use common::{Pki, PYTHON};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The site: a portal-like HTTPS server and an "evil" plain-HTTP server standing for any
/// remote host, each logging every request as a JSON line. Prints "PORTAL EVIL" ports.
const SITE: &str = r#"
import http.server, json, ssl, sys, threading
cert, key, log_path = sys.argv[1:4]
lock = threading.Lock()
CSP = "default-src 'self'; script-src 'none'"

def log(server, method, path, body=""):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps({"server": server, "method": method, "path": path, "body": body}) + "\n")

# A hostile e-mail body: remote images (by address and by name), inline script, an
# event handler and an alert. The portal's CSP must stop all of it.
def hostile(evil):
    return ('<div id=mail><p>Hello from the mail</p>'
            '<img src="http://127.0.0.1:%d/top.png"><img src="https://remote.example/x.png">'
            '<script>window.__pwned = 1; alert("pwned")</script>'
            '<img src=x onerror="window.__pwned = 2"></div>' % evil)

PAGE = '<!doctype html><html><head><title>%s</title></head><body><h1>%s</h1>%s</body></html>'

class Portal(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, status, body="", headers=(), csp=True):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if csp:
            self.send_header("Content-Security-Policy", CSP)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        log("portal", "GET", self.path)
        evil = EVIL_PORT
        if self.path == "/":
            form = ('<form method=post action=/code><input name=code>'
                    '<button type=submit>Open</button></form>')
            self.answer(200, PAGE % ("Landing", "Secure message", form + hostile(evil)))
        elif self.path.startswith("/view"):
            body = ('<p id=got>Code accepted</p><a id=att href="/att/report.txt">report.txt</a>'
                    '<form method=post action=/reply><textarea name=reply></textarea>'
                    '<button type=submit>Reply</button></form>')
            self.answer(200, PAGE % ("View", "Your message", body))
        elif self.path == "/att/report.txt":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Disposition", 'attachment; filename="report.txt"')
            self.send_header("Content-Length", "14")
            self.end_headers()
            self.wfile.write(b"lab results ok")
        elif self.path == "/leaky":
            # No CSP: the remote image and the script go through, and so does the image
            # in a sandboxed iframe (another renderer process).
            frame = '<iframe sandbox srcdoc="<img src=&quot;http://127.0.0.1:%d/frame.png&quot;>"></iframe>' % evil
            body = ('<img src="http://127.0.0.1:%d/top.png">' % evil) + frame
            body += '<script>window.__pwned = 1; alert("pwned")</script>'
            self.answer(200, PAGE % ("Leaky", "Leaky", body), csp=False)
        else:
            self.answer(404, "not found")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        log("portal", "POST", self.path, body)
        if self.path == "/code":
            cookie = ("Set-Cookie", "sid=s3cr3t; HttpOnly; Secure; SameSite=Strict; Path=/")
            self.answer(303, headers=[("Location", "/view"), cookie])
        else:
            self.answer(303, headers=[("Location", "/view?sent=1")])

class Evil(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        log("evil", "GET", self.path)
        self.send_response(204)
        self.end_headers()

evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
EVIL_PORT = evil.server_address[1]
portal = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Portal)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
portal.socket = ctx.wrap_socket(portal.socket, server_side=True)
threading.Thread(target=evil.serve_forever, daemon=True).start()
print(portal.server_address[1], EVIL_PORT, flush=True)
portal.serve_forever()
"#;

struct Site {
    child: Child,
    portal: u16,
    evil: u16,
    log: std::path::PathBuf,
}

impl Site {
    fn start(dir: &std::path::Path) -> Site {
        let pki = Pki::new(dir);
        let log = dir.join("site.log");
        let mut child = Command::new(PYTHON)
            .args(["-c", SITE])
            .arg(&pki.cert)
            .arg(&pki.key)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test site");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("site ports");
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(ports.len(), 2, "site printed {line:?}");
        Site {
            child,
            portal: ports[0],
            evil: ports[1],
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.portal)
    }

    /// Every request the site got, in order, as logged by the server itself.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("site log line"))
            .collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hosts` as the logs list them: sorted as strings.
fn sorted(hosts: &[&str]) -> Value {
    let mut v = hosts.to_vec();
    v.sort();
    json!(v)
}

#[test]
fn browser_drives_an_https_site_and_sees_every_request() {
    if !browser_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = Site::start(tmp.path());
    let shot = tmp.path().join("view.png");
    let portal_host = format!("127.0.0.1:{}", site.portal);
    let evil_host = format!("127.0.0.1:{}", site.evil);

    let steps = json!([
        {"go": site.url("/")},                                         // 0
        {"eval": "return typeof window.__pwned"},                      // 1
        {"alert": true},                                               // 2
        {"text": "#mail"},                                             // 3
        {"fill": "input[name=code]", "text": "123456"},                // 4
        {"click": "button[type=submit]"},                              // 5
        {"wait_url": "/view"},                                         // 6
        {"text": "#got"},                                              // 7
        {"cookies": true},                                             // 8
        {"fetch_link": "a#att"},                                       // 9
        {"fill": "textarea[name=reply]", "text": "Thanks,\nsee you"},  // 10
        {"submit": "textarea[name=reply]"},                            // 11
        {"wait_url": "sent=1"},                                        // 12
        {"screenshot": shot.to_string_lossy()},                        // 13
        {"requests": true},                                            // 14
        {"console": true},                                             // 15
        {"clear_logs": true},                                          // 16
        {"go": site.url("/leaky")},                                    // 17
        {"alert": "dismiss"},                                          // 18
        {"eval": "return window.__pwned"},                             // 19
        {"frame": "iframe"},                                           // 20
        {"eval": "return document.body.innerHTML"},                    // 21
        {"frame": null},                                               // 22
        {"sleep": 0.5},                                                // 23
        {"requests": true},                                            // 24
    ]);
    let started = std::time::Instant::now();
    let r = browser_run(&steps).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("browser session: {:?}", started.elapsed());
    assert_eq!(r.len(), 25, "{r:?}");

    // The landing page: the hostile snippet ran nothing and opened no dialog.
    assert_eq!(r[0]["title"], "Landing", "{}", r[0]);
    assert_eq!(r[0]["alert"], Value::Null);
    assert_eq!(r[1]["value"], "undefined", "a script ran: {}", r[1]);
    assert_eq!(r[2], json!({"open": false, "text": null, "calls": []}));
    assert!(r[3]["text"]
        .as_str()
        .unwrap()
        .contains("Hello from the mail"));

    // The form POST reached the server, its 303 landed on /view with the cookie. (The
    // click's own page snapshot can be taken before the navigation commits: the URL is
    // asserted after waiting for it.)
    assert_eq!(r[6]["url"], site.url("/view"), "{}", r[6]);
    assert_eq!(r[7]["text"], "Code accepted");
    let sid = r[8]["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sid")
        .unwrap_or_else(|| panic!("no sid cookie: {}", r[8]))
        .clone();
    assert_eq!(
        (&sid["value"], &sid["httpOnly"], &sid["secure"]),
        (&json!("s3cr3t"), &json!(true), &json!(true))
    );
    // The attachment, fetched by the page with its cookie.
    assert_eq!(r[9]["status"], 200, "{}", r[9]);
    assert_eq!(r[9]["body"], "lab results ok");
    assert!(r[9]["headers"]["content-disposition"]
        .as_str()
        .unwrap()
        .starts_with("attachment"));
    assert_eq!(r[12]["url"], site.url("/view?sent=1"));

    let got = site.requests();
    let posts: Vec<(&str, &str)> = got
        .iter()
        .filter(|q| q["method"] == "POST")
        .map(|q| (q["path"].as_str().unwrap(), q["body"].as_str().unwrap()))
        .collect();
    assert_eq!(
        posts,
        [
            ("/code", "code=123456"),
            ("/reply", "reply=Thanks%2C%0D%0Asee+you")
        ],
        "{got:?}"
    );

    // The screenshot is the window's size and shows the page.
    assert_eq!(
        (r[13]["width"].as_u64(), r[13]["height"].as_u64()),
        (Some(1024), Some(900))
    );
    let stats = png_check(&shot, 1024, 900, 4).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("screenshot: {stats}");

    // Until /leaky, every connection the browser made went to the site, nothing to the
    // evil server or the remote name; the DevTools log shows the blocked attempts as
    // blocked by CSP, so the log does see what a page tries.
    let log = &r[14];
    assert_eq!(log["contacted"], json!([portal_host]), "{log}");
    let tried = sorted(&[&portal_host, &evil_host, "remote.example:443"]);
    assert_eq!(log["hosts"], tried, "{log}");
    assert!(log["wire"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["allowed"] == true && w["port"] == site.portal));
    let blocked: Vec<&str> = log["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["blocked"] == "csp")
        .map(|q| q["url"].as_str().unwrap())
        .collect();
    assert!(
        blocked.contains(&format!("http://{evil_host}/top.png").as_str()),
        "{log}"
    );
    // (The site's own log, up to /leaky.)
    assert!(
        !got.iter()
            .take_while(|q| q["path"] != "/leaky")
            .any(|q| q["server"] == "evil"),
        "evil got {got:?}"
    );
    let console = r[15]["entries"].to_string();
    assert!(console.contains("Content Security Policy"), "{console}");

    // The positive control: without CSP the script runs and calls alert() (whether the
    // dialog is still open when looked at is up to Chromium, hence "calls"), and the
    // request log names the evil host, including the sandboxed iframe's image that only
    // the proxy log ("wire") sees.
    assert_eq!(
        r[18]["calls"],
        json!([{"type": "alert", "text": "pwned"}]),
        "{}",
        r[18]
    );
    assert_eq!(r[19]["value"], 1);
    assert!(
        r[21]["value"].as_str().unwrap().contains("frame.png"),
        "{}",
        r[21]
    );
    let leak = &r[24];
    assert_eq!(
        leak["contacted"],
        sorted(&[&portal_host, &evil_host]),
        "{leak}"
    );
    let wire_urls: Vec<&str> = leak["wire"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["url"].as_str())
        .collect();
    for path in ["/top.png", "/frame.png"] {
        let url = format!("http://{evil_host}{path}");
        assert!(wire_urls.contains(&url.as_str()), "{url} not in {leak}");
        assert!(
            site.requests()
                .iter()
                .any(|q| q["server"] == "evil" && q["path"] == path),
            "evil server did not get {path}"
        );
    }
}

#[test]
fn a_failing_step_names_its_index() {
    if !browser_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = Site::start(tmp.path());
    let err = browser_run(&json!([
        {"go": site.url("/view")},
        {"click": "#no-such-button", "timeout": 0.5},
    ]))
    .expect_err("a missing element fails the run");
    assert!(
        err.contains(r#""step": 1"#) || err.contains(r#""step":1"#),
        "{err}"
    );
    assert!(err.contains("no element matches"), "{err}");
}
