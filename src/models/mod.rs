//! Models written once against the backend op set, shaped like their checkpoints.

pub mod sam;
