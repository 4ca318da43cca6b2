//! The `bluepoll` command's subcommands beyond `bench` (which main.rs hands to the bench crate),
//! one module per layer they operate. Without the `store` feature only the BlueFS tools remain.

pub mod bluefs;
#[cfg(feature = "store")]
pub mod image;
#[cfg(feature = "store")]
pub mod kv;
pub mod logger;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "store")]
pub mod stress;
