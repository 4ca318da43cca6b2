//! The `bluepoll` command.

use anyhow::{Result, bail};

mod cli;

/// mimalloc: the store's reactors allocate what the kv-sync thread frees, and glibc's arenas
/// serialise those cross-thread frees on a lock (seen in profiles of the store bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: bluepoll <command> [arguments]

commands:
  bench [JOBFILE...] [--OPTION=VALUE...]   run fio-style jobs (default: bench/jobs/quick.fio on mem:256M)
  bluefs COMMAND --db=URI [...]            make, inspect and maintain a BlueFS (bluefs --help)
  kv COMMAND --db=URI [...]                get, put, scan the RocksDB in a BlueFS (kv --help)
  mkfs [--force] DEVICES                   make an object store (mkfs --help)
  fsck [--deep] [--repair] DEVICES         check an object store; exit status 1 when damaged
  expand DEVICES                           grow a store onto its enlarged main device
  perf dump DEVICES                        a store's counters and latency histograms as JSON
  store COMMAND [ARGS] DEVICES             ls, stat, get, put, rm objects (store --help)
  image COMMAND [ARGS] DEVICES             create, ls, info, rm, resize block images (image --help)
  serve DEVICES [--listen=ADDR:PORT]       export the images over NBD (serve --help)
  stress run|check --log=FILE DEVICES      a verified workload with a side log, and its checker
  drill kill9 --dir=DIR [--runs=N]         kill -9 a stress run N times; check after each
  kvbench --dir=DIR [...]                  db_bench-style workloads: RocksDB on BlueFS vs the kernel
  compare PEER.json OURS.json              side-by-side table of two fio-format JSON results
  devinfo URI                              open a device and print its namespace facts
  selftest device URI --destructive [--serial=S --capacity=SIZE --block-size=N --strict]
                                           check the NVMe driver against a controller
                                           (overwrites the first 48 MiB; pcie: devices)
  selftest prepare-image|check-image FILE  the QEMU harness's host-side steps
  version                                  print the version

DEVICES: --slow=URI [--db=URI] [--wal=URI] or --config=FILE (a store config), and --cpus=LIST

Run `bluepoll bench --help` for the job options, docs/bench.md for details.";

const BENCH_HELP: &str = "\
usage: bluepoll bench [JOBFILE...] [--OPTION=VALUE...]

Runs fio job files and/or jobs given as options (`--name=NAME` starts one). Options on the
command line override those in job files. With neither, runs the built-in quick job.

job options (fio's names and meanings):
  name rw bs iodepth numjobs size offset runtime time_based ramp_time rwmixread rwmixwrite
  filename (a device URI: mem:SIZE, null:SIZE, uring:PATH, pcie:DDDD:BB:DD.F, fault:[OPTS+]URI)
  ioengine=dev|bluefs|store|kstore (bluefs, store: filename=URI or slow=URI|db=URI|wal=URI;
    kstore: directory=DIR, object data as RocksDB values on the kernel filesystem)
  fsync fdatasync (a Flush / BlueFS fsync every N writes) bluefs_mkfs (ioengine=bluefs)
  nrfiles (objects per job) store_config=FILE store_mkfs store_deferred_size rate_iops
  kstore_stripe
  direct percentile_list group_reporting randrepeat randseed norandommap verify=crc32c
  do_verify stonewall write_lat_log write_bw_log write_iops_log write_hist_log log_avg_msec
  log_hist_msec log_max_value log_offset log_prio per_job_logs cpus_allowed thread

run options:
  --output-format=normal|json|json+|terse (comma-separated)   --minimal   --terse-version=3
  --output=FILE   --cpus=LIST (e.g. 0,1 or 0-3)
  --plot=FILE.svg   --eta=auto|always|never   --layout=0 (do not pre-fill fresh mem: devices)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match cli::logger::install().and_then(|()| dispatch(&args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bluepoll: error: {error:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(args: &[String]) -> Result<i32> {
    let Some(command) = args.first() else {
        println!("{USAGE}");
        return Ok(2);
    };
    let rest = &args[1..];
    match command.as_str() {
        "bench" => {
            if rest.iter().any(|a| a == "--help" || a == "-h") {
                println!("{BENCH_HELP}");
                return Ok(0);
            }
            Ok(bluepoll::bench::run(rest)?.exit_code)
        }
        "bluefs" => cli::bluefs::run(rest),
        #[cfg(feature = "store")]
        "kv" | "mkfs" | "fsck" | "expand" | "perf" | "store" | "stress" | "image" | "serve"
        | "drill" | "kvbench" => store_command(command, rest),
        #[cfg(not(feature = "store"))]
        "kv" | "mkfs" | "fsck" | "expand" | "perf" | "store" | "stress" | "image" | "serve"
        | "drill" | "kvbench" => bail!(
            "'{command}' needs the object store, which this build of bluepoll leaves out \
             (built without the `store` feature, to skip RocksDB); build with the default \
             features for it"
        ),
        "compare" => {
            bluepoll::bench::compare::run(rest)?;
            Ok(0)
        }
        "devinfo" => {
            let [uri] = rest else {
                bail!("usage: bluepoll devinfo URI")
            };
            let device = bluepoll::nvme::Device::open(uri)?;
            let i = device.info();
            println!("uri:            {}", i.uri);
            println!("model:          {}", i.model);
            if !i.serial.is_empty() {
                println!("serial:         {}", i.serial);
            }
            println!("class:          {}", i.class);
            println!("block size:     {}", i.block_size);
            println!(
                "capacity:       {} blocks ({} bytes)",
                i.capacity_blocks,
                i.capacity_bytes()
            );
            println!("max transfer:   {} bytes", i.max_transfer_bytes);
            println!("buffer align:   {} bytes", i.buffer_alignment);
            println!("max qdepth:     {}", i.max_queue_depth);
            println!("flush:          {}", i.ops.flush);
            println!("write zeroes:   {}", i.ops.write_zeroes);
            println!(
                "trim:           {} (reads zeroes after: {})",
                i.ops.trim, i.trim_reads_zeroes
            );
            println!("volatile cache: {}", i.volatile_write_cache);
            Ok(0)
        }
        "selftest" => selftest(rest),
        "version" | "--version" | "-V" => {
            println!("bluepoll {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => bail!(
            "unknown command '{other}' (commands: bench, bluefs, kv, kvbench, mkfs, fsck, perf, store, compare, devinfo, selftest, version)"
        ),
    }
}

/// The commands over the object store, RocksDB, images and NBD (the `store` feature).
#[cfg(feature = "store")]
fn store_command(command: &str, rest: &[String]) -> Result<i32> {
    match command {
        "kv" => cli::kv::run(rest),
        "mkfs" => cli::store::mkfs(rest),
        "fsck" => cli::store::fsck(rest),
        "expand" => cli::store::expand(rest),
        "perf" => cli::store::perf(rest),
        "store" => cli::store::run(rest),
        "stress" => cli::stress::run(rest),
        "image" => cli::image::run(rest),
        "serve" => cli::image::serve(rest),
        "drill" => cli::stress::drill(rest),
        "kvbench" => {
            bluepoll::bench::kv_bench::run(rest)?;
            Ok(0)
        }
        other => bail!("unknown command '{other}'"),
    }
}

/// `bluepoll selftest conformance URI --destructive [--offset=SIZE] [--size=SIZE]`: the suite
/// every backend passes in the tests (crates/nvme/src/conformance.rs), on a slice of the device (by
/// default its last 4 MiB), which it overwrites. One `ok` or `FAIL` line, and the checks the
/// device's advertised features made it skip.
fn conformance(target: &str, options: &[String]) -> Result<i32> {
    let (mut destructive, mut offset, mut size) = (false, None, 4u64 << 20);
    for option in options {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let bytes =
            || bluepoll::units::parse_size(value).map_err(|e| anyhow::anyhow!("{key}: {e}"));
        match key {
            "--destructive" => destructive = true,
            "--offset" => offset = Some(bytes()?),
            "--size" => size = bytes()?,
            _ => bail!(
                "unknown option '{option}' (conformance takes --destructive, --offset, --size)"
            ),
        }
    }
    let device = bluepoll::nvme::Device::open(target)?;
    let capacity = device.info().capacity_bytes();
    let offset = offset.unwrap_or(capacity.saturating_sub(size));
    if !destructive {
        bail!(
            "the conformance checks overwrite {size} bytes of {target} at {offset}; pass --destructive to run them"
        );
    }
    let slice = device.slice(offset, size)?;
    // `null:` completes reads without data: its read-back checks are skipped (and said so).
    let moves_data = !target.starts_with("null:");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bluepoll::nvme::conformance::check_backend_on(&slice, moves_data)
    }));
    match outcome {
        Ok(skipped) if skipped.is_empty() => {
            println!("ok   conformance ({size} bytes at {offset})");
            Ok(0)
        }
        Ok(skipped) => {
            println!(
                "ok   conformance ({size} bytes at {offset}); skipped: {}",
                skipped.join(", ")
            );
            Ok(0)
        }
        // The panic's message is on stderr already.
        Err(_) => {
            println!("FAIL conformance ({size} bytes at {offset})");
            Ok(1)
        }
    }
}

/// `bluepoll selftest ...`: the NVMe driver's checks (see crates/nvme/src/pcie/selftest.rs).
fn selftest(args: &[String]) -> Result<i32> {
    use bluepoll::nvme::pcie::selftest::{self as st, Outcome};
    const USAGE: &str = "usage: bluepoll selftest device URI --destructive [--serial=S] \
[--capacity=SIZE] [--block-size=N] [--strict]
       bluepoll selftest conformance URI --destructive [--offset=SIZE] [--size=SIZE]
       bluepoll selftest prepare-image FILE | check-image FILE | rogue-dma URI";
    let Some((step, rest)) = args.split_first() else {
        bail!("{USAGE}")
    };
    let (target, options) = match rest.split_first() {
        Some((target, options)) => (target.as_str(), options),
        None => bail!("{USAGE}"),
    };
    let report = match step.as_str() {
        "prepare-image" => {
            st::prepare_image(std::path::Path::new(target))?;
            println!("host pattern written to {target}");
            return Ok(0);
        }
        "check-image" => st::check_image(std::path::Path::new(target))?,
        "rogue-dma" => {
            println!("{}", st::rogue_dma(target)?);
            return Ok(0);
        }
        "conformance" => return conformance(target, options),
        "device" => {
            let mut expect = st::Expectations::default();
            let (mut destructive, mut strict) = (false, false);
            for option in options {
                let (key, value) = option.split_once('=').unwrap_or((option, ""));
                match key {
                    "--destructive" => destructive = true,
                    "--strict" => strict = true,
                    "--serial" => expect.serial = Some(value.to_string()),
                    "--capacity" => {
                        expect.capacity_bytes = Some(
                            bluepoll::units::parse_size(value)
                                .map_err(|e| anyhow::anyhow!("--capacity: {e}"))?,
                        )
                    }
                    "--block-size" => {
                        expect.block_size = Some(
                            value
                                .parse()
                                .map_err(|_| anyhow::anyhow!("--block-size: '{value}'"))?,
                        )
                    }
                    _ => bail!("unknown option '{option}'\n{USAGE}"),
                }
            }
            if !destructive {
                bail!(
                    "the device checks overwrite the first 48 MiB of {target}; \
                     pass --destructive to run them"
                );
            }
            let mut report = st::run_device_checks(target, &expect)?;
            if strict {
                for check in &mut report.checks {
                    if check.outcome == Outcome::Skip {
                        check.outcome = Outcome::Fail;
                    }
                }
            }
            report
        }
        other => bail!("unknown selftest step '{other}'\n{USAGE}"),
    };
    for line in report.lines() {
        println!("{line}");
    }
    let failed = report.count(Outcome::Fail);
    println!(
        "selftest {step}: {} passed, {failed} failed, {} skipped",
        report.count(Outcome::Pass),
        report.count(Outcome::Skip)
    );
    Ok(if failed == 0 { 0 } else { 1 })
}
