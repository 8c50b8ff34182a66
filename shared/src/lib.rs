//! The vocabulary of sslab, shared by the engine, the server, the dashboard
//! and the browser inference module. Serde only, so that it compiles to wasm32.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cka;
pub mod dataset;
pub mod decoder;
pub mod demo;
pub mod error;
pub mod labels;
pub mod project;
pub mod rng;
pub mod spec;
pub mod study;
pub mod sweep;
pub mod worker;

pub use error::SpecError;
pub use spec::{RunSpec, ValidSpec};
