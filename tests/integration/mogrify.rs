//! mogrify integration tests (being written).
