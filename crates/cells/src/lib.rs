//! A Pydio Cells node as one Ferry source (`cells:///path/to/home`).
//!
//! - [`home`]: the stores of a Cells working directory.
//! - [`service`]: the services with a Bolt store, their collections (with
//!   the naming of the Cells version chosen) and indexes.
//! - [`map`]: each service's Bolt layout into the MongoDB documents Cells
//!   reads, with `_id`s derived from the Bolt location so every write is
//!   idempotent.
//! - [`gobson`]: the one rule those documents follow (what Go's default
//!   BSON codec makes of Cells' structs), over the schemas in
//!   `proto/cells.proto`.

pub mod connector;
pub mod gobson;
pub mod home;
pub mod map;
pub mod service;
pub mod sink;

pub use home::{CellsHome, HomeError};
pub use map::{map, set_marker_ts, unmap, MapError, Mapped};
pub use service::{MapOptions, Prefixes, Service};
