//! MongoDB source and target (being written).
