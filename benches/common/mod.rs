//! What both benches share: the measuring harness ([`bench`]) and the ceilings a kernel's rate
//! is read against ([`ceiling`]). Not part of the library: nothing that trains uses them.

pub mod bench;
pub mod ceiling;
