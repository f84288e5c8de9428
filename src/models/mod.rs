//! Models written once against the `Backend` op set, shaped like their checkpoints.

pub mod clip;
pub mod dinov2;
pub mod vit;
