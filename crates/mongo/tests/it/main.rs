//! ferry-mongo against real SecantusDB servers (the testkit's, on loopback).
//!
//! One test binary for the crate, one module per area. Every wait is
//! bounded ([`common::until`]); every loop writing to a server is bounded in
//! count.

mod bad_input;
mod common;
mod outage;
mod pipeline;
mod readonly;
