//! Serialization (see below).
