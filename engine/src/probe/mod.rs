//! Probes of frozen representations: kNN, linear, low-shot, RankMe, and
//! a ViT's attention distance and entropy.

pub mod attention;
pub mod knn;
pub mod linear;
pub mod rankme;
