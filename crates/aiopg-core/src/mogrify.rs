//! `mogrify`: parameters rendered as SQL literals (being written).
