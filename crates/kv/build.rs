//! Compiles the RocksDB FileSystem shim (src/rocks_env.cc) against the headers of the
//! RocksDB that librocksdb-sys builds, with the flags it builds RocksDB with: a class compiled
//! with other defines could disagree with the library about its own layout.

use std::path::PathBuf;

fn main() {
    rocks_env_shim();
}

fn rocks_env_shim() {
    let shim = "src/rocks_env.cc";
    println!("cargo:rerun-if-changed={shim}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ROCKSDB_CXX_STD");
    // librocksdb-sys (links = "rocksdb") publishes where its sources are.
    let Some(sources) = std::env::var_os("DEP_ROCKSDB_CARGO_MANIFEST_DIR") else {
        panic!(
            "DEP_ROCKSDB_CARGO_MANIFEST_DIR is not set: librocksdb-sys must be a direct \
             dependency of bluepoll-kv"
        );
    };
    let rocksdb = PathBuf::from(sources).join("rocksdb");
    let target = std::env::var("TARGET").unwrap_or_default();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(shim)
        .include(rocksdb.join("include"))
        .include(&rocksdb)
        .flag(
            std::env::var("ROCKSDB_CXX_STD").map_or("-std=c++20".to_owned(), |std| {
                if std.starts_with("-std=") {
                    std
                } else {
                    format!("-std={std}")
                }
            }),
        )
        .define("NDEBUG", Some("1"))
        .define("HAVE_ALIGNED_NEW", None)
        .define("HAVE_UINT128_EXTENSION", None)
        .define("ROCKSDB_PLATFORM_POSIX", None)
        .define("ROCKSDB_LIB_IO_POSIX", None)
        .warnings(true)
        .extra_warnings(false);
    if target.contains("linux") {
        build
            .define("OS_LINUX", None)
            .define("ROCKSDB_SCHED_GETCPU_PRESENT", None)
            .define("ROCKSDB_AUXV_GETAUXVAL_PRESENT", None)
            .define("ROCKSDB_FALLOCATE_PRESENT", None)
            .define("ROCKSDB_RANGESYNC_PRESENT", None);
    }
    build.compile("bluepoll_rocks_env");
}
