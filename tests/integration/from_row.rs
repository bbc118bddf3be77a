//! FromRow integration tests (being written).
