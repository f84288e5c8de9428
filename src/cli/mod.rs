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
