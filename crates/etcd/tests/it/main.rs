//! ferry-etcd against real etcd servers (the testkit's, on loopback).
//!
//! One test binary for the crate, one module per area. Every wait is
//! bounded ([`common::until`]); every loop writing to a server is bounded in
//! count.

mod common;
mod compaction;
mod leases;
mod outage;
mod pipeline;
mod readonly;
mod sink;
mod store;
