//! Probes of frozen representations: kNN, linear, low-shot, RankMe.

pub mod knn;
pub mod linear;
pub mod rankme;
