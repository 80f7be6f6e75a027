//! A real browser for the portal tests: headless Chromium (Debian's chromium and
//! chromium-driver) driven over W3C WebDriver by `tests/peers/webdriver.py`, whose
//! docstring lists the step vocabulary. One `browser_run` is one fresh browser session
//! (empty profile, no cookies) that runs every step in order.

use super::{peers_dir, require_tool, PYTHON};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a whole session may take before it is stopped (SIGTERM, so webdriver.py still
/// kills chromedriver and Chromium); well above the few seconds a run takes.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

/// Are Chromium and chromedriver installed? With CI=true a missing one fails the test
/// (see `require_tool`); otherwise the caller prints nothing more and returns.
pub fn browser_available() -> bool {
    // webdriver.py runs these exact paths, not whatever is first on PATH.
    require_tool("/usr/bin/chromedriver") && require_tool("/usr/bin/chromium")
}

/// Run `steps` (a JSON array, or {"options", "steps"}) in one browser session: one
/// result per step, or the error webdriver.py reported (failing step's index, op, the
/// page URL, and the results before it) with its stderr.
pub fn browser_run(steps: &Value) -> Result<Vec<Value>, String> {
    let file = tempfile::Builder::new()
        .prefix("browser-steps-")
        .suffix(".json")
        .tempfile()
        .map_err(|e| format!("steps file: {e}"))?;
    std::fs::write(file.path(), steps.to_string()).map_err(|e| format!("steps file: {e}"))?;
    let (ok, stdout, stderr) = run_peer(&["run", &file.path().to_string_lossy()])?;
    let out: Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("webdriver.py output is not JSON ({e}): {stdout}\n{stderr}"))?;
    match out {
        Value::Array(results) if ok => Ok(results),
        other => Err(format!("webdriver.py failed: {other}\n{stderr}")),
    }
}

/// `webdriver.py png-check`: PIL's view of a screenshot (size, distinct colours, share of
/// non-background pixels). Ok with the stats when every check passed, Err otherwise.
pub fn png_check(png: &Path, width: u32, height: u32, min_colours: u32) -> Result<Value, String> {
    let (w, h, c) = (
        width.to_string(),
        height.to_string(),
        min_colours.to_string(),
    );
    let png = png.to_string_lossy();
    let args = [
        "png-check",
        &png,
        "--width",
        &w,
        "--height",
        &h,
        "--min-colours",
        &c,
    ];
    let (ok, stdout, stderr) = run_peer(&args)?;
    let stats: Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("png-check output is not JSON ({e}): {stdout}\n{stderr}"))?;
    if ok {
        Ok(stats)
    } else {
        Err(format!("png-check failed: {stats}"))
    }
}

/// Run webdriver.py with `args`: (exited 0, stdout, stderr). Its output is read while it
/// runs (a page source can be bigger than a pipe buffer), and it is stopped after
/// SESSION_TIMEOUT.
fn run_peer(args: &[&str]) -> Result<(bool, String, String), String> {
    let mut child = Command::new(PYTHON)
        .arg(peers_dir().join("webdriver.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run webdriver.py: {e}"))?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > SESSION_TIMEOUT {
            // SIGTERM first: webdriver.py then quits the session and kills chromedriver.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            return Err(format!("webdriver.py {args:?} timed out\n{stderr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    // The session start-up time and any traceback, for whoever reads a failed test.
    eprint!("{stderr}");
    Ok((status.success(), stdout, stderr))
}
