//! The server's integration tests, in one binary so that the helpers and
//! the dependencies they instantiate are compiled and linked once. Each
//! module starts the real `sslab` processes it needs.

mod common;

mod api;
mod artifact_store;
mod audits;
mod auth;
mod automation;
mod browser;
mod cka;
mod cli;
mod datasets;
mod decoders;
mod openapi;
mod stored;
mod studies;
mod sweeps;
mod workers;
