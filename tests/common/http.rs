//! HTTP peers shared by the metrics, webhook and leak tests: a GET with Python's urllib
//! (an independent client) and a loopback receiver that records every POST.

use super::PYTHON;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// GET `url` with Python's urllib; returns the status and the whole response (status,
/// headers and body) as urllib saw it.
pub fn http_get(url: &str) -> (u16, String) {
    let script = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n\
except urllib.error.HTTPError as e:\n    r = e\n\
print(r.status); print(r.headers); print(r.read().decode())\n";
    let out = Command::new(PYTHON)
        .args(["-c", script, url])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.lines().next().unwrap_or_default().trim().parse();
    let status = status.unwrap_or_else(|_| {
        panic!(
            "GET {url}: no status: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, text)
}

/// The value of the Prometheus exposition line starting with `series ` (name plus
/// label set, labels in the order phigate writes them).
pub fn metric_sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// One request as the receiver got it: request line and headers, then the body.
#[derive(Debug, Clone)]
pub struct Post {
    pub head: String,
    pub body: Vec<u8>,
}

impl Post {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with(&prefix)
                .then(|| l[prefix.len()..].trim().to_string())
        })
    }
}

/// A minimal HTTP/1.1 receiver on loopback: records every request and answers it with
/// `status(n)` (n = how many came before, e.g. `"500 Internal Server Error"`).
pub fn http_receiver(
    status: impl Fn(usize) -> &'static str + Send + 'static,
) -> (u16, Arc<Mutex<Vec<Post>>>) {
    http_receiver_at(0, status)
}

/// [`http_receiver`] on a given port (0: any), e.g. one that was down until now.
pub fn http_receiver_at(
    port: u16,
    status: impl Fn(usize) -> &'static str + Send + 'static,
) -> (u16, Arc<Mutex<Vec<Post>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind HTTP receiver");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let (mut head, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut all = got2.lock().unwrap_or_else(|p| p.into_inner());
            let answer = status(all.len());
            all.push(Post { head, body });
            drop(all);
            let _ = stream.write_all(
                format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, got)
}
