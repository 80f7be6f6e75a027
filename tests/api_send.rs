//! The HTTPS submission API driven by an independent client (Python's http.client over
//! TLS, certificate verified): send, status through delivery, the events cursor, and
//! problem documents for bad input, each with its status and stable type.

mod common;

use common::{require_tool, Gateway, GwOpts, HOSTNAME};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
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
    if !require_tool("python3") {
        return None;
    }
    let port = common::free_port();
    let mut opts = GwOpts::spool();
    opts.server_extra += extra;
    opts.server_extra += &format!(
        "\n[api]\nlisten = \"127.0.0.1:{port}\"\nmax_body = \"{max_body}\"\nmax_recipients = 3\nsandbox_key_file = \"KEYFILE\"\n"
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
    fn call(&self, requests: Vec<Value>) -> Vec<Value> {
        let spec = json!({
            "port": self.port,
            "host": HOSTNAME,
            "ca": self.gw.pki.ca,
            "requests": requests,
        });
        let mut child = Command::new("python3")
            .arg(common::peers_dir().join("api_client.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(spec.to_string().as_bytes())
            .expect("write spec");
        let out = child.wait_with_output().expect("client");
        assert!(out.status.success(), "api client failed");
        serde_json::from_slice(&out.stdout).expect("client output")
    }

    fn one(&self, req: Value) -> Value {
        self.call(vec![req]).remove(0)
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
