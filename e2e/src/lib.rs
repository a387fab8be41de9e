//! End-to-end tests of Ordinal.
//!
//! Two kinds, one crate:
//! - local chaos tests against real PostgreSQL servers started on
//!   127.0.0.1, run in every CI run;
//! - cluster scenarios against the cluster of `KUBECONFIG`, `#[ignore]`d and
//!   run with `cargo test -p ordinal-e2e -- --ignored`.
//!
//! Both grow with the failover loop and the install issues.

pub mod local;
