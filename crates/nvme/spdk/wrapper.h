/* The part of SPDK's public API the `spdk` backend (crates/nvme/src/spdk.rs) uses. build.rs runs
 * bindgen over this header (allowlist in build.rs) when the `spdk` feature is on and SPDK is
 * installed, and compares the result with bindings.rs. */
#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/nvme.h>
