//! Files on disk for tests: scratch directories and the optional SmolLM2 download.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A fresh scratch directory under cargo's per-target temp dir, removed on drop. Named by `tag`
/// and the process id, so tests (and test binaries) running at once never share one.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), tag)
    }

    /// The same under `base` (e.g. the system temp dir, for a prebuilt test binary run on a
    /// machine where cargo's target dir does not exist).
    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        let p = base.join(format!("visword-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SmolLM2-135M-Instruct's Q4_1 GGUF (`$VISWORD_SMOLLM2_GGUF`, else `.models/`), or `None` with a
/// note when it is not there: the tests that need it skip rather than fail.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let p = std::env::var_os("VISWORD_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found (run tools/fetch_smollm2.sh or set VISWORD_SMOLLM2_GGUF)", p.display());
        None
    }
}
