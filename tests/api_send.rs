//! The HTTPS submission API driven by an independent client (Python's http.client over
//! TLS, certificate verified): send, status through delivery, the events cursor, and
//! problem documents for bad input, each with its status and stable type.

mod common;

use common::{require_tool, Gateway, GwOpts, HOSTNAME};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

struct Api {
    gw: Gateway,
    port: u16,
    key: String,
}

fn start(max_body: &str) -> Option<Api> {
    start_with(max_body, "")
}

/// A gateway with the API on, `extra` config sections appended.
fn start_with(max_body: &str, extra: &str) -> Option<Api> {
    let mut opts = GwOpts::spool();
    opts.server_extra += extra;
    launch(opts, &format!("max_body = \"{max_body}\"\n"))
}

/// Start `opts` with `[api]` on (a sandbox key written at start), `api_extra` lines
/// added to `[api]`.
fn launch(mut opts: GwOpts, api_extra: &str) -> Option<Api> {
    if !require_tool("python3") {
        return None;
    }
    let port = common::free_port();
    opts.server_extra += &format!(
        "\n[api]\nlisten = \"127.0.0.1:{port}\"\nmax_recipients = 3\nsandbox_key_file = \"KEYFILE\"\n{api_extra}"
    );
    let mut gw = Gateway::configure(opts);
    let key_file = gw.tmp.path().join("api-key");
    let cfg = std::fs::read_to_string(&gw.config).expect("config");
    std::fs::write(
        &gw.config,
        cfg.replace("KEYFILE", &key_file.display().to_string()),
    )
    .expect("config");
    gw.launch();
    let key = std::fs::read_to_string(&key_file).expect("sandbox key file written at start");
    let mode = std::fs::metadata(&key_file).expect("meta");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o600,
        "key file is private"
    );
    Some(Api {
        gw,
        port,
        key: key.trim().to_string(),
    })
}

impl Api {
    fn spec(&self, requests: Vec<Value>) -> Value {
        json!({
            "port": self.port,
            "host": HOSTNAME,
            "ca": self.gw.pki.ca,
            "requests": requests,
        })
    }

    /// Requests in order through Python's http.client.
    fn call(&self, requests: Vec<Value>) -> Vec<Value> {
        let out = common::run_python(
            &common::peers_dir().join("api_client.py"),
            &self.spec(requests),
        );
        serde_json::from_value(out).expect("client output")
    }

    /// The same requests all at once, each on its own connection.
    fn call_parallel(&self, requests: Vec<Value>) -> Vec<Value> {
        let mut spec = self.spec(requests);
        spec["parallel"] = json!(true);
        let out = common::run_python(&common::peers_dir().join("api_client.py"), &spec);
        serde_json::from_value(out).expect("client output")
    }

    fn one(&self, req: Value) -> Value {
        self.call(vec![req]).remove(0)
    }

    /// POST `body` with curl (certificate verified for HOSTNAME); returns the status,
    /// the response headers (lower-cased) and the JSON body.
    fn curl_post(&self, path: &str, body: &Value, headers: &[&str]) -> (u16, String, Value) {
        assert!(require_tool("curl"), "curl is needed");
        let dir = tempfile::tempdir().expect("tempdir");
        let body_file = dir.path().join("body.json");
        let head_file = dir.path().join("headers.txt");
        std::fs::write(&body_file, body.to_string()).expect("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--cacert"])
            .arg(&self.gw.pki.ca)
            .arg("--resolve")
            .arg(format!("{HOSTNAME}:{}:127.0.0.1", self.port))
            .arg("-D")
            .arg(&head_file)
            .args(["-o", "-", "-w", "\n%{http_code}"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.key))
            .args(["-H", "Content-Type: application/json"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg("--data-binary")
            .arg(format!("@{}", body_file.display()))
            .arg(format!("https://{HOSTNAME}:{}{path}", self.port));
        let out = cmd.output().expect("curl");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json_text, code) = text.rsplit_once('\n').expect("status line");
        let heads = std::fs::read_to_string(&head_file)
            .unwrap_or_default()
            .to_ascii_lowercase();
        (
            code.trim().parse().expect("status"),
            heads,
            serde_json::from_str(json_text).unwrap_or(Value::Null),
        )
    }
}

fn message() -> Value {
    json!({
        "from": "ehr@clinic.example",
        "to": ["pat@example.org"],
        "cc": ["doc@example.net"],
        "subject": "Your appointment",
        "text": "See you on Monday.",
        "html": "<p>See you on <b>Monday</b>.</p>",
        "attachments": [{"filename": "note.txt", "content_type": "text/plain",
                         "content_base64": "aGVsbG8gd29ybGQ="}],
        "metadata": {"order": "A-17"}
    })
}

#[test]
fn send_reaches_delivery_with_status_and_events() {
    let Some(api) = start("1M") else { return };
    let r = api
        .one(json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": message()}));
    assert_eq!(r["status"], 202, "{r}");
    let id = r["body"]["id"].as_str().expect("id").to_string();
    let rcpts = r["body"]["recipients"].as_array().expect("recipients");
    assert_eq!(rcpts.len(), 2);
    assert_eq!(rcpts[0]["address"], "pat@example.org");
    assert_eq!(rcpts[0]["status"], "queued");

    // The sandbox copy is the MIME message phigate built: both parts and the attachment.
    let msgs = api.gw.wait_messages(1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1);
    let (mid, eml, env) = &msgs[0];
    assert_eq!(mid, &id);
    let text = String::from_utf8_lossy(eml);
    assert!(text.contains("Subject: Your appointment"));
    assert!(text.contains("Received: from api ([127.0.0.1])"));
    assert!(text.contains("note.txt"));
    assert_eq!(env["recipients"].as_array().map(|a| a.len()), Some(2));

    // Status follows the message to delivery.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = api.one(json!({"path": format!("/v1/messages/{id}"), "key": api.key}));
        assert_eq!(s["status"], 200, "{s}");
        let states: Vec<&str> = s["body"]["recipients"]
            .as_array()
            .expect("recipients")
            .iter()
            .map(|r| r["state"].as_str().unwrap_or(""))
            .collect();
        if states.iter().all(|s| *s == "delivered") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let r0 = &status["body"]["recipients"][0];
    assert_eq!(r0["state"], "delivered", "{status}");
    assert_eq!(r0["attempts"], 1);
    assert_eq!(r0["history"][0]["verification"], "sandbox");

    // Events: queued then delivered per recipient, with the metadata, no addresses; the
    // cursor pages onward without repeating.
    let e = api.one(json!({"path": "/v1/events?limit=100", "key": api.key}));
    assert_eq!(e["status"], 200, "{e}");
    let events = e["body"]["events"].as_array().expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .filter(|ev| ev["message_id"] == id.as_str())
        .map(|ev| ev["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["message.queued", "message.delivered", "message.delivered"]
    );
    assert!(events.iter().all(|ev| ev["metadata"]["order"] == "A-17"));
    assert!(!e["body"].to_string().contains('@'), "no address in events");
    let next = e["body"]["next"].as_str().expect("next cursor").to_string();
    let more = api.one(json!({"path": format!("/v1/events?after={next}"), "key": api.key}));
    assert_eq!(more["body"]["events"].as_array().map(|a| a.len()), Some(0));
    assert_eq!(more["body"]["next"], next.as_str());

    // Someone else's (or no) message: 404, no existence oracle.
    let missing =
        api.one(json!({"path": "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV", "key": api.key}));
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["body"]["type"], "urn:phigate:problem:not-found");
}

#[test]
fn bad_requests_get_problem_documents_and_nothing_is_queued() {
    let Some(api) = start("4K") else { return };
    let big = "x".repeat(8 * 1024);
    let mut unknown = message();
    unknown["surprise"] = json!("PHI-CANARY-1");
    let mut b64 = message();
    b64["attachments"][0]["content_base64"] = json!("***not base64***");
    let mut many = message();
    many["bcc"] = json!(["a@x.example", "b@x.example", "c@x.example"]);
    let mut oversized = message();
    oversized["text"] = json!(big);
    let cases = vec![
        (
            json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": "{not json"}),
            400,
            "bad-json",
        ),
        (
            json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": unknown}),
            400,
            "unknown-field",
        ),
        (
            json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": b64}),
            400,
            "bad-base64",
        ),
        (
            json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": many}),
            400,
            "too-many-recipients",
        ),
        (
            json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": oversized}),
            413,
            "body-too-large",
        ),
        (
            json!({"method": "POST", "path": "/v1/messages", "key": "phg_wrong", "body": message()}),
            401,
            "bad-key",
        ),
        (
            json!({"method": "POST", "path": "/v1/messages", "body": message()}),
            401,
            "bad-key",
        ),
        (
            json!({"path": "/v1/events?limit=0", "key": api.key}),
            400,
            "invalid-request",
        ),
        (
            json!({"path": "/v1/nowhere", "key": api.key}),
            404,
            "not-found",
        ),
    ];
    let reqs: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    let answers = api.call(reqs);
    for ((_, status, kind), got) in cases.iter().zip(&answers) {
        assert_eq!(got["status"], *status, "{got}");
        assert_eq!(got["content_type"], "application/problem+json", "{got}");
        assert_eq!(
            got["body"]["type"],
            format!("urn:phigate:problem:{kind}"),
            "{got}"
        );
        assert_eq!(got["body"]["status"], *status);
        let text = got["body"].to_string();
        assert!(
            !text.contains("PHI-CANARY") && !text.contains('@') && !text.contains("surprise"),
            "a problem echoes nothing submitted: {text}"
        );
    }
    // Nothing was half-accepted.
    std::thread::sleep(Duration::from_millis(500));
    assert!(api.gw.messages_now().is_empty());
}

#[test]
fn keys_scopes_owners_and_revocation() {
    let Some(api) = start("1M") else { return };
    let gw = &api.gw;
    // The key alone on stdout, so a script can capture it.
    let out = gw.cli_ok(&["api-key", "create", "app", "--scope", "send"]);
    let send_key = out.trim().to_string();
    assert!(send_key.starts_with("phg_") && !send_key.contains(char::is_whitespace));
    assert_eq!(out, format!("{send_key}\n"));
    let reader = gw
        .cli_ok(&[
            "api-key", "create", "app-read", "--scope", "read", "--owner", "app",
        ])
        .trim()
        .to_string();
    let other = gw
        .cli_ok(&["api-key", "create", "other", "--scope", "read,send"])
        .trim()
        .to_string();
    let dup = gw.cli(&["api-key", "create", "app"]);
    assert!(!dup.status.success(), "a live name cannot be created twice");

    let mut msg = message();
    msg["metadata"] = json!({});
    let sent =
        api.one(json!({"method": "POST", "path": "/v1/messages", "key": send_key, "body": msg}));
    assert_eq!(sent["status"], 202, "{sent}");
    let id = sent["body"]["id"].as_str().expect("id").to_string();
    let path = format!("/v1/messages/{id}");
    let r = api.call(vec![
        json!({"path": path, "key": send_key}),
        json!({"path": path, "key": reader}),
        json!({"path": path, "key": other}),
        json!({"method": "POST", "path": "/v1/messages", "key": reader, "body": message()}),
    ]);
    assert_eq!(r[0]["status"], 403, "send-only key cannot read: {}", r[0]);
    assert_eq!(r[0]["body"]["type"], "urn:phigate:problem:wrong-scope");
    assert_eq!(r[1]["status"], 200, "same owner reads: {}", r[1]);
    assert_eq!(r[1]["body"]["id"], id.as_str());
    assert_eq!(r[2]["status"], 404, "another owner sees nothing: {}", r[2]);
    assert_eq!(r[3]["status"], 403, "read-only key cannot send");

    // Revocation is seen by the very next request.
    assert_eq!(
        gw.cli_ok(&["api-key", "revoke", "app"]).trim(),
        "revoked app"
    );
    let after = api
        .one(json!({"method": "POST", "path": "/v1/messages", "key": send_key, "body": message()}));
    assert_eq!(after["status"], 401, "{after}");
    assert_eq!(after["body"]["type"], "urn:phigate:problem:key-revoked");
    let list = gw.cli_json(&["api-key", "list"]);
    let rows = list.as_array().expect("rows");
    let app = rows
        .iter()
        .find(|k| k["name"] == "app")
        .expect("app listed");
    assert!(app["revoked_at"].is_u64());
    assert!(
        !list.to_string().contains(&send_key),
        "only a hash is stored and listed"
    );
    // The submission is in the audit trail under the key's identity.
    let trail = gw.cli_ok(&["audit", "export", "--message", &id]);
    assert!(trail.contains("message_received"), "{trail}");
    assert!(trail.contains("api:app"), "identity api:NAME in the trail");
    // The HTTPS connection's facts, as for an SMTP session.
    let rec = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r.to_string().contains("message_received"))
        .expect("message_received record");
    let flat = rec.to_string();
    assert!(flat.contains("\"peer_ip\":\"127.0.0.1\""), "{flat}");
    assert!(flat.contains("\"tls_version\":\"TLSv1.3\""), "{flat}");
    assert!(flat.contains("\"tls_cipher\":\"TLS_AES_"), "{flat}");
    assert!(flat.contains("\"api_key\":\"app\""), "key name: {flat}");
}

#[test]
fn sending_limit_is_429_with_retry_after() {
    if !require_tool("python3") {
        return;
    }
    let Some(api) = start_with("1M", "\n[limits]\nmessages_per_minute = 1\n") else {
        return;
    };
    let r = api.call(vec![
        json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": message()}),
        json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": message()}),
    ]);
    assert_eq!(r[0]["status"], 202, "{}", r[0]);
    assert_eq!(r[1]["status"], 429, "{}", r[1]);
    assert_eq!(r[1]["body"]["type"], "urn:phigate:problem:rate-limited");
    let retry: u64 = r[1]["retry_after"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(api.gw.wait_messages(1, Duration::from_secs(10)).len(), 1);
}

/// The parts of a sandbox copy, decoded (an independent parser: mail-parser).
fn parts(eml: &[u8]) -> (String, String, String) {
    let m = mail_parser::MessageParser::default()
        .parse(eml)
        .expect("MIME message");
    (
        m.subject().unwrap_or_default().to_string(),
        m.body_text(0).map(|t| t.to_string()).unwrap_or_default(),
        m.body_html(0).map(|t| t.to_string()).unwrap_or_default(),
    )
}

#[test]
fn templates_render_escaped_and_bad_ones_are_refused() {
    let tdir = tempfile::tempdir().expect("tempdir");
    let t = tdir.path();
    std::fs::write(t.join("appt.subject"), "Appointment on {{ day }}\n").expect("t");
    std::fs::write(t.join("appt.txt"), "Dear {{ name }}, see you on {{ day }}.").expect("t");
    std::fs::write(
        t.join("appt.html"),
        "<p>Dear {{ name }}, see you on {{ day }}.</p>",
    )
    .expect("t");
    let Some(api) = launch(
        GwOpts::spool(),
        &format!("templates_dir = \"{}\"\n", t.display()),
    ) else {
        return;
    };
    let send = |values: Value, extra: Value| {
        let mut body = json!({"from": "ehr@clinic.example", "to": ["pat@example.org"],
                              "template": "appt", "template_values": values});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": body})
    };
    let r = api.one(send(
        json!({"name": "<script>alert(1)</script> & Co", "day": "Monday"}),
        json!({}),
    ));
    assert_eq!(r["status"], 202, "{r}");
    let msgs = api.gw.wait_messages(1, Duration::from_secs(30));
    let (subject, text, html) = parts(&msgs[0].1);
    assert_eq!(subject, "Appointment on Monday");
    assert_eq!(
        text.trim_end(),
        "Dear <script>alert(1)</script> & Co, see you on Monday."
    );
    assert!(
        html.contains("Dear &lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; Co"),
        "HTML values are escaped: {html}"
    );
    assert!(!html.contains("<script>"));

    let answers = api.call(vec![
        send(json!({"name": "X"}), json!({"template": "nope"})),
        send(json!({"name": "PHI-CANARY-7"}), json!({})),
        send(
            json!({"name": "X", "day": "Mon"}),
            json!({"subject": "also"}),
        ),
    ]);
    let kinds: Vec<(u64, &str)> = answers
        .iter()
        .map(|a| {
            (
                a["status"].as_u64().unwrap_or(0),
                a["body"]["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (422, "urn:phigate:problem:unknown-template"),
            (422, "urn:phigate:problem:template-error"),
            (400, "urn:phigate:problem:invalid-request"),
        ],
        "{answers:?}"
    );
    assert!(
        !answers[1].to_string().contains("PHI-CANARY"),
        "a render error echoes no value"
    );

    // check-config compiles the templates and names the broken file; a SIGHUP with a
    // broken template keeps the working set.
    let ok = api.gw.cli_ok(&["check-config"]);
    assert!(ok.contains("1 API templates"), "{ok}");
    std::fs::write(t.join("bad.html"), "{% if %}").expect("bad");
    let bad = api.gw.cli(&["check-config"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("api.templates_dir") && err.contains("bad.html"),
        "{err}"
    );
    api.gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let again = api.one(send(json!({"name": "B", "day": "Tuesday"}), json!({})));
    assert_eq!(again["status"], 202, "{again}");
    assert_eq!(api.gw.wait_messages(2, Duration::from_secs(30)).len(), 2);
}

#[test]
fn batch_and_idempotency_keys() {
    let Some(mut api) = launch(GwOpts::spool(), "max_batch = 3\n") else {
        return;
    };
    let mut bad = message();
    bad["attachments"][0]["content_base64"] = json!("***");
    let batch = json!({"messages": [message(), bad, message()]});
    // curl, the other independent client.
    let (code, heads, body) =
        api.curl_post("/v1/messages/batch", &batch, &["Idempotency-Key: batch-1"]);
    assert_eq!(code, 200, "{body}");
    let res = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = res
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [202, 400, 202], "{body}");
    assert_eq!(res[1]["type"], "urn:phigate:problem:bad-base64");
    assert_eq!(res[0]["recipients"][0]["address"], "pat@example.org");
    assert!(!heads.contains("idempotent-replayed"));
    let (code, heads, again) =
        api.curl_post("/v1/messages/batch", &batch, &["Idempotency-Key: batch-1"]);
    assert_eq!((code, &again), (200, &body), "the first answer again");
    assert!(heads.contains("idempotent-replayed: true"), "{heads}");
    let four = json!({"messages": [message(), message(), message(), message()]});
    let (code, _, over) = api.curl_post("/v1/messages/batch", &four, &[]);
    assert_eq!(code, 400);
    assert_eq!(over["type"], "urn:phigate:problem:batch-too-large");

    let keyed = |k: &str, body: Value| {
        json!({"method": "POST", "path": "/v1/messages", "key": api.key, "body": body,
               "headers": {"Idempotency-Key": k}})
    };
    let mut other = message();
    other["subject"] = json!("Something else");
    let r = api.call(vec![
        keyed("k-1", message()),
        keyed("k-1", message()),
        keyed("k-1", other),
        keyed("bad key with spaces", message()),
    ]);
    assert_eq!(r[0]["status"], 202, "{}", r[0]);
    let first = r[0]["body"]["id"].as_str().expect("id").to_string();
    assert_eq!(r[1]["status"], 202);
    assert_eq!(
        r[1]["body"], r[0]["body"],
        "same key, same body: same answer"
    );
    assert_eq!(r[1]["replayed"], "true");
    assert_eq!(r[2]["status"], 409);
    assert_eq!(
        r[2]["body"]["type"],
        "urn:phigate:problem:idempotency-conflict"
    );
    assert_eq!(r[3]["status"], 400);
    assert_eq!(
        r[3]["body"]["type"],
        "urn:phigate:problem:bad-idempotency-key"
    );

    // Concurrent duplicates: one message, the others wait for nothing and get 409 or
    // the same answer.
    let par = api.call_parallel((0..6).map(|_| keyed("k-par", message())).collect());
    let ids: Vec<&str> = par
        .iter()
        .filter(|a| a["status"] == 202)
        .map(|a| a["body"]["id"].as_str().unwrap_or(""))
        .collect();
    assert!(!ids.is_empty(), "{par:?}");
    assert!(ids.iter().all(|i| *i == ids[0]), "one message: {par:?}");
    for a in par.iter().filter(|a| a["status"] != 202) {
        assert_eq!(a["status"], 409, "{a}");
        assert_eq!(
            a["body"]["type"],
            "urn:phigate:problem:idempotency-in-progress"
        );
    }

    // The answer survives kill -9.
    api.gw.wait_messages(4, Duration::from_secs(30));
    api.gw.kill();
    api.gw.restart("info");
    let after = api.one(keyed("k-1", message()));
    assert_eq!(after["status"], 202, "{after}");
    assert_eq!(after["body"]["id"], first.as_str());
    assert_eq!(after["replayed"], "true");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.gw.messages_now().len(),
        4,
        "2 from the batch, 1 per idempotency key, no duplicate"
    );
}

#[test]
fn openapi_document_describes_real_responses() {
    if !require_tool("python3") {
        return;
    }
    let Some(api) = start("4K") else { return };
    let docr = api.one(json!({"path": "/v1/openapi.json"}));
    assert_eq!(docr["status"], 200, "served without a key");
    let doc = docr["body"].clone();
    let post = |path: &str, body: Value| json!({"method": "POST", "path": path, "key": api.key, "body": body});
    let sent = api.one(post("/v1/messages", message()));
    let id = sent["body"]["id"].as_str().expect("id").to_string();
    let mut big = message();
    big["text"] = json!("x".repeat(8000));
    let reqs = vec![
        (post("/v1/messages", message()), "/v1/messages"),
        (post("/v1/messages", json!("{nope")), "/v1/messages"),
        (
            json!({"method": "POST", "path": "/v1/messages", "body": message()}),
            "/v1/messages",
        ),
        (post("/v1/messages", big), "/v1/messages"),
        (
            post(
                "/v1/messages",
                json!({"from": "a@b.example", "to": ["c@d.example"], "template": "none"}),
            ),
            "/v1/messages",
        ),
        (
            post(
                "/v1/messages/batch",
                json!({"messages": [message(), {"from": 1}]}),
            ),
            "/v1/messages/batch",
        ),
        (
            json!({"path": format!("/v1/messages/{id}"), "key": api.key}),
            "/v1/messages/{id}",
        ),
        (
            json!({"path": "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV", "key": api.key}),
            "/v1/messages/{id}",
        ),
        (
            json!({"path": "/v1/events?limit=5", "key": api.key}),
            "/v1/events",
        ),
        (
            json!({"path": "/v1/events?after=x", "key": api.key}),
            "/v1/events",
        ),
    ];
    let answers = api.call(reqs.iter().map(|r| r.0.clone()).collect());
    let seen: Vec<u64> = answers
        .iter()
        .map(|a| a["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        seen,
        [202, 400, 401, 413, 422, 200, 200, 404, 200, 400],
        "{answers:?}"
    );
    let mut cases: Vec<Value> = reqs
        .iter()
        .zip(&answers)
        .map(|((req, path), a)| {
            json!({"method": req["method"].as_str().unwrap_or("GET"), "path": path,
                   "status": a["status"], "content_type": a["content_type"], "body": a["body"]})
        })
        .collect();
    let check = |cases: &[Value]| -> Vec<String> {
        let out = common::run_python(
            &common::peers_dir().join("openapi_check.py"),
            &json!({"doc": doc, "cases": cases}),
        );
        serde_json::from_value(out["errors"].clone()).expect("errors")
    };
    let errors = check(&cases);
    assert!(errors.is_empty(), "responses off the contract: {errors:#?}");
    // The checker can fail: an undocumented status and a body off its schema.
    cases.truncate(1);
    cases.push(
        json!({"method": "POST", "path": "/v1/messages", "status": 418,
                      "content_type": "application/json", "body": {}}),
    );
    cases.push(
        json!({"method": "POST", "path": "/v1/messages", "status": 202,
                      "content_type": "application/json", "body": {"id": 5}}),
    );
    let errors = check(&cases);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("418: status not documented"))
            && errors.iter().any(|e| e.contains("202: 5 is not of type")),
        "{errors:?}"
    );
}

#[test]
fn status_follows_delivery_to_a_real_receiving_mta() {
    if !require_tool("python3") {
        return;
    }
    let sink_port = common::free_port();
    let mut opts = GwOpts::spool();
    opts.delivery = Some(format!(
        "mode = \"mx\"\ntls_level = \"encrypt\"\nconnect_timeout = \"5s\"\n\
         [delivery.domains.\"x.test\"]\nroute = \"127.0.0.1:{sink_port}\"\ntls_level = \"encrypt\"\n"
    ));
    let Some(api) = launch(opts, "") else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let (cert, key) = api.gw.pki.new_server_cert();
    std::fs::write(work.path().join("mx.pem"), cert).expect("cert");
    std::fs::write(work.path().join("mx.key"), key).expect("key");
    let sink = common::sink::Sink::start_on(
        sink_port,
        work.path(),
        "inbox",
        Some((&work.path().join("mx.pem"), &work.path().join("mx.key"))),
    );
    // A real (non-sandbox) key: its mail goes out through the delivery engine.
    let app = api
        .gw
        .cli_ok(&["api-key", "create", "app", "--scope", "send,read"]);
    let app = app.trim();
    let mut msg = message();
    msg["to"] = json!(["pat@x.test", "bounce-1@x.test"]);
    msg["cc"] = json!([]);
    let r = api.one(json!({"method": "POST", "path": "/v1/messages", "key": app, "body": msg}));
    assert_eq!(r["status"], 202, "{r}");
    let id = r["body"]["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = api.one(json!({"path": format!("/v1/messages/{id}"), "key": app}));
        assert_eq!(s["status"], 200, "{s}");
        if s["body"]["done_at"].is_u64() || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let inbox = sink.dir.clone();
    drop(sink);
    let rs = &s["body"]["recipients"];
    assert_eq!(rs[0]["state"], "delivered", "{s}");
    let tls = rs[0]["history"][0]["tls_version"].as_str().unwrap_or("");
    assert!(tls.starts_with("TLSv1."), "TLS facts of the delivery: {s}");
    assert_eq!(rs[1]["state"], "bounced", "{s}");
    let eml = std::fs::read_dir(&inbox)
        .expect("inbox")
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| std::fs::read(e.path()).expect("eml"))
        .expect("the receiving MTA got the message");
    assert_eq!(parts(&eml).0, "Your appointment");
}
