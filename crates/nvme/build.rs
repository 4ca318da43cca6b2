//! The `spdk` feature: finds SPDK, checks the checked-in bindings against it, links it. Without
//! the feature there is nothing to build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "spdk")]
    spdk::configure();
}

/// The `spdk` feature: find SPDK, check the checked-in bindings against it, link it.
///
/// Without SPDK nothing here fails: `cargo check --features spdk` type-checks the backend
/// against spdk/bindings.rs. The libraries are named to the linker either way, so building a
/// binary without SPDK fails at link time naming them, after the warning below says how to get
/// them.
#[cfg(feature = "spdk")]
mod spdk {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// SPDK's libraries the backend needs, as pkg-config names them (spdk_syslibs brings the
    /// system libraries they use).
    const PACKAGES: &[&str] = &["spdk_nvme", "spdk_env_dpdk", "spdk_syslibs"];
    /// What to link when SPDK is not found, so the link error names them.
    const LIBRARIES: &[&str] = &["spdk_nvme", "spdk_env_dpdk"];
    /// Functions, types and constants of wrapper.h that bindings.rs covers.
    const FUNCTIONS: &str = "spdk_env_opts_init|spdk_env_init|spdk_dma_zmalloc|spdk_dma_free|\
        spdk_mem_register|spdk_mem_unregister|spdk_nvme_transport_id_parse|spdk_nvme_connect|\
        spdk_nvme_detach|spdk_nvme_ctrlr_process_admin_completions|spdk_nvme_ctrlr_get_ns|spdk_nvme_ns_is_active|\
        spdk_nvme_ns_get_sector_size|spdk_nvme_ns_get_num_sectors|\
        spdk_nvme_ns_get_max_io_xfer_size|spdk_nvme_ns_get_flags|spdk_nvme_ctrlr_alloc_io_qpair|\
        spdk_nvme_ctrlr_free_io_qpair|spdk_nvme_ns_cmd_read|spdk_nvme_ns_cmd_write|\
        spdk_nvme_ns_cmd_flush|spdk_nvme_ns_cmd_write_zeroes|\
        spdk_nvme_ns_cmd_dataset_management|spdk_nvme_qpair_process_completions";

    pub fn configure() {
        println!("cargo:rerun-if-env-changed=SPDK_DIR");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        println!("cargo:rerun-if-env-changed=BLUEPOLL_SPDK_BLESS");
        println!("cargo:rerun-if-changed=spdk/wrapper.h");
        println!("cargo:rerun-if-changed=spdk/bindings.rs");
        match find() {
            Some(found) => {
                link(&found.libs);
                check_bindings(&found.includes);
            }
            None => {
                println!(
                    "cargo:warning=SPDK was not found: pkg-config knows no {}{}. `cargo check \
                     --features spdk` works without it; linking needs lib{}. Install SPDK \
                     (https://spdk.io; spdk/README.md says how) and set SPDK_DIR to its build \
                     tree or PKG_CONFIG_PATH to its .pc files.",
                    PACKAGES.join(", "),
                    if std::env::var_os("SPDK_DIR").is_some() {
                        " (not even with SPDK_DIR's build/lib/pkgconfig on the path)"
                    } else {
                        ""
                    },
                    LIBRARIES.join(" and lib")
                );
                for lib in LIBRARIES {
                    println!("cargo:rustc-link-lib={lib}");
                }
            }
        }
    }

    /// Passes pkg-config's link flags on. SPDK's and DPDK's static archives register their
    /// transports and drivers in constructors nothing references, so they go in whole.
    fn link(libs: &str) {
        let flags: Vec<&str> = libs.split_whitespace().collect();
        let dirs: Vec<PathBuf> = flags
            .iter()
            .filter_map(|f| f.strip_prefix("-L"))
            .map(PathBuf::from)
            .collect();
        for dir in &dirs {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        for flag in &flags {
            if flag.starts_with("-L") || flag.contains("whole-archive") {
                continue;
            }
            let Some(lib) = flag.strip_prefix("-l") else {
                println!("cargo:rustc-link-arg={flag}");
                continue;
            };
            let has = |ext: &str| {
                dirs.iter()
                    .any(|d| d.join(format!("lib{lib}.{ext}")).exists())
            };
            let ours = lib.starts_with("spdk_") || lib.starts_with("rte_");
            if !has("so") && has("a") && ours {
                println!("cargo:rustc-link-lib=static:+whole-archive={lib}");
            } else if !has("so") && has("a") {
                println!("cargo:rustc-link-lib=static={lib}");
            } else {
                println!("cargo:rustc-link-lib={lib}");
            }
        }
    }

    struct Found {
        libs: String,
        includes: Vec<PathBuf>,
    }

    fn pkg_config(args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("pkg-config");
        if let Some(dir) = std::env::var_os("SPDK_DIR") {
            let dir = Path::new(&dir);
            let mut path = std::env::join_paths([
                dir.join("build/lib/pkgconfig"),
                dir.join("dpdk/build/lib/pkgconfig"),
            ])
            .ok()?;
            if let Some(old) = std::env::var_os("PKG_CONFIG_PATH") {
                path.push(":");
                path.push(old);
            }
            cmd.env("PKG_CONFIG_PATH", path);
        }
        let out = cmd.args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn find() -> Option<Found> {
        let mut args = vec!["--libs", "--static"];
        args.extend(PACKAGES);
        let libs = pkg_config(&args)?;
        let mut args = vec!["--cflags-only-I"];
        args.extend(PACKAGES);
        let includes = pkg_config(&args)?
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("-I"))
            .map(PathBuf::from)
            .collect();
        Some(Found { libs, includes })
    }

    /// Regenerates the bindings from the installed headers and compares them with the checked-in
    /// ones (or, with BLUEPOLL_SPDK_BLESS=1, replaces them).
    fn check_bindings(includes: &[PathBuf]) {
        let mut builder = bindgen::Builder::default()
            .header("spdk/wrapper.h")
            .allowlist_function(FUNCTIONS.split_whitespace().collect::<String>())
            .allowlist_type("spdk_nvme_cpl|spdk_nvme_dsm_range|spdk_env_opts|spdk_nvme_transport_id")
            // The flags and the DSM attribute are enum members: allowlisting the enums brings
            // them, as constants named without the enum's name.
            .allowlist_type("spdk_nvme_ns_flags|spdk_nvme_dsm_attribute")
            .prepend_enum_name(false)
            .allowlist_var("SPDK_NVMF_(TRSTRING|TRADDR|TRSVCID|NQN)_MAX_LEN")
            .merge_extern_blocks(true)
            .generate_comments(false)
            .opaque_type("spdk_nvme_ctrlr|spdk_nvme_ns|spdk_nvme_qpair|spdk_nvme_ctrlr_opts|spdk_nvme_io_qpair_opts")
            .wrap_unsafe_ops(true)
            .layout_tests(false);
        for dir in includes {
            builder = builder.clang_arg(format!("-I{}", dir.display()));
        }
        let generated = match builder.generate() {
            Ok(b) => b.to_string(),
            Err(e) => panic!("bindgen could not read spdk/wrapper.h with SPDK's headers: {e}"),
        };
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
            .join("spdk_bindings.rs");
        std::fs::write(&out, &generated).expect("writing the regenerated bindings");
        let checked_in = std::fs::read_to_string("spdk/bindings.rs").unwrap_or_default();
        if std::env::var_os("BLUEPOLL_SPDK_BLESS").is_some() {
            std::fs::write("spdk/bindings.rs", &generated).expect("writing spdk/bindings.rs");
            println!("cargo:warning=spdk/bindings.rs replaced by bindgen's output for this SPDK");
            return;
        }
        // Compared without comments and layout: the declarations themselves must agree.
        if declarations(&checked_in) != declarations(&generated) {
            panic!(
                "spdk/bindings.rs does not match the SPDK installed here: compare it with {} \
                 (e.g. `diff spdk/bindings.rs {}`); if the installed SPDK is the one to build \
                 against, rebuild with BLUEPOLL_SPDK_BLESS=1 to adopt its bindings",
                out.display(),
                out.display()
            );
        }
    }

    /// The declarations of a bindings file, whitespace and comments removed, sorted (bindgen's
    /// order follows the headers'), the layout assertions left out.
    fn declarations(text: &str) -> Vec<String> {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .filter(|l| {
                !l.trim_start().starts_with("const _:") && !l.trim_start().starts_with("#![")
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut items: Vec<String> = code
            .split(';')
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .collect();
        items.sort();
        items
    }
}
