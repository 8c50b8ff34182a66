//! Conditional generators that show what a representation holds (RCDM and
//! infusion training); see `sslab_shared::decoder`.

pub mod decode;
pub mod infusion;
pub mod rcdm;
pub mod schedule;
pub mod unet;

#[cfg(test)]
pub(crate) mod gradcheck;
