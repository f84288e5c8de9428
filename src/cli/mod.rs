//! The `visword` subcommands. Each module has an `Args` (clap) and a `run`.

pub mod embed;
pub mod inspect;
pub mod sam;
