//! Runs the real `phigate` binary for end-to-end tests: a per-test configuration in a
//! temp dir (free loopback port, self-signed certificate, generated keyring, relay
//! allowed from 127.0.0.0/8 so no AUTH), start/kill/stop, the CLI, and the Python SMTP
//! client in this directory. A missing tool fails the test when `CI=true`, else skips.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_phigate");
pub const PYTHON: &str = "/usr/bin/python3";

pub fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_send.py")
}

/// True when `tool` can run; otherwise panics under CI and returns false (skip) locally.
pub fn have(tool: &str) -> bool {
    if Path::new(tool).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{tool} is required for this test and is missing");
    }
    eprintln!("skipping: {tool} is missing");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Options that differ between tests.
pub struct Opts {
    /// `retention.content_after_delivery`.
    pub keep_content: &'static str,
    /// `spool.generate_key`.
    pub generate_key: bool,
    /// Where `data_dir` is; default `<tmp>/data`.
    pub data_dir: Option<PathBuf>,
    /// `spool.min_free`; default phigate's own.
    pub min_free: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            keep_content: "0s",
            generate_key: true,
            data_dir: None,
            min_free: None,
        }
    }
}

pub struct Gateway {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub key_file: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Gateway {
    pub fn new(opts: Opts) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let data = opts.data_dir.unwrap_or_else(|| dir.join("data"));
        let port = free_port();
        let key_file = dir.join("master.keys");
        let config = dir.join("phigate.toml");
        let text = format!(
            r#"[server]
hostname = "gw.test"
data_dir = "{data}"
control_socket = "{dir}/control.sock"
shutdown_grace = "2s"
[[listener]]
name = "smtps"
addr = "127.0.0.1:{port}"
tls = "implicit"
auth = ["ip"]
[tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"
generate_self_signed = true
[auth]
allow_networks = ["127.0.0.0/8"]
[delivery]
mode = "sandbox"
[spool]
key_file = "{keys}"
generate_key = {gen}
{min_free}
[queue]
retry = ["1s"]
[retention]
content_after_delivery = "{keep}"
"#,
            data = data.display(),
            dir = dir.display(),
            keys = key_file.display(),
            gen = opts.generate_key,
            min_free = opts
                .min_free
                .map(|m| format!("min_free = \"{m}\""))
                .unwrap_or_default(),
            keep = opts.keep_content,
        );
        std::fs::write(&config, text).expect("write config");
        Gateway {
            log: dir.join("phigate.log"),
            tmp,
            data,
            config,
            key_file,
            port,
            child: None,
        }
    }

    pub fn sandbox(&self) -> PathBuf {
        self.data.join("sandbox")
    }

    fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        Command::new(BIN)
            .args([
                "--config",
                self.config.to_str().expect("utf-8 path"),
                "serve",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn phigate")
    }

    /// Start and wait until the SMTP port and the control socket answer.
    pub fn start(&mut self) {
        let mut child = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = self.tmp.path().join("control.sock");
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("phigate exited at start-up ({st}):\n{}", self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::os::unix::net::UnixStream::connect(&sock).is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "phigate did not come up:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Start expecting start-up to fail; returns the exit status and what it printed.
    pub fn start_fails(&self) -> (ExitStatus, String) {
        let before = self.log_text().len();
        let mut child = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return (st, self.log_text()[before..].to_string());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "phigate kept running with a bad keyring:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let st = c.wait().expect("wait");
            assert!(
                st.success(),
                "phigate exited with {st}:\n{}",
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
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

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.cli_ok(&a)).expect("CLI JSON output")
    }

    /// Send one message file; returns the queued ID from the `250`.
    pub fn send_eml(&self, eml: &[u8]) -> String {
        let path = self.tmp.path().join("msg.eml");
        std::fs::write(&path, eml).expect("write eml");
        let out = Command::new(PYTHON)
            .arg(peer_script())
            .args(["eml", &self.port.to_string()])
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

    /// Wait until the daemon reports nothing pending.
    pub fn wait_drained(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.cli_json(&["queue", "stats"]);
            if st["pending"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "queue did not drain: {st}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
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
