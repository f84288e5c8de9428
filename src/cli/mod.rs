//! The `visword` subcommands. Each module has an `Args` (clap) and a `run`.

pub mod bench;
pub mod convert;
pub mod embed;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod sam;
pub mod segment;
pub mod superpixels;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The directory an output goes into must exist: checked before a long run, not after it.
pub(crate) fn check_output_dir(arg: &str, path: &Option<PathBuf>) -> Result<()> {
    if let Some(p) = path {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(Error::arg(arg, format!("{}: directory {} does not exist", p.display(), dir.display())));
        }
    }
    Ok(())
}
