//! The `visword` subcommands (argument structs and their `run` functions).

pub mod embed;
