//! The Ferry agent: the long-running process of a migration.
//!
//! It owns the journal (and its lock), runs the source tailer, one replay
//! worker per (shard, target), the truncator and the lag tracker, serves
//! the HTTPS control API ([`server`], types in [`api`]) with `/metrics`, and
//! carries out the cutover when asked.

pub mod api;
pub mod barrier;
pub mod config;
mod control;
pub mod cutover;
mod page;
pub mod routes;
pub mod runtime;
pub mod scale;
pub mod security;
pub mod server;
pub mod sinks;
