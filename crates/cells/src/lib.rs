//! A Pydio Cells node as one Ferry source (`cells:///path/to/home`).
//!
//! - [`home`]: the stores of a Cells working directory.
//! - [`map`]: each service's Bolt layout into the MongoDB documents Cells
//!   reads, with `_id`s derived from the Bolt location so every write is
//!   idempotent.

pub mod home;
pub mod map;

pub use home::{CellsHome, HomeError};
pub use map::{map, unmap, MapError, MapOptions, Mapped, Prefixes, Service};
