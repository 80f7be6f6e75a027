//! A receiving MTA for delivery tests: `tests/peers/tls_sink.py` (aiosmtpd), with
//! STARTTLS required, or none offered at all.

use super::{free_port, peers_dir, PYTHON};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A receiving MTA on loopback writing each message to `dir/N.eml` (+ `N.json`).
pub struct Sink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Sink {
    /// `tls`: Some((cert, key)) offers STARTTLS with that certificate; None offers none.
    pub fn start(work: &Path, name: &str, tls: Option<(&Path, &Path)>) -> Sink {
        Sink::start_on(free_port(), work, name, tls)
    }

    /// [`Sink::start`] on a given port (a route written before the sink can start).
    pub fn start_on(port: u16, work: &Path, name: &str, tls: Option<(&Path, &Path)>) -> Sink {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir).expect("sink dir");
        let log = work.join(format!("{name}.log"));
        let (cert, key) = match tls {
            Some((c, k)) => (c.display().to_string(), k.display().to_string()),
            None => ("-".into(), "-".into()),
        };
        let child = Command::new(PYTHON)
            .arg(peers_dir().join("tls_sink.py"))
            .args([port.to_string(), cert, key])
            .arg(&dir)
            .stdout(std::fs::File::create(&log).expect("sink log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tls_sink.py");
        let ready = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log).is_ok_and(|s| s.contains("ready")) {
            assert!(
                Instant::now() < ready,
                "tls_sink.py did not start (python3-aiosmtpd?)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Sink { port, dir, child }
    }

    /// Wait for message number `n` (1-based): (raw bytes, envelope JSON).
    pub fn wait(&self, n: usize) -> (Vec<u8>, Value) {
        let eml = self.dir.join(format!("{n}.eml"));
        let meta = self.dir.join(format!("{n}.json"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !meta.exists() {
            assert!(
                Instant::now() < deadline,
                "no message {n} at {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let raw = std::fs::read(&eml).expect("read eml");
        let json = serde_json::from_slice(&std::fs::read(&meta).expect("json")).expect("json");
        (raw, json)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
