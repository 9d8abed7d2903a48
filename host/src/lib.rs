//! terrahost host library.
