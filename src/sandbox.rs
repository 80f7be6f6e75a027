//! Sandbox delivery: each message is written to `data_dir/sandbox/<ID>.eml` with its
//! envelope in `<ID>.json`, and never sent anywhere. A test environment that cannot
//! reach a patient.

use crate::types::{Envelope, MessageId};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("sandbox {path}: {source}")]
pub struct SandboxError {
    path: String,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, Clone)]
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    pub fn new(dir: PathBuf) -> Self {
        Sandbox { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write the envelope then the message, each atomically and durably, so a `.eml`
    /// that exists is always complete and has its envelope beside it.
    pub fn write(&self, id: MessageId, env: &Envelope, content: &[u8]) -> Result<(), SandboxError> {
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| SandboxError { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let json = serde_json::to_vec_pretty(env).map_err(|e| SandboxError {
            path: self.dir.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.dir.join(format!("{id}.json")), &json)?;
        write_atomic(&self.dir.join(format!("{id}.eml")), content)?;
        // Make the renames durable too.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err(&self.dir))
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SandboxError> {
    let tmp = path.with_extension("tmp");
    let err = |source| SandboxError {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
