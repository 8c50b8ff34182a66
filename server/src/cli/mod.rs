//! The command line's commands that run on this machine without a server:
//! `sslab train`, `eval`, `sweep`, `audit`, `cka`, `decode`, `export`, `study`
//! and `data`.

pub mod admin;
pub mod audit;
pub mod cka;
pub mod data;
pub mod decode;
pub mod export;
pub mod study;
pub mod sweep;
pub mod train;
