//! The decoders' fuzz targets ([`bluepoll::fuzzing`]) in the normal test suite: for each target, a
//! bounded, deterministic run of mutated seed inputs on stable Rust. Without coverage guidance it
//! finds what damage near valid inputs finds (panics, failed round trips, allocations out of
//! proportion to the input) on every CI run; `scripts/fuzz.sh` runs the same targets under
//! libFuzzer for as long as one likes.
//!
//! `BLUEPOLL_FUZZ_ITERS` sets the inputs per target (default 200000), `BLUEPOLL_FUZZ_SEED` varies
//! the mutations. A failure names the target and prints the input as hex, ready to become a test
//! in `mod regressions`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic;

use bluepoll::fuzzing::{TARGETS, seeds};
use bluepoll::rand::Rng;

const DEFAULT_ITERATIONS: u64 = 200_000;

/// Inputs never grow past this: no decoder reads more than a few blocks.
const MAX_INPUT: usize = 64 << 10;

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_test() {
            let here = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(here.contains(name), "add {name} to targets! in tests/decoder_fuzz.rs");
            }
        }
    };
}

targets!(
    bluefs_label,
    bluefs_superblock,
    bluefs_log,
    store_label,
    store_superblock,
    store_onode,
    store_extent_shard,
    store_collection,
    store_deferred,
    store_u64_record,
    store_keys,
    bench_verify,
    job_file,
    bench_args,
    store_config,
    image_object_map,
    image_records,
    nbd_messages,
);

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

fn run(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name} in bluepoll::fuzzing::TARGETS"))
        .1;
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "{name} has no seeds");
    let iterations = env_number("BLUEPOLL_FUZZ_ITERS", DEFAULT_ITERATIONS);
    // Each target its own stream, so adding a target does not change what the others try.
    let stream = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut mutator = Mutator {
        rng: Rng::new(stream ^ env_number("BLUEPOLL_FUZZ_SEED", 0)),
        seeds: &seeds,
    };
    for seed in &seeds {
        check(name, target, seed, "seed");
    }
    let mut input = Vec::new();
    for i in 0..iterations {
        // Half the time mutate further from the last input, to get far from the seeds.
        if i % 2 == 0 || input.is_empty() {
            input = mutator.pick().to_vec();
        }
        mutator.mutate(&mut input);
        check(name, target, &input, &format!("input {i}"));
    }
    eprintln!(
        "fuzz {name}: {} inputs, 0 panics",
        seeds.len() as u64 + iterations
    );
}

/// Runs `target` on `input`; fails the test, naming both, if it panics or asks for memory out
/// of proportion to the input.
fn check(name: &str, target: fn(&[u8]), input: &[u8], which: &str) {
    let limit = ALLOC_ALLOWANCE + ALLOC_PER_INPUT_BYTE * input.len();
    CURRENT.set((name.len(), name.as_ptr(), input.len(), input.as_ptr()));
    OVER_LIMIT.set(0);
    LIMIT.set(limit);
    let outcome = panic::catch_unwind(|| target(input));
    LIMIT.set(usize::MAX);
    let problem = match outcome {
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(not a string)");
            format!("panicked: {message}")
        }
        Ok(()) if OVER_LIMIT.get() > 0 => format!(
            "asked for {} bytes at once (at most {limit} for {} input bytes)",
            OVER_LIMIT.get(),
            input.len()
        ),
        Ok(()) => return,
    };
    panic!(
        "fuzz {name}: {which} {problem}\ninput ({} bytes): {}",
        input.len(),
        hex(input)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let text: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

// ---- mutations ----------------------------------------------------------------------------------

/// Boundary values decoders get wrong: zero, one, sign bits, all ones, a block.
const INTERESTING: [u64; 18] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    4095,
    4096,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 63,
    u64::MAX,
];

/// What the text formats are made of.
const TEXT: &[u8] = b"0123456789-=[],.:;#\"' \n\tkKmMgGx_abcdefghijklmnopqrstuvwxyz";

struct Mutator<'a> {
    rng: Rng,
    seeds: &'a [Vec<u8>],
}

impl Mutator<'_> {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    fn pick(&mut self) -> &[u8] {
        &self.seeds[self.below(self.seeds.len())]
    }

    fn mutate(&mut self, b: &mut Vec<u8>) {
        for _ in 0..1 + self.below(4) {
            self.mutate_once(b);
        }
        b.truncate(MAX_INPUT);
    }

    fn mutate_once(&mut self, b: &mut Vec<u8>) {
        let len = b.len();
        match self.below(10) {
            // A flipped bit.
            0 if len > 0 => {
                let at = self.below(len);
                b[at] ^= 1 << self.below(8);
            }
            // A byte set to a boundary value.
            1 if len > 0 => {
                let at = self.below(len);
                b[at] = INTERESTING[self.below(6)] as u8;
            }
            // A length or count field (any width, either byte order) set to a boundary value,
            // or to just about what is left of the input, so lengths point at or past the end.
            2 | 3 if len > 0 => {
                let width = [1, 2, 4, 8][self.below(4)].min(len);
                let at = self.below(len - width + 1);
                let value = if self.below(2) == 0 {
                    INTERESTING[self.below(INTERESTING.len())]
                } else {
                    ((len - at) as u64)
                        .wrapping_add(self.below(9) as u64)
                        .wrapping_sub(4)
                };
                let bytes = if self.below(4) == 0 {
                    value.to_be_bytes()[8 - width..].to_vec()
                } else {
                    value.to_le_bytes()[..width].to_vec()
                };
                b[at..at + width].copy_from_slice(&bytes);
            }
            4 => {
                let keep = self.below(len + 1);
                b.truncate(keep);
            }
            5 => {
                let mut tail = vec![0u8; 1 + self.below(64)];
                self.rng.fill_bytes(&mut tail);
                b.extend_from_slice(&tail);
            }
            // Part of another seed spliced in: valid fields in unexpected places.
            6 => {
                let other = self.pick().to_vec();
                let from = self.below(other.len() + 1);
                let to = from + self.below(other.len() - from + 1);
                let at = self.below(len + 1);
                if self.below(2) == 0 {
                    b.splice(at..at, other[from..to].iter().copied());
                } else {
                    b.truncate(at);
                    b.extend_from_slice(&other[from..]);
                }
            }
            // A character of the text formats, put in or over another.
            7 => {
                let c = TEXT[self.below(TEXT.len())];
                let at = self.below(len + 1);
                if at < len && self.below(2) == 0 {
                    b[at] = c;
                } else {
                    b.insert(at, c);
                }
            }
            8 if len > 0 => {
                let from = self.below(len);
                let to = from + 1 + self.below((len - from).min(64));
                b.drain(from..to);
            }
            // A run repeated: more sections, more list items, more ops.
            9 if len > 0 => {
                let from = self.below(len);
                let to = from + 1 + self.below((len - from).min(256));
                let run = b[from..to].to_vec();
                let at = self.below(len + 1);
                b.splice(at..at, run);
            }
            _ => {}
        }
    }
}

// ---- the allocation guard ------------------------------------------------------------------

/// The most one allocation may ask for while a target runs on an input of n bytes:
/// `ALLOC_ALLOWANCE + ALLOC_PER_INPUT_BYTE * n`. A decoder allocates in proportion to its input;
/// one that sizes a buffer from a length field it has not checked against the input asks for
/// far more, which this catches even where the allocation happens to succeed.
const ALLOC_ALLOWANCE: usize = 1 << 20;
const ALLOC_PER_INPUT_BYTE: usize = 64;

/// Requests past this are not tried: they would fail, and the abort that follows a failed
/// allocation would lose the input. The input is printed, then the process aborts.
const ALLOC_CEILING: usize = 1 << 32;

thread_local! {
    /// The limit while a target runs on this thread; usize::MAX otherwise.
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The largest request over the limit during the current run.
    static OVER_LIMIT: Cell<usize> = const { Cell::new(0) };
    /// The target's name and input (length, pointer of each), for the ceiling's message.
    static CURRENT: Cell<(usize, *const u8, usize, *const u8)> =
        const { Cell::new((0, std::ptr::null(), 0, std::ptr::null())) };
}

struct Guarded;

#[global_allocator]
static ALLOCATOR: Guarded = Guarded;

/// Notes a request of `size` bytes; false if it must be refused.
fn admit(size: usize) -> bool {
    let limit = LIMIT.try_with(Cell::get).unwrap_or(usize::MAX);
    if size <= limit {
        return true;
    }
    OVER_LIMIT.set(OVER_LIMIT.get().max(size));
    if size <= ALLOC_CEILING {
        return true;
    }
    LIMIT.set(usize::MAX);
    let (name_len, name, input_len, input) = CURRENT.get();
    // SAFETY: `check` set these from a &str and a &[u8] that outlive the target's run, and only
    // the target's run has a limit that can be exceeded.
    let (name, input) = unsafe {
        (
            std::slice::from_raw_parts(name, name_len),
            std::slice::from_raw_parts(input, input_len),
        )
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "fuzz {}: asked for {size} bytes at once; aborting\ninput ({input_len} bytes): ",
        String::from_utf8_lossy(name)
    );
    for byte in input {
        let _ = write!(err, "{byte:02x}");
    }
    let _ = writeln!(err);
    std::process::abort();
}

// SAFETY: every call is forwarded to the system allocator unchanged, or refused by aborting.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        admit(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        admit(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        admit(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

// ---- the seed corpus ----------------------------------------------------------------------------

/// Writes every target's seeds to `$BLUEPOLL_FUZZ_CORPUS/NAME/seed-N`, for cargo-fuzz
/// (`scripts/fuzz.sh seed`).
#[test]
#[ignore = "writes files: run by scripts/fuzz.sh"]
fn write_seed_corpus() {
    let dir = std::env::var_os("BLUEPOLL_FUZZ_CORPUS")
        .map(std::path::PathBuf::from)
        .expect("BLUEPOLL_FUZZ_CORPUS names the corpus directory");
    for (name, _) in TARGETS {
        let target_dir = dir.join(name);
        std::fs::create_dir_all(&target_dir).unwrap();
        for (i, seed) in seeds(name).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}

// ---- crashes found, kept ------------------------------------------------------------------------

/// The harness itself: an oversized allocation is reported like a panic, with the input.
#[test]
fn an_allocation_out_of_proportion_to_the_input_fails_the_target() {
    fn greedy(data: &[u8]) {
        let claimed = u32::from_le_bytes(data.try_into().unwrap()) as usize;
        std::hint::black_box(Vec::<u8>::with_capacity(claimed));
    }
    check("greedy", greedy, &4096u32.to_le_bytes(), "input 0");
    let failure = panic::catch_unwind(|| {
        check("greedy", greedy, &(256u32 << 20).to_le_bytes(), "input 1");
    })
    .expect_err("a 256 MiB request on 4 input bytes");
    let message = failure.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("fuzz greedy: input 1 asked for 268435456 bytes"),
        "{message}"
    );
    assert!(message.contains("input (4 bytes): 00000010"), "{message}");
}

/// One test per bug the targets found, with the input that found it. Block-sized inputs are
/// built with the encoders rather than spelt out in hex: 8 KiB of hex would hide the one field
/// that matters.
mod regressions {
    use super::{check, unhex};
    use bluepoll::fuzzing;
    use bluepoll::store::StoreConfig;
    use bluepoll::store::format as st;

    /// The target on `input`, under the harness's checks (allocations included).
    fn rerun(target: &str, input: &[u8]) {
        let run = fuzzing::TARGETS
            .iter()
            .find(|(n, _)| *n == target)
            .unwrap()
            .1;
        check(target, run, input, "regression input");
    }

    fn config(store_section: &str) -> String {
        format!("[devices]\nslow = \"mem:1G\"\n[store]\n{store_section}\n")
    }

    /// decode_shard took the remainder of the extent length by the checksum block, which is 0
    /// when a label says so: a divide-by-zero panic. Found on the target's second seed.
    #[test]
    fn store_extent_shard_under_a_zero_checksum_block() {
        let value = unhex(
            "01 02000000
             00000000 00100000 0000100000000000 78563412
             00200000 00300000 0000300000000000 78563412 79563412 7a563412
             f905468d",
        );
        rerun("store_extent_shard", &value);
        assert!(st::decode_shard(&value, 0, 4096).is_ok());
        assert!(st::decode_shard(&value, 0, 0).is_err());
    }

    /// decode_shard sized each extent's checksum list from its length before reading it: one
    /// extent of u32::MAX bytes under a 1-byte checksum block asked for 16 GiB. Found reading
    /// the decoder while writing its target.
    #[test]
    fn store_extent_shard_checksum_count_bounded_by_the_value() {
        let value = unhex("01 01000000 00000000 ffffffff 0000000000000000 63a08c20");
        rerun("store_extent_shard", &value);
        let err = st::decode_shard(&value, 0, 1).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }

    /// The store label decoder took any allocation unit and checksum block: a label with a
    /// valid crc and a checksum block of 0 got past mount to divide by zero in reads and fsck.
    /// Found as a label with checksum block 0x100079.
    #[test]
    fn store_label_with_sizes_mkfs_never_writes() {
        for (min_alloc_size, csum_block) in [(4096, 0x10_0079), (4096, 0), (0, 0), (4096, 8192)] {
            let block = st::encode_label(&st::Label {
                fsid: [7; 16],
                device_size: 1 << 30,
                created_ns: 1,
                db_offset: 0,
                db_len: 0,
                data_start: 1 << 20,
                min_alloc_size,
                csum_block,
            });
            rerun("store_label", &block);
            let err = st::decode_label(&block).unwrap_err();
            assert!(
                matches!(err, st::FormatError::Invalid { .. }),
                "{min_alloc_size}/{csum_block}: {err}"
            );
        }
    }

    /// Same for the store superblock, whose extent-shard span readers also divide by.
    #[test]
    fn store_superblock_with_sizes_mkfs_never_writes() {
        for (min_alloc_size, csum_block, shard_span) in
            [(4096, 4096, 0), (4096, 0, 1 << 16), (8192, 4096, 4096)]
        {
            let value = st::encode_superblock(&st::Superblock {
                fsid: [7; 16],
                min_alloc_size,
                csum_block,
                shard_span,
                created_ns: 1,
            });
            rerun("store_superblock", &value);
            assert!(st::decode_superblock(&value).is_err());
        }
    }

    /// A range of CPUs in the store config was expanded whole: `0-99999999999` asked for
    /// 800 GB. Found reading the parser.
    #[test]
    fn store_config_cpu_range_beyond_any_machine() {
        for cpus in [
            "\"0-99999999999\"",
            "\"0-18446744073709551615\"",
            "\"5,0-8191\"",
        ] {
            let text = config(&format!("cpus = {cpus}"));
            rerun("store_config", text.as_bytes());
            let err = StoreConfig::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("more than 8192 CPUs"), "{cpus}: {err}");
        }
        assert!(StoreConfig::from_toml(&config("cpus = \"0-8191\"")).is_ok());
    }

    /// `queue_depth` was cut to 32 bits: 4294967304 became a valid-looking 8. Found reading the
    /// parser; the target's check that numbers reach their knobs whole fails on it.
    #[test]
    fn store_config_queue_depth_beyond_32_bits() {
        let text = config("queue_depth = 4294967304");
        rerun("store_config", text.as_bytes());
        assert!(StoreConfig::from_toml(&text).is_err());
    }

    /// Every CPU of a `cpus_allowed` list was checked against the whole list, so a few KiB of
    /// `0-4096,4097-8193,…` took hours. Found reading the parser.
    #[test]
    fn bench_cpu_list_naming_thousands_of_cpus() {
        let ranges: Vec<String> = (0..400u64)
            .map(|i| format!("{}-{}", i * 4097, i * 4097 + 4096))
            .collect();
        let line = format!("--cpus_allowed={}", ranges.join(","));
        rerun("bench_args", line.as_bytes());
        let job = format!("[global]\ncpus_allowed={}\n[a]\n", ranges.join(","));
        rerun("job_file", job.as_bytes());
        let err = bluepoll::bench::options::parse_cpu_list(&ranges.join(",")).unwrap_err();
        assert!(err.contains("more than 8192"), "{err}");
        assert_eq!(
            bluepoll::bench::options::parse_cpu_list("0-4096,4097-8191")
                .unwrap()
                .len(),
            8192
        );
    }
}
