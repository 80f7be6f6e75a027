//! The CLI side of the control socket: one JSON request line, one JSON response line.
//! Also `phigate status`, which is nothing but a round trip.

use super::CliError;
use crate::config::Config;
use crate::control::{Request, Response, StatusView};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon not running (control socket {path}: {reason})")]
    NotRunning { path: PathBuf, reason: String },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: key `server.control_socket` is not set; the CLI reaches the daemon through it")]
    NoSocket(String),
    #[error("control socket {path}: unexpected reply from the daemon: {reason}")]
    BadReply { path: PathBuf, reason: String },
    /// The daemon refused or failed the request; its one-line reason.
    #[error("{0}")]
    Daemon(String),
}

/// The configuration as the CLI needs it (see [`Config::read`]).
pub fn load_config(path: &Path) -> Result<Config, CliError> {
    Ok(Config::read(path)?)
}

/// Send `req` to the daemon and decode the `data` of its answer.
pub fn call<T: DeserializeOwned>(cfg: &Config, req: &Request) -> Result<T, ClientError> {
    call_stream(cfg, req, |_| {})
}

/// Like [`call`], for requests the daemon answers with a stream of `{"line": ...}`
/// messages before the final response: each line goes to `on_line` as it arrives.
pub fn call_stream<T: DeserializeOwned>(
    cfg: &Config,
    req: &Request,
    mut on_line: impl FnMut(&str),
) -> Result<T, ClientError> {
    let path = cfg
        .server
        .control_socket
        .clone()
        .ok_or_else(|| ClientError::NoSocket(cfg.source.clone()))?;
    let io = |source: std::io::Error| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        ErrorKind::ConnectionRefused => ClientError::NotRunning {
            path: path.clone(),
            reason: "connection refused".into(),
        },
        ErrorKind::NotFound => ClientError::NotRunning {
            path: path.clone(),
            reason: "no such file".into(),
        },
        _ => io(e),
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let bad = |reason: String| ClientError::BadReply {
        path: path.clone(),
        reason,
    };
    let mut reader = BufReader::new(&stream);
    loop {
        let mut answer = String::new();
        reader.read_line(&mut answer).map_err(io)?;
        if answer.is_empty() {
            return Err(bad("connection closed without an answer".into()));
        }
        if let Ok(l) = serde_json::from_str::<crate::control::ExportLine>(&answer) {
            on_line(&l.line);
            continue;
        }
        let resp: Response = serde_json::from_str(&answer).map_err(|e| bad(e.to_string()))?;
        if !resp.ok {
            return Err(ClientError::Daemon(
                resp.error.unwrap_or_else(|| "request failed".into()),
            ));
        }
        return serde_json::from_value(resp.data.unwrap_or_default())
            .map_err(|e| bad(e.to_string()));
    }
}

/// Print `data` as pretty JSON (the `--json` form of every command).
pub fn print_json<T: serde::Serialize>(data: &T) {
    println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
}

/// Unix seconds as RFC 3339 UTC, for tables.
pub fn when(secs: u64) -> String {
    let fmt = time::format_description::well_known::Rfc3339;
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// `phigate status [--json]`.
pub fn status(config: &Path, json: bool) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let st: StatusView = call(&cfg, &Request::Status)?;
    if json {
        print_json(&st);
        return Ok(());
    }
    println!(
        "phigate {} running (pid {}, up {}s) as {}",
        st.version, st.pid, st.uptime_secs, st.hostname
    );
    println!(
        "current key {}; {} messages, {} pending, oldest pending {}",
        st.current_key.as_deref().unwrap_or("-"),
        st.stats.messages,
        st.stats.pending,
        st.stats
            .oldest_pending_age
            .map_or_else(|| "-".to_string(), |a| format!("{a}s"))
    );
    println!("{:<12} {}", "LISTENERS", st.listeners.join(", "));
    println!("{:<12} {}", "KEYS", st.key_ids.join(", "));
    for (state, n) in &st.stats.recipients_by_state {
        println!("{:<12} {state:?} {n}", "RECIPIENTS");
    }
    if st.last_errors.is_empty() {
        println!("{:<12} none", "LAST ERRORS");
    }
    for e in &st.last_errors {
        println!("{:<12} {e}", "LAST ERROR");
    }
    Ok(())
}
