//! ferry-mongo against real servers on loopback (the testkit's): a real
//! mongod 7.0 as a one-member replica set, and SecantusDB where a second
//! implementation of the wire protocol adds coverage.
//!
//! One test binary for the crate, one module per area. Every wait is
//! bounded ([`common::until`]); every loop writing to a server is bounded in
//! count.

mod bad_input;
mod common;
mod history;
mod outage;
mod pipeline;
mod readonly;
mod sink;
