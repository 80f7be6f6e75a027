//! Integration-test harness: runs the real `phigate` binary on loopback with a
//! per-test configuration, PKI and data directory, and drives it with independent
//! peers (Python's ssl/smtplib, swaks, openssl, Postfix) or plain TCP for the
//! plaintext phase; the CLI over the control socket; and the Python load client
//! (`tests/peers/smtp_send.py`) for the spool and crash tests.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod canary;
pub mod delivery;
pub mod http;
pub mod sink;

#[allow(unused_imports)]
pub use delivery::deliver;
#[allow(unused_imports)]
pub use http::{http_get, http_receiver, http_receiver_at, metric_sample, Post};

pub const BIN: &str = env!("CARGO_BIN_EXE_phigate");
pub const HOSTNAME: &str = "gw.phigate.test";
pub const PASSWORD: &str = "correct horse battery";
pub const PYTHON: &str = "/usr/bin/python3";

/// Is `name` on PATH (or an absolute path that exists)? With CI=true a missing tool is a
/// test failure; otherwise the caller prints a skip notice and returns.
pub fn require_tool(name: &str) -> bool {
    let found = if name.starts_with('/') {
        Path::new(name).exists()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(name).is_file())
    };
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "required test tool `{name}` is missing (CI=true); run scripts/test.sh to install it"
        );
    }
    eprintln!("SKIP: `{name}` not installed; run scripts/test.sh to install test peers");
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

// ---------------------------------------------------------------------------------
// PKI

/// A test CA with a server certificate for 127.0.0.1/localhost/HOSTNAME, and a second
/// CA for client certificates with one good client; plus a rogue CA and client.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

fn ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = p.self_signed(&key).expect("ca cert");
    (cert, key)
}

fn leaf(
    names: &[&str],
    cn: &str,
    eku: ExtendedKeyUsagePurpose,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(names).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("leaf key");
    let cert = p.signed_by(&key, issuer, issuer_key).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let (ca_cert, ca_key) = ca("phigate test CA");
        let (client_ca_cert, client_ca_key) = ca("phigate test client CA");
        let (rogue_ca_cert, rogue_ca_key) = ca("rogue CA");
        let w = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pki file");
            p
        };
        let ca = w("ca.pem", &ca_cert.pem());
        let (c, k) = leaf(
            &["127.0.0.1", "localhost", HOSTNAME],
            HOSTNAME,
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            &ca_key,
        );
        let cert = w("server.pem", &c);
        let key = w("server.key", &k);
        let client_ca = w("client-ca.pem", &client_ca_cert.pem());
        let (c, k) = leaf(
            &["ehr.clinic.test"],
            "ehr.clinic.test",
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_ca_cert,
            &client_ca_key,
        );
        let client_cert = w("client.pem", &c);
        let client_key = w("client.key", &k);
        let (c, k) = leaf(
            &["rogue.test"],
            "rogue.test",
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue_ca_cert,
            &rogue_ca_key,
        );
        let rogue_cert = w("rogue.pem", &c);
        let rogue_key = w("rogue.key", &k);
        Pki {
            dir,
            ca,
            cert,
            key,
            client_ca,
            client_cert,
            client_key,
            rogue_cert,
            rogue_key,
            ca_cert,
            ca_key,
        }
    }

    /// A fresh server certificate from the same CA: (cert PEM, key PEM).
    pub fn new_server_cert(&self) -> (String, String) {
        leaf(
            &["127.0.0.1", "localhost", HOSTNAME],
            HOSTNAME,
            ExtendedKeyUsagePurpose::ServerAuth,
            &self.ca_cert,
            &self.ca_key,
        )
    }
}

/// SHA-256 of the first certificate in a PEM file, lower-case hex (via openssl).
pub fn pem_fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("run openssl x509");
    parse_openssl_fingerprint(&String::from_utf8_lossy(&out.stdout))
}

fn parse_openssl_fingerprint(s: &str) -> String {
    s.split('=')
        .nth(1)
        .unwrap_or("")
        .trim()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// The fingerprint of the certificate an implicit-TLS listener presents, as seen by
/// `openssl s_client` (verified against the test CA).
pub fn served_fingerprint(port: u16, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let start = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    let (Some(s), Some(e)) = (start, end) else {
        panic!(
            "no certificate from s_client: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pem = &text[s..e + "-----END CERTIFICATE-----".len()];
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("write pem");
    let out = child.wait_with_output().expect("openssl x509 output");
    parse_openssl_fingerprint(&String::from_utf8_lossy(&out.stdout))
}

// ---------------------------------------------------------------------------------
// Gateway under test

#[derive(Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub tls: &'static str,
    pub auth: Vec<&'static str>,
}

/// Builds config lines from the generated PKI.
pub type PkiConfigFn = Box<dyn Fn(&Pki) -> String>;

/// What a test wants from its gateway; `Default` gives an implicit and a STARTTLS
/// listener accepting password and 127.0.0.1/32.
pub struct GwOpts {
    pub listeners: Vec<ListenerSpec>,
    pub server_extra: String,
    pub auth_extra: String,
    /// Extra `[auth]` lines that depend on the generated PKI (e.g. fingerprints).
    pub auth_extra_pki: Option<PkiConfigFn>,
    pub allow_networks: Vec<&'static str>,
    pub client_ca: bool,
    pub users: Vec<&'static str>,
    pub log_level: &'static str,
    /// Body of `[delivery]`; None: `mode = "sandbox"`.
    pub delivery: Option<String>,
    /// Policy file text: written to `<tmp>/policy.toml` and named by `[policy] file`.
    pub policy: Option<String>,
    /// Extra `[spool]` lines.
    pub spool_extra: String,
    /// `server.control_socket = "<tmp>/control.sock"` (for the CLI against the daemon).
    pub control_socket: bool,
    /// `spool.generate_key`: false to make the keyring with `phigate keys generate`.
    pub generate_key: bool,
    /// Where `data_dir` is; None: `<tmp>/data`.
    pub data_dir: Option<PathBuf>,
}

impl GwOpts {
    /// The spool and crash tests' gateway: one implicit-TLS listener `smtps` relaying by
    /// IP from 127.0.0.0/8 (no AUTH), the control socket, a 1 s retry and no content
    /// kept after delivery.
    pub fn spool() -> GwOpts {
        GwOpts {
            listeners: vec![listener("smtps", "implicit", &["ip"])],
            allow_networks: vec!["127.0.0.0/8"],
            control_socket: true,
            server_extra: "\n[queue]\nretry = [\"1s\"]\n".into(),
            ..GwOpts::default()
        }
    }

    /// `retention.content_after_delivery` (default `0s`).
    pub fn keep_content(mut self, age: &str) -> GwOpts {
        self.server_extra += &format!("\n[retention]\ncontent_after_delivery = \"{age}\"\n");
        self
    }

    /// `spool.min_free` (`"0"` turns the free-space refusal off).
    pub fn min_free(mut self, v: &str) -> GwOpts {
        self.spool_extra += &format!("min_free = \"{v}\"\n");
        self
    }
}

impl Default for GwOpts {
    fn default() -> Self {
        GwOpts {
            listeners: vec![
                listener("smtps", "implicit", &["password", "ip"]),
                listener("submission", "starttls", &["password", "ip"]),
            ],
            server_extra: String::new(),
            auth_extra: String::new(),
            auth_extra_pki: None,
            allow_networks: vec!["127.0.0.1/32"],
            client_ca: false,
            users: vec![],
            log_level: "info",
            delivery: None,
            policy: None,
            spool_extra: String::new(),
            control_socket: false,
            generate_key: true,
            data_dir: None,
        }
    }
}

pub fn listener(name: &str, tls: &'static str, auth: &[&'static str]) -> ListenerSpec {
    ListenerSpec {
        name: name.to_string(),
        tls,
        auth: auth.to_vec(),
    }
}

pub struct Gateway {
    pub tmp: tempfile::TempDir,
    pub pki: Pki,
    pub config: PathBuf,
    pub data: PathBuf,
    pub key_file: PathBuf,
    pub log_path: PathBuf,
    pub ports: Vec<(String, u16)>,
    /// Names of the implicit-TLS listeners.
    pub implicit: Vec<String>,
    pub child: Option<Child>,
}

fn toml_list(items: &[&str]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", q.join(", "))
}

impl Gateway {
    /// Configure and start; returns once the daemon logged that it is ready.
    pub fn start(opts: GwOpts) -> Gateway {
        let log_level = opts.log_level;
        let mut gw = Gateway::configure(opts);
        gw.spawn(log_level);
        gw
    }

    /// Write the configuration (and users) without starting the daemon; `launch` starts it.
    pub fn configure(opts: GwOpts) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(tmp.path());
        let data = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let control = if opts.control_socket {
            format!(
                "control_socket = \"{}\"\n",
                tmp.path().join("control.sock").display()
            )
        } else {
            String::new()
        };
        let ports: Vec<(String, u16)> = opts
            .listeners
            .iter()
            .map(|l| (l.name.clone(), free_port()))
            .collect();
        let mut cfg = format!(
            "[server]\nhostname = \"{HOSTNAME}\"\ndata_dir = \"{}\"\nshutdown_grace = \"20s\"\n{control}{}\n",
            data.display(),
            opts.server_extra
        );
        for (l, (_, port)) in opts.listeners.iter().zip(&ports) {
            cfg += &format!(
                "[[listener]]\nname = \"{}\"\naddr = \"127.0.0.1:{port}\"\ntls = \"{}\"\nauth = {}\n\n",
                l.name,
                l.tls,
                toml_list(&l.auth)
            );
        }
        cfg += &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        );
        if opts.client_ca {
            cfg += &format!("client_ca = \"{}\"\n", pki.client_ca.display());
        }
        cfg += &format!(
            "\n[auth]\nusers_file = \"{}\"\nallow_networks = {}\n{}\n{}\n\n[delivery]\n{}\n[spool]\nkey_file = \"{}\"\ngenerate_key = {}\n",
            tmp.path().join("users").display(),
            toml_list(&opts.allow_networks),
            opts.auth_extra,
            opts.auth_extra_pki.as_ref().map(|f| f(&pki)).unwrap_or_default(),
            opts.delivery.as_deref().unwrap_or("mode = \"sandbox\"\n"),
            tmp.path().join("master.keys").display(),
            opts.generate_key
        );
        cfg += &opts.spool_extra;
        if let Some(text) = &opts.policy {
            let p = tmp.path().join("policy.toml");
            std::fs::write(&p, text).expect("write policy");
            cfg += &format!("\n[policy]\nfile = \"{}\"\n", p.display());
        }
        let config = tmp.path().join("phigate.toml");
        std::fs::write(&config, cfg).expect("write config");
        let gw = Gateway {
            log_path: tmp.path().join("phigate.log"),
            key_file: tmp.path().join("master.keys"),
            tmp,
            pki,
            config,
            data,
            ports,
            implicit: opts
                .listeners
                .iter()
                .filter(|l| l.tls == "implicit")
                .map(|l| l.name.clone())
                .collect(),
            child: None,
        };
        for u in &opts.users {
            gw.add_user(u, PASSWORD);
        }
        gw
    }

    /// Start the daemon configured by `configure` (or again after `kill`/`stop`).
    pub fn launch(&mut self) {
        self.restart("info");
    }

    /// `phigate user add NAME --config CFG` with the password on stdin.
    pub fn add_user(&self, name: &str, password: &str) {
        let mut child = Command::new(BIN)
            .args(["user", "add", name, "--config"])
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run phigate user add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        let out = child.wait_with_output().expect("user add output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("added user {name}")),
            "user add failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the daemon; the log is appended to across restarts (a crash test reads the
    /// deliveries of every run), so readiness is looked for after the old end.
    fn spawn(&mut self, log_level: &str) {
        let before = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--log-level", log_level, "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn phigate serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Logged only after every listener is bound. No probe connections: they
            // would hold connection-limit slots the tests count on.
            if self
                .log()
                .get(before..)
                .is_some_and(|l| l.contains("phigate ready"))
            {
                break;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("phigate exited early ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "phigate not ready in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where `GwOpts::policy` was written (rewrite it, then SIGHUP, to reload).
    pub fn policy_path(&self) -> PathBuf {
        self.tmp.path().join("policy.toml")
    }

    /// SIGTERM and wait for a clean exit (the spool is then free to open in-process).
    pub fn stop(&mut self) {
        self.signal("TERM");
        let st = self.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "phigate did not exit cleanly: {st:?}\n{}",
            self.log()
        );
        self.child = None;
    }

    /// Start the binary again on the same configuration and data (after `stop`).
    pub fn restart(&mut self, log_level: &str) {
        assert!(self.child.is_none(), "stop() first");
        self.spawn(log_level);
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Wait for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sandbox_dir(&self) -> PathBuf {
        self.data.join("sandbox")
    }

    /// Stored messages: (id, .eml bytes, .json envelope), sorted by id, once the sandbox
    /// holds all there will be. The positive signal is the daemon's own log: every message
    /// it accepted (its `policy decision` line says accept or tag) has had its delivery
    /// attempt logged. A refused message leaves no such line, so "nothing stored" holds
    /// because the daemon said so, not because delivery was slower than a fixed wait.
    /// Held (quarantined) messages are not waited for. The 30 s deadline is a hang guard.
    pub fn messages(&self) -> Vec<(String, Vec<u8>, Value)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let attempted: Vec<String> = log_ids(&log, "delivery attempt", &[]);
            let waiting = log_ids(&log, "policy decision", &["accept", "tag"])
                .into_iter()
                .any(|id| !attempted.contains(&id));
            if !waiting {
                return self.messages_now();
            }
            if Instant::now() > deadline {
                eprintln!(
                    "messages(): accepted messages still undelivered after 30 s (hang guard)"
                );
                return self.messages_now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn messages_now(&self) -> Vec<(String, Vec<u8>, Value)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.sandbox_dir()) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "eml") {
                let id = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let eml = std::fs::read(&p).expect("read eml");
                let json: Value = serde_json::from_slice(
                    &std::fs::read(p.with_extension("json")).expect("read json"),
                )
                .expect("envelope json");
                out.push((id, eml, json));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The message with this queue ID, waiting for the queue to deliver it to the sandbox.
    pub fn message(&self, id: &str) -> (Vec<u8>, Value) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.sandbox_dir().join(format!("{id}.eml")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let eml = std::fs::read(self.sandbox_dir().join(format!("{id}.eml")))
            .unwrap_or_else(|e| panic!("message {id} not stored: {e}"));
        let json = serde_json::from_slice(
            &std::fs::read(self.sandbox_dir().join(format!("{id}.json"))).expect("read json"),
        )
        .expect("envelope json");
        (eml, json)
    }

    /// Poll until at least `n` messages are stored.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<(String, Vec<u8>, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages_now();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A Python peer session spec for `listener` (implicit or plain start).
    pub fn peer(&self, listener: &str, steps: Vec<Value>) -> Value {
        let implicit = self.implicit.iter().any(|n| n == listener);
        json!({
            "port": self.port(listener),
            "mode": if implicit { "implicit" } else { "plain" },
            "cafile": self.pki.ca,
            "servername": "localhost",
            "steps": steps,
        })
    }
}

impl Gateway {
    /// Start expecting start-up to fail; returns the exit status and what it logged.
    pub fn start_fails(&self) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "already running");
        let before = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn phigate serve");
        // Hang guard only: a daemon that should have refused to start keeps running.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return (st, self.log().get(before..).unwrap_or("").to_string());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "phigate kept running when start-up should fail:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run the CLI on this gateway's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run phigate CLI")
    }

    /// Run a CLI command that must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "phigate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.cli_ok(&a)).expect("CLI JSON output")
    }

    /// Send one message with the Python client to the `smtps` listener; returns the
    /// queued ID from the `250`.
    pub fn send_eml(&self, eml: &[u8]) -> String {
        let path = self.tmp.path().join("msg.eml");
        std::fs::write(&path, eml).expect("write eml");
        let out = Command::new(PYTHON)
            .arg(peer_script())
            .args(["eml", &self.port("smtps").to_string()])
            .arg(&path)
            .output()
            .expect("run python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("250 "),
            "send failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split("queued as ")
            .nth(1)
            .map(|s| s.trim().to_string())
            .expect("queued as ID")
    }

    /// Wait until the daemon reports nothing pending (`timeout` is a hang guard).
    pub fn wait_drained(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.cli_json(&["queue", "stats"]);
            if st["pending"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue did not drain in {timeout:?} (hang guard): {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start the Python load client against `smtps` in the background; its report goes
    /// to a file (a pipe nobody reads until it exits would fill up and stall it).
    pub fn load(&self, count: u32, size: u32, threads: u32, secs: u32, extra: &[&str]) -> Child {
        Command::new(PYTHON)
            .arg(peer_script())
            .arg("load")
            .args([
                self.port("smtps").to_string(),
                count.to_string(),
                size.to_string(),
                threads.to_string(),
                secs.to_string(),
            ])
            .args(extra)
            .stdout(std::fs::File::create(self.tmp.path().join("load.out")).expect("load.out"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start load client")
    }

    /// Wait for the load client and parse its report.
    pub fn finish_load(&self, mut client: Child) -> (Vec<(u64, String)>, Vec<String>) {
        let st = client.wait().expect("wait for load client");
        assert!(st.success(), "load client failed: {st}");
        parse_load(&std::fs::read_to_string(self.tmp.path().join("load.out")).expect("load.out"))
    }
}

/// The Python SMTP client for the spool and crash tests (`eml` and `load` modes).
pub fn peer_script() -> PathBuf {
    peers_dir().join("smtp_send.py")
}

/// Parse the load client's output: (message number, queued ID) for every `250`, and the
/// other lines.
pub fn parse_load(stdout: &str) -> (Vec<(u64, String)>, Vec<String>) {
    let mut ok = Vec::new();
    let mut other = Vec::new();
    for l in stdout.lines() {
        let f: Vec<&str> = l.splitn(3, ' ').collect();
        match f.as_slice() {
            ["OK", n, id] => ok.push((n.parse().expect("number"), id.to_string())),
            _ => other.push(l.to_string()),
        }
    }
    (ok, other)
}

pub fn simple_message(subject: &str) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@example.net\r\nSubject: {subject}\r\n\r\nhello\r\n")
        .into_bytes()
}

impl Gateway {
    /// Kills the daemon (SIGKILL) and waits for it, releasing the spool.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- phigate log ---\n{}", self.log());
        }
    }
}

/// Message IDs of the log lines with `message` whose `action` is one of `actions` (any
/// when empty). Reads both log formats: `msg_id=ID action="accept"` and JSON.
fn log_ids(log: &str, message: &str, actions: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter(|l| {
            actions.is_empty()
                || actions.iter().any(|a| {
                    l.contains(&format!("action=\"{a}\""))
                        || l.contains(&format!("action={a} "))
                        || l.contains(&format!("\"action\":\"{a}\""))
                })
        })
        .filter_map(|l| {
            let at = l.find("msg_id")? + "msg_id".len();
            let rest = l[at..].trim_start_matches(['=', '"', ':', ' ']);
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            (id.len() == 26).then_some(id)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Python peer

/// One SMTP reply from the Python peer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    fn from_json(v: &Value) -> Reply {
        Reply {
            code: v["code"].as_u64().unwrap_or(0) as u16,
            lines: v["lines"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|l| l.as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The last line: `CODE ENH text`.
    pub fn last(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }

    /// The text of a `250 2.0.0 Ok: queued as ID` reply.
    pub fn queued_id(&self) -> Option<String> {
        self.last()
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .map(|s| s.trim().to_string())
    }
}

#[derive(Debug)]
pub struct Step {
    pub replies: Vec<Reply>,
    pub closed: bool,
}

#[derive(Debug)]
pub struct Transcript {
    pub greeting: Option<Reply>,
    pub steps: Vec<Step>,
    pub tls: Value,
    pub raw: Value,
}

impl Transcript {
    fn from_json(v: Value) -> Transcript {
        assert!(v.get("error").is_none(), "peer failed: {v}");
        let steps = v["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| Step {
                        replies: s["replies"]
                            .as_array()
                            .map(|r| r.iter().map(Reply::from_json).collect())
                            .unwrap_or_default(),
                        closed: s["closed"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Transcript {
            greeting: v
                .get("greeting")
                .filter(|g| !g.is_null())
                .map(Reply::from_json),
            steps,
            tls: v["tls"].clone(),
            raw: v,
        }
    }

    /// The last line of the only/first reply of step `i`.
    pub fn line(&self, i: usize) -> &str {
        self.steps
            .get(i)
            .and_then(|s| s.replies.first())
            .map(|r| r.last())
            .unwrap_or("")
    }

    /// Last lines of all replies of step `i`.
    pub fn lines(&self, i: usize) -> Vec<&str> {
        self.steps
            .get(i)
            .map(|s| s.replies.iter().map(|r| r.last()).collect())
            .unwrap_or_default()
    }
}

/// Run a Python peer with `input` as JSON on stdin; its stdout parsed as JSON.
pub fn run_python(script: &Path, input: &Value) -> Value {
    let mut child = Command::new(PYTHON)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python peer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write peer spec");
    let out = child.wait_with_output().expect("peer output");
    assert!(
        out.status.success(),
        "python peer failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("peer JSON")
}

/// Run one scripted session with the Python ssl peer.
pub fn py(spec: Value) -> Transcript {
    Transcript::from_json(run_python(&peers_dir().join("smtp_peer.py"), &spec))
}

/// Run several sessions, in order, in one Python process.
pub fn py_many(specs: Vec<Value>) -> Vec<Transcript> {
    let out = run_python(
        &peers_dir().join("smtp_peer.py"),
        &json!({ "sessions": specs }),
    );
    out.as_array()
        .expect("array of transcripts")
        .iter()
        .cloned()
        .map(Transcript::from_json)
        .collect()
}

/// Start a Python peer in the background (for sessions that span a signal).
pub fn py_spawn(spec: Value) -> Child {
    let mut child = Command::new(PYTHON)
        .arg(peers_dir().join("smtp_peer.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python peer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.to_string().as_bytes())
        .expect("write peer spec");
    child
}

pub fn py_wait(child: Child) -> Transcript {
    let out = child.wait_with_output().expect("peer output");
    assert!(
        out.status.success(),
        "python peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Transcript::from_json(serde_json::from_slice(&out.stdout).expect("peer JSON"))
}

/// Step helpers.
pub fn send(s: &str) -> Value {
    json!({ "send": s })
}

pub fn send_n(s: &str, n: usize) -> Value {
    json!({ "send": s, "replies": n })
}

pub fn starttls() -> Value {
    json!({ "tls": true, "replies": 0 })
}

pub fn auth_plain(user: &str, pass: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    format!("AUTH PLAIN {b}\r\n")
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Steps that bring a STARTTLS session to the post-TLS EHLO.
pub fn starttls_prelude() -> Vec<Value> {
    vec![
        send("EHLO client.test\r\n"),
        send("STARTTLS\r\n"),
        starttls(),
        send("EHLO client.test\r\n"),
    ]
}

// ---------------------------------------------------------------------------------
// Plain TCP client (plaintext phase only)

pub struct Plain {
    pub stream: BufReader<TcpStream>,
}

impl Plain {
    pub fn connect(port: u16) -> Plain {
        Self::from_stream(TcpStream::connect(("127.0.0.1", port)).expect("connect"))
    }

    /// Connect from a specific loopback source address (e.g. 127.0.0.2).
    pub fn connect_from(source: &str, port: u16) -> Plain {
        let sock = socket_from(source, port);
        Self::from_stream(sock)
    }

    fn from_stream(s: TcpStream) -> Plain {
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        Plain {
            stream: BufReader::new(s),
        }
    }

    /// Read one complete reply; returns its lines (empty on EOF).
    pub fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            match self.stream.read_line(&mut l) {
                Ok(0) | Err(_) => return lines,
                Ok(_) => {}
            }
            let l = l.trim_end_matches(['\r', '\n']).to_string();
            let more = l.as_bytes().get(3) == Some(&b'-');
            lines.push(l);
            if !more {
                return lines;
            }
        }
    }

    /// Last line of the next reply.
    pub fn line(&mut self) -> String {
        self.reply().pop().unwrap_or_default()
    }

    pub fn write(&mut self, b: &[u8]) {
        self.stream.get_mut().write_all(b).expect("write");
    }

    /// Send a command and return the last line of its reply.
    pub fn cmd(&mut self, b: &[u8]) -> String {
        self.write(b);
        self.line()
    }

    /// True when the server closed the connection (EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}

/// TCP connect to 127.0.0.1:port from the loopback address `source`.
fn socket_from(source: &str, port: u16) -> TcpStream {
    let src: SocketAddr = format!("{source}:0").parse().expect("source addr");
    bind_connect(src, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn bind_connect(src: SocketAddr, dst: SocketAddr) -> TcpStream {
    // std offers no bind-before-connect; tokio's TcpSocket does, run it on a
    // throwaway current-thread runtime and convert back to a std stream.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(src).expect("bind source address");
        let stream = s.connect(dst).await.expect("connect from source");
        let std = stream.into_std().expect("into std");
        std.set_nonblocking(false).expect("blocking");
        std
    })
}

// ---------------------------------------------------------------------------------
// Content checks

/// No bare CR, bare LF or NUL anywhere.
pub fn crlf_only(b: &[u8]) -> bool {
    for (i, &c) in b.iter().enumerate() {
        match c {
            0 => return false,
            b'\r' if b.get(i + 1) != Some(&b'\n') => return false,
            b'\n' if i == 0 || b[i - 1] != b'\r' => return false,
            _ => {}
        }
    }
    true
}

/// Split a stored message into (Received header, rest): the header phigate prepends
/// is the first field, folded lines included.
pub fn split_received(eml: &[u8]) -> (String, Vec<u8>) {
    assert!(eml.starts_with(b"Received: "), "no Received header first");
    let mut i = 0;
    loop {
        let nl = eml[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("header line end")
            + i
            + 2;
        i = nl;
        if !matches!(eml.get(i), Some(b' ') | Some(b'\t')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&eml[..i]).to_string(),
        eml[i..].to_vec(),
    )
}
