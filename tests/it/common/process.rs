//! The process launcher the tests share with the benches (`spillway::devtools::process`).

pub use spillway::devtools::process::{Setup, free_port};
