//! Typed rows: `FromRow` (being written).
