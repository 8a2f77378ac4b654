//! Harness for ringway's end-to-end tests: start the gateway process on port 0, start real
//! upstream servers on port 0, talk to both through real sockets.
//!
//! Every server here listens on 127.0.0.1 only, and every wait is bounded.

pub mod client;
pub mod gateway;
pub mod upstream;

pub use client::{Client, Response};
pub use gateway::Gateway;
pub use upstream::{Reply, SeenRequest, Upstream};
