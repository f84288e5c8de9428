//! Models written once against the backend op set, shaped like their checkpoints.

pub mod clip;
pub mod dinov2;
pub mod sam;
pub mod vit;
