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

/// Declares `name_io_uring` and `name_epoll` tests calling `name(driver)`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod under_io_uring {
            $( #[test] fn $name() { super::$name("io_uring") } )*
        }
        mod under_epoll {
            $( #[test] fn $name() { super::$name("epoll") } )*
        }
    };
}
