//! BoltDB reader and tailer (being written).
