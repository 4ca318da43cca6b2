//! The `bluepoll` command.

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: bluepoll <command> [arguments]

commands:
  bench [JOBFILE...] [--OPTION=VALUE...]   run fio-style jobs (default: bench/jobs/quick.fio on mem:256M)
  compare PEER.json OURS.json              side-by-side table of two fio-format JSON results
  devinfo URI                              open a device and print its namespace facts
  version                                  print the version

Run `bluepoll bench --help` for the job options, docs/bench.md for details.";

const BENCH_HELP: &str = "\
usage: bluepoll bench [JOBFILE...] [--OPTION=VALUE...]

Runs fio job files and/or jobs given as options (`--name=NAME` starts one). Options on the
command line override those in job files. With neither, runs the built-in quick job.

job options (fio's names and meanings):
  name rw bs iodepth numjobs size offset runtime time_based ramp_time rwmixread rwmixwrite
  filename (a device URI: mem:SIZE, null:SIZE, uring:PATH, fault:[OPTS+]URI) ioengine=dev
  direct percentile_list group_reporting randrepeat randseed norandommap verify=crc32c
  do_verify stonewall write_lat_log write_iops_log log_avg_msec cpus_allowed thread

run options:
  --output-format=normal|json|normal,json   --output=FILE   --cpus=LIST (e.g. 0,1 or 0-3)
  --plot=FILE.svg   --eta=auto|always|never   --layout=0 (do not pre-fill fresh mem: devices)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match dispatch(&args) {
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
        "version" | "--version" | "-V" => {
            println!("bluepoll {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => bail!("unknown command '{other}' (commands: bench, compare, devinfo, version)"),
    }
}
