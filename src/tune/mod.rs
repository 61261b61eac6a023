//! Tile sizes per adapter: the tilings as plain data, the cache file that keeps them, and the
//! autotuner that measures them.

mod autotune;

pub use autotune::*;
