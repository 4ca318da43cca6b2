//! Fuzz targets for every decoder that reads what bluepoll did not just write itself: what comes
//! back from a device (BlueFS's label, superblock and log; the store's label and its RocksDB keys
//! and values; bench verify blocks) and the text people write (fio job files and `bench`
//! options, the store's TOML config).
//!
//! Two drivers share the targets: `fuzz/` (cargo-fuzz: libFuzzer, coverage-guided, run by
//! `scripts/fuzz.sh`) and `tests/decoder_fuzz.rs` (a bounded, deterministic mutation run in the
//! normal test suite). A target takes arbitrary bytes and panics only through its own assertions.
//! A decoder may refuse anything, but what it accepts must re-encode to something that decodes to
//! the same value (or, for text, hold what the text said), so the targets find logic bugs as well
//! as crashes. docs/fuzzing.md says how to run them.
//!
//! Most structures end in or carry a crc32c, which mutated bytes almost never match: fed only
//! as they are, they would exercise the checksum and nothing behind it. So each target of a
//! checksummed structure decodes its input twice, as it is and "resealed" with its checksums
//! recomputed, which lets mutations reach the field decoders.

use std::collections::HashSet;

use crate::bench::jobfile::{self, RawJob, RawOption};
use crate::bench::options::{self, JobSpec};
use crate::bench::verify;
use crate::bluefs::format::{self as fs, DeviceId, Extent, Fnode, LogOp};
use crate::store::StoreConfig;
use crate::store::format as st;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, under the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("bluefs_label", bluefs_label),
    ("bluefs_superblock", bluefs_superblock),
    ("bluefs_log", bluefs_log),
    ("store_label", store_label),
    ("store_superblock", store_superblock),
    ("store_onode", store_onode),
    ("store_extent_shard", store_extent_shard),
    ("store_collection", store_collection),
    ("store_deferred", store_deferred),
    ("store_u64_record", store_u64_record),
    ("store_keys", store_keys),
    ("bench_verify", bench_verify),
    ("job_file", job_file),
    ("bench_args", bench_args),
    ("store_config", store_config),
    ("image_object_map", image_object_map),
    ("image_records", image_records),
    ("nbd_messages", nbd_messages),
];

const BLOCK: usize = fs::BLOCK_SIZE as usize;

/// Where the crc32c sits in the BlueFS label and superblock and in the store label (each covers
/// its first block with this field skipped), and in a bench verify block (which it covers whole).
const BLOCK_CRC_AT: usize = 12;

/// Log frame header fields (docs/format.md, "Log frame").
const FRAME_PAYLOAD_LEN_AT: usize = 12;
const FRAME_UUID_AT: usize = 16;
const FRAME_SEQ_AT: usize = 32;
const FRAME_PAYLOAD_CRC_AT: usize = 40;
const FRAME_HEADER_CRC_AT: usize = 44;

const UUID: fs::Uuid = *b"bluepoll-fuzzing";

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Runs `check` on `data` and, if resealing changed it, on the resealed bytes too.
fn as_is_and_resealed(data: &[u8], resealed: Option<Vec<u8>>, mut check: impl FnMut(&[u8])) {
    check(data);
    if let Some(r) = resealed.filter(|r| r.as_slice() != data) {
        check(&r);
    }
}

/// `b` with the crc32c at `crc_at` recomputed over all of `b` except that field.
fn resealed_skipping(b: &[u8], crc_at: usize) -> Option<Vec<u8>> {
    if b.len() < crc_at + 4 {
        return None;
    }
    let mut out = b.to_vec();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..crc_at]), &b[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// A one-block structure resealed; bytes past the block are left as they are, as the decoders
/// ignore them.
fn resealed_block(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = resealed_skipping(&data[..data.len().min(BLOCK)], BLOCK_CRC_AT)?;
    out.extend_from_slice(data.get(BLOCK..).unwrap_or_default());
    Some(out)
}

/// A store value (`… crc32c u32`) with its trailing crc recomputed.
fn resealed_value(v: &[u8]) -> Option<Vec<u8>> {
    let body = &v[..v.len().checked_sub(4)?];
    let mut out = body.to_vec();
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    Some(out)
}

// ---- BlueFS ----------------------------------------------------------------------------------

pub fn bluefs_label(data: &[u8]) {
    as_is_and_resealed(data, resealed_block(data), |b| {
        if let Ok(label) = fs::decode_label(b) {
            assert_eq!(fs::decode_label(&fs::encode_label(&label)), Ok(label));
        }
    });
}

pub fn bluefs_superblock(data: &[u8]) {
    as_is_and_resealed(data, resealed_block(data), |b| {
        if let Ok(sb) = fs::decode_superblock(b) {
            // The encoder refuses what the decoder would; the converse must hold too, or a
            // mounted filesystem could not write back the superblock it read.
            let block = fs::encode_superblock(&sb)
                .unwrap_or_else(|e| panic!("a decoded superblock does not re-encode: {e}"));
            assert_eq!(fs::decode_superblock(&block), Ok(sb));
        }
    });
}

/// The log three ways: walked frame by frame as mount's replay walks it; its first frame with
/// both checksums recomputed; and its first frame's payload behind a fresh valid header, where
/// the op encoding must also be canonical (the encoder gives back the very bytes).
pub fn bluefs_log(data: &[u8]) {
    replay(data);
    if let Some(frame) = resealed_frame(data) {
        replay(&frame);
    }
    let payload = frame_payload(data);
    if u32::try_from(payload.len()).is_ok() {
        let frame = sealed_frame(&UUID, 7, payload);
        if let Ok((t, used)) = fs::decode_transaction(&frame, &UUID, 7) {
            assert_eq!(used, frame.len());
            assert!(
                fs::encode_transaction(&t) == frame,
                "a decoded frame re-encodes to other bytes: {t:?}"
            );
        }
    }
}

/// Decodes frames from the start of `log` under the uuid and sequence number its first header
/// claims, until one does not decode.
fn replay(log: &[u8]) {
    let Some((uuid, mut seq)) = fs::peek_frame(log) else {
        return;
    };
    let mut at = 0;
    while at < log.len() {
        let rest = &log[at..];
        let Ok((t, used)) = fs::decode_transaction(rest, &uuid, seq) else {
            break;
        };
        assert_eq!(fs::frame_len_from_header(rest), Some(used));
        assert!(
            used > 0 && used % BLOCK == 0,
            "frame length {used} is not whole blocks"
        );
        let again = fs::encode_transaction(&t);
        assert_eq!(
            fs::decode_transaction(&again, &uuid, seq),
            Ok((t, again.len()))
        );
        at += used;
        seq = seq.wrapping_add(1);
    }
}

/// The first frame with its payload crc (when the bytes it covers are there) and header crc
/// recomputed.
fn resealed_frame(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < fs::FRAME_HEADER_LEN {
        return None;
    }
    let mut f = data.to_vec();
    let payload_len = le_u32(&f, FRAME_PAYLOAD_LEN_AT) as usize;
    let frame_len = (fs::FRAME_HEADER_LEN + payload_len).next_multiple_of(BLOCK);
    if let Some(covered) = f.get(fs::FRAME_HEADER_LEN..frame_len) {
        let crc = crc32c::crc32c(covered);
        f[FRAME_PAYLOAD_CRC_AT..FRAME_PAYLOAD_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&f[..FRAME_HEADER_CRC_AT]);
    f[FRAME_HEADER_CRC_AT..FRAME_HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    Some(f)
}

/// The ops of the frame `data` starts with (as many bytes as its header says are there), or all
/// of `data` when it does not start with a frame: libFuzzer may find payloads directly.
fn frame_payload(data: &[u8]) -> &[u8] {
    if data.len() < fs::FRAME_HEADER_LEN || !data.starts_with(&fs::FRAME_MAGIC) {
        return data;
    }
    let len = le_u32(data, FRAME_PAYLOAD_LEN_AT) as usize;
    let end = data.len().min(fs::FRAME_HEADER_LEN.saturating_add(len));
    &data[fs::FRAME_HEADER_LEN..end]
}

/// A version-1 frame around `payload`, zero-padded, with both checksums right: what
/// `encode_transaction` writes, built without it.
fn sealed_frame(uuid: &fs::Uuid, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; fs::FRAME_HEADER_LEN];
    f.extend_from_slice(payload);
    f.resize(f.len().next_multiple_of(BLOCK), 0);
    f[..8].copy_from_slice(&fs::FRAME_MAGIC);
    f[8..10].copy_from_slice(&fs::FormatVersion::CURRENT.as_u16().to_le_bytes());
    f[FRAME_PAYLOAD_LEN_AT..FRAME_UUID_AT].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[FRAME_UUID_AT..FRAME_SEQ_AT].copy_from_slice(uuid);
    f[FRAME_SEQ_AT..FRAME_PAYLOAD_CRC_AT].copy_from_slice(&seq.to_le_bytes());
    resealed_frame(&f).expect("a whole header")
}

// ---- the object store --------------------------------------------------------------------------

pub fn store_label(data: &[u8]) {
    as_is_and_resealed(data, resealed_block(data), |b| {
        if let Ok(label) = st::decode_label(b) {
            // What every reader divides by or steps through.
            assert!(label.min_alloc_size.is_power_of_two() && label.csum_block.is_power_of_two());
            assert!(label.csum_block <= label.min_alloc_size);
            assert_eq!(st::decode_label(&st::encode_label(&label)), Ok(label));
        }
    });
}

pub fn store_superblock(data: &[u8]) {
    as_is_and_resealed(data, resealed_value(data), |v| {
        if let Ok(sb) = st::decode_superblock(v) {
            assert!(sb.csum_block.is_power_of_two() && sb.min_alloc_size.is_power_of_two());
            assert!(sb.shard_span.is_power_of_two());
            assert!(sb.csum_block <= sb.min_alloc_size && sb.min_alloc_size <= sb.shard_span);
            assert_eq!(st::decode_superblock(&st::encode_superblock(&sb)), Ok(sb));
        }
    });
}

pub fn store_onode(data: &[u8]) {
    as_is_and_resealed(data, resealed_value(data), |v| {
        if let Ok(onode) = st::decode_onode(v) {
            assert_eq!(st::decode_onode(&st::encode_onode(&onode)), Ok(onode));
        }
    });
}

/// (shard start, checksum block) pairs a shard is decoded under: the common case, a larger
/// block, the last shard of the largest object, and blocks no valid store has (a label or
/// superblock that slipped through must not make this decoder panic or over-allocate).
const SHARD_PARAMS: [(u64, u32); 5] = [
    (0, 4096),
    (1 << 17, 8192),
    ((u32::MAX as u64) << 30, 4096),
    (0, 1),
    (0, 0),
];

pub fn store_extent_shard(data: &[u8]) {
    as_is_and_resealed(data, resealed_value(data), |v| {
        for (start, csum_block) in SHARD_PARAMS {
            if let Ok(extents) = st::decode_shard(v, start, csum_block) {
                let again = st::encode_shard(start, &extents);
                assert_eq!(st::decode_shard(&again, start, csum_block), Ok(extents));
            }
        }
    });
}

pub fn store_collection(data: &[u8]) {
    as_is_and_resealed(data, resealed_value(data), |v| {
        if let Ok(cid) = st::decode_coll(v) {
            assert_eq!(st::decode_coll(&st::encode_coll(cid)), Ok(cid));
        }
    });
}

pub fn store_deferred(data: &[u8]) {
    as_is_and_resealed(data, resealed_value(data), |v| {
        if let Ok(writes) = st::decode_deferred(v) {
            let again = st::encode_deferred(writes.iter().map(|(at, d)| (*at, d.as_slice())));
            assert_eq!(st::decode_deferred(&again), Ok(writes));
        }
    });
}

pub fn store_u64_record(data: &[u8]) {
    as_is_and_resealed(data, resealed_value(data), |v| {
        if let Ok(n) = st::decode_u64_record("fuzzed record", v) {
            assert_eq!(
                st::decode_u64_record("fuzzed record", &st::encode_u64_record(n)),
                Ok(n)
            );
        }
    });
}

/// An image's object map: the first 8 bytes say how many objects, the rest are its blocks
/// (each also tried with its crc recomputed). What decodes must encode to the same blocks.
pub fn image_object_map(data: &[u8]) {
    use crate::image::object_map::{MAP_BLOCK, OBJECTS_PER_BLOCK, ObjectMap};
    let Some((count, blocks)) = data.split_first_chunk::<8>() else {
        return;
    };
    // Bounded by the bytes given, as a reader sizes the map from the image header and then
    // reads exactly that many blocks.
    let objects = u64::from_le_bytes(*count) % (4 * OBJECTS_PER_BLOCK);
    let resealed = (!blocks.is_empty() && blocks.len() % MAP_BLOCK == 0).then(|| {
        let mut out = blocks.to_vec();
        for b in out.chunks_exact_mut(MAP_BLOCK) {
            let crc = crc32c::crc32c(&b[..MAP_BLOCK - 4]);
            b[MAP_BLOCK - 4..].copy_from_slice(&crc.to_le_bytes());
        }
        out
    });
    as_is_and_resealed(blocks, resealed, |b| {
        if let Ok(map) = ObjectMap::decode(b, objects) {
            let again: Vec<u8> = (0..map.blocks())
                .flat_map(|i| map.encode_block(i))
                .collect();
            assert_eq!(
                again, b,
                "an object map that decodes re-encodes to other bytes"
            );
        }
    });
}

/// An image's small records: the header, a snapshot, the parent link, the snapshot sequence
/// (the first byte picks which; each also tried with its crc recomputed). What decodes must
/// encode to the same bytes.
pub fn image_records(data: &[u8]) {
    use crate::image::rbd::ImageInfo;
    use crate::image::snapshot::{ParentLink, SnapInfo, decode_seq, encode_seq};
    let Some((&kind, record)) = data.split_first() else {
        return;
    };
    let crc_at = record.len().saturating_sub(4);
    as_is_and_resealed(record, resealed_skipping(record, crc_at), |b| {
        let again = match kind % 4 {
            0 => ImageInfo::decode(b).ok().map(|i| i.encode()),
            1 => SnapInfo::decode(b).ok().map(|s| s.encode()),
            2 => ParentLink::decode(b).ok().map(|p| p.encode()),
            _ => decode_seq(b).ok().map(encode_seq),
        };
        if let Some(again) = again {
            assert_eq!(
                again, b,
                "an image record that decodes re-encodes to other bytes"
            );
        }
    });
}

/// What an NBD client sends the server: a transmission request header (which must re-encode to
/// the same bytes) and the data of an NBD_OPT_INFO / NBD_OPT_GO option.
pub fn nbd_messages(data: &[u8]) {
    use crate::nbd::protocol::{Request, parse_info_request};
    if let Some(head) = data.first_chunk::<{ Request::LEN }>()
        && let Ok(r) = Request::decode(head)
    {
        assert_eq!(&r.encode(), head);
    }
    if let Some((name, infos)) = parse_info_request(data) {
        assert!(name.len() + 2 * infos.len() + 6 <= data.len());
    }
}

/// The store's key decoders, and the merge operator's view of a freelist or reference value.
pub fn store_keys(data: &[u8]) {
    if let Ok(n) = st::key_number(data) {
        assert_eq!(st::freelist_key(n)[1..], data[1..]);
    }
    if let Ok(name) = st::name_of_onode_key(data) {
        let cid = u32::from_be_bytes(data[1..5].try_into().expect("4 bytes"));
        assert_eq!(st::onode_key(cid, &name), data);
    }
    // A shard key must fall in its own object's scan range (the read path finds shards that
    // way), whatever bytes the name holds.
    if let Some(name) = data.get(4..).and_then(|n| std::str::from_utf8(n).ok()) {
        let cid = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
        let prefix = st::shard_prefix(cid, name);
        let end = st::prefix_end(&prefix);
        for index in [0, 1, u32::MAX] {
            let key = st::shard_key(&prefix, index);
            assert!(prefix <= key && key < end, "shard {index} of {name:?}");
        }
    }
    let lanes = st::lanes_of(data, st::FREELIST_LANES);
    assert_eq!(lanes.len(), st::FREELIST_LANES.max(data.len().div_ceil(8)));
    let bytes: Vec<u8> = lanes.iter().flat_map(|l| l.to_le_bytes()).collect();
    assert_eq!(&bytes[..data.len()], data);
    assert!(bytes[data.len()..].iter().all(|&b| b == 0));
    // RocksDB's merge operator must read a value's lanes as the store does.
    let mut sum = Vec::new();
    crate::kv::add_lanes(&mut sum, data);
    assert_eq!(sum[..], lanes[..sum.len()]);
}

// ---- bench verify blocks ---------------------------------------------------------------------

/// A block read back by a `verify=crc32c` job. The engine only checks whole units of `bs` bytes
/// (a multiple of the device block), so shorter inputs are not blocks at all.
pub fn bench_verify(data: &[u8]) {
    if data.len() < verify::HEADER_LEN || u32::try_from(data.len()).is_err() {
        return;
    }
    // The offset and generation the block claims, so the checks past the crc are reached.
    let offset = le_u64(data, 16);
    let generation = le_u64(data, 24);
    as_is_and_resealed(data, resealed_skipping(data, BLOCK_CRC_AT), |b| {
        if verify::check(b, offset, generation).is_ok() {
            assert!(verify::check(b, offset ^ 1, 0).is_err(), "misdirected");
            // 0 means "not known", so the stale generation asked for must not be 0.
            if generation != 0 {
                let other = generation.wrapping_add(1).max(1);
                assert!(verify::check(b, offset, other).is_err(), "stale");
            }
        }
    });
    let mut block = data.to_vec();
    verify::fill(&mut block, offset, generation);
    assert_eq!(verify::check(&block, offset, generation), Ok(()));
}

// ---- text ---------------------------------------------------------------------------------------

/// A job file: whatever parses must say the same when written back as a job file, and every job
/// that resolves must hold the limits its options promise.
pub fn job_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(jobs) = jobfile::parse("fuzz.fio", &text) else {
        return;
    };
    let again = jobfile::parse("fuzz.fio", &write_job_file(&jobs))
        .unwrap_or_else(|e| panic!("parsed jobs written back do not parse: {e}"));
    assert_eq!(job_contents(&again), job_contents(&jobs));
    for job in &jobs {
        if let Ok(spec) = options::resolve(job, &job.globals, &job.options, &[]) {
            check_spec(&spec);
        }
    }
}

/// `bench` arguments, one per line. A line without `--` would name a job file; the target adds
/// the dashes rather than read files.
pub fn bench_args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("--") {
                l.to_string()
            } else {
                format!("--{l}")
            }
        })
        .collect();
    if let Ok(invocation) = options::parse_invocation(&args) {
        invocation.jobs.iter().for_each(check_spec);
        if let Some(cpus) = &invocation.run.cpus {
            check_cpu_list(cpus);
        }
    }
}

/// A store config: what parses is valid, and every number in the file reached its knob whole.
pub fn store_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = StoreConfig::from_toml(&text) else {
        return;
    };
    assert!(config.validate().is_ok());
    assert!(!config.devices.slow.is_empty());
    let table: toml::Table = text.parse().expect("from_toml parsed it");
    let Some(toml::Value::Table(store)) = table.get("store") else {
        return;
    };
    for (key, value) in store {
        let written = match value {
            toml::Value::Integer(n) => *n as u64,
            toml::Value::String(s) => match crate::units::parse_size(s) {
                Ok(n) => n,
                Err(_) => continue,
            },
            _ => continue,
        };
        if let Some(held) = store_knob(&config, key) {
            assert_eq!(held, written, "store.{key}");
        }
    }
}

/// The value of a numeric `[store]` option, in the unit the file gives it in.
fn store_knob(c: &StoreConfig, key: &str) -> Option<u64> {
    Some(match key {
        "min_alloc_size" => c.min_alloc_size,
        "csum_block" => c.csum_block,
        "extent_shard_span" => c.extent_shard_span,
        "prefer_deferred_size" => c.prefer_deferred_size?,
        "deferred_batch_ops" => c.deferred_batch_ops as u64,
        "deferred_max_age_ms" => c.deferred_max_age.as_millis() as u64,
        "throttle_bytes" => c.throttle_bytes,
        "throttle_cost_per_io" => c.throttle_cost_per_io?,
        "throttle_deferred_bytes" => c.throttle_deferred_bytes,
        "cache_bytes" => c.cache_bytes,
        "db_size" => c.db_size?,
        "bluefs_reserve" => c.bluefs_reserve?,
        "queue_depth" => u64::from(c.queue_depth),
        "idle_spin_us" => c.idle_spin.as_micros() as u64,
        "kv_write_buffer_size" => c.kv.write_buffer_size as u64,
        "bluefs_read_cache_bytes" => c.bluefs.read_cache_bytes,
        _ => return None,
    })
}

/// Jobs as a job file: each job's `[global]` options are the previous job's plus those that came
/// between them, so writing just the new ones before each job gives every job the same globals.
fn write_job_file(jobs: &[RawJob]) -> String {
    fn line(out: &mut String, o: &RawOption) {
        out.push_str(&o.key);
        if let Some(v) = &o.value {
            out.push('=');
            out.push_str(v);
        }
        out.push('\n');
    }
    let mut out = String::new();
    let mut globals_written: &[RawOption] = &[];
    for job in jobs {
        let new = job
            .globals
            .strip_prefix(globals_written)
            .expect("a later job's globals extend an earlier one's");
        if !new.is_empty() {
            out.push_str("[global]\n");
            new.iter().for_each(|o| line(&mut out, o));
        }
        globals_written = &job.globals;
        out.push_str(&format!("[{}]\n", job.name));
        job.options.iter().for_each(|o| line(&mut out, o));
    }
    out
}

type Options = Vec<(String, Option<String>)>;

/// Jobs without the line numbers they came from.
fn job_contents(jobs: &[RawJob]) -> Vec<(&str, Options, Options)> {
    let options = |list: &[RawOption]| -> Options {
        list.iter()
            .map(|o| (o.key.clone(), o.value.clone()))
            .collect()
    };
    jobs.iter()
        .map(|j| (j.name.as_str(), options(&j.globals), options(&j.options)))
        .collect()
}

/// The limits `bench`'s options promise for every job that resolves.
fn check_spec(spec: &JobSpec) {
    assert!((1..=1 << 30).contains(&spec.bs), "bs {}", spec.bs);
    assert!(spec.iodepth >= 1 && spec.numjobs >= 1 && spec.nrfiles >= 1);
    assert!(spec.iodepth_batch_submit <= 65536);
    assert!(spec.rwmixread <= 100);
    assert!(spec.sample_every_ns() >= 1_000_000);
    assert!(spec.percentage_random <= 100 && spec.loops >= 1);
    assert!((1..=1 << 30).contains(&spec.min_bs()) && spec.max_bs() <= 1 << 30);
    assert!(spec.min_bs() <= spec.max_bs());
    assert!(spec.size != Some(0));
    assert!(!spec.percentile_list.is_empty());
    assert!(
        spec.percentile_list.iter().all(|&p| p > 0.0 && p <= 100.0),
        "{:?}",
        spec.percentile_list
    );
    if let Some(cpus) = &spec.cpus_allowed {
        check_cpu_list(cpus);
    }
}

fn check_cpu_list(cpus: &[usize]) {
    assert!(!cpus.is_empty());
    let mut seen = HashSet::new();
    assert!(cpus.iter().all(|c| seen.insert(c)), "a CPU listed twice");
}

// ---- seeds --------------------------------------------------------------------------------------

/// Valid inputs for `target`, made with the encoders (or, for text, the files the repository
/// ships): where mutation starts. Empty for a name not in [`TARGETS`].
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "bluefs_label" => DeviceId::ALL
            .iter()
            .map(|&device| {
                fs::encode_label(&fs::Label {
                    uuid: UUID,
                    device,
                    device_size: 1 << 30,
                    created_ns: 1_700_000_000_000_000_000,
                })
            })
            .collect(),
        "bluefs_superblock" => [0, 1, 3, fs::MAX_SUPERBLOCK_LOG_EXTENTS]
            .iter()
            .map(|&n| {
                fs::encode_superblock(&fs::Superblock {
                    uuid: UUID,
                    generation: 42,
                    block_size: fs::BLOCK_SIZE as u32,
                    alloc_units: [0, 64 << 10, 1 << 20],
                    log_fnode: Fnode {
                        ino: 1,
                        size: 0,
                        mtime_ns: 5,
                        extents: extents(n),
                    },
                    log_first_seq: 1,
                })
                .expect("a valid superblock")
            })
            .collect(),
        "bluefs_log" => log_seeds(),
        "store_label" => [(1 << 20, 64 << 20), (0, 0)]
            .iter()
            .map(|&(db_offset, db_len)| {
                st::encode_label(&st::Label {
                    fsid: UUID,
                    device_size: 1 << 30,
                    created_ns: 7,
                    db_offset,
                    db_len,
                    data_start: 80 << 20,
                    min_alloc_size: 4096,
                    csum_block: 4096,
                })
            })
            .collect(),
        "store_superblock" => vec![st::encode_superblock(&st::Superblock {
            fsid: UUID,
            min_alloc_size: 4096,
            csum_block: 4096,
            shard_span: 64 << 10,
            created_ns: 7,
        })],
        "store_onode" => {
            let mut attrs = std::collections::BTreeMap::new();
            let empty = st::OnodeRecord::default();
            attrs.insert("_".to_string(), vec![1, 2, 3]);
            attrs.insert("snapset".to_string(), Vec::new());
            attrs.insert("user.x".to_string(), vec![0xff; 40]);
            let full = st::OnodeRecord {
                size: 1 << 22,
                omap_id: 9,
                attrs,
            };
            vec![st::encode_onode(&empty), st::encode_onode(&full)]
        }
        "store_extent_shard" => {
            let extent = |offset, blocks: u32, phys| st::ExtentRecord {
                offset,
                len: blocks * 4096,
                phys,
                csums: (0..blocks).map(|i| 0x1234_5678 ^ i).collect(),
            };
            vec![
                st::encode_shard(0, &[]),
                st::encode_shard(0, &[extent(0, 1, 1 << 20), extent(8192, 3, 3 << 20)]),
            ]
        }
        "store_collection" => [0, 1, 77, u32::MAX]
            .iter()
            .map(|&c| st::encode_coll(c))
            .collect(),
        "store_deferred" => {
            let a = vec![0x5a; 4096];
            let b = vec![0xa5; 8192];
            vec![
                st::encode_deferred(std::iter::empty()),
                st::encode_deferred([(4096, a.as_slice()), (1 << 20, b.as_slice())].into_iter()),
            ]
        }
        "image_object_map" => [0u64, 5, 16_337, 40_000]
            .iter()
            .map(|&objects| {
                let mut map = crate::image::ObjectMap::new(objects);
                for o in (0..objects).step_by(7) {
                    let state = [
                        crate::image::ObjectState::Exists,
                        crate::image::ObjectState::Pending,
                        crate::image::ObjectState::ExistsClean,
                    ][(o % 3) as usize];
                    map.set(o, state).expect("in range");
                }
                let mut seed = objects.to_le_bytes().to_vec();
                seed.extend((0..map.blocks()).flat_map(|i| map.encode_block(i)));
                seed
            })
            .collect(),
        "image_records" => {
            use crate::image::snapshot::{ParentLink, SnapInfo, encode_seq};
            let header = crate::image::ImageInfo {
                size: 1 << 30,
                order: 22,
                features: crate::image::features::DEFAULT,
                flags: 0,
                created_ns: 5,
            };
            let snap = SnapInfo {
                id: 3,
                name: "nightly".into(),
                size: 1 << 30,
                created_ns: 9,
                parent_overlap: 0,
                removing: false,
            };
            let parent = ParentLink {
                image: "golden".into(),
                snap: 2,
                overlap: 1 << 20,
            };
            [
                (0u8, header.encode()),
                (1, snap.encode()),
                (2, parent.encode()),
                (3, encode_seq(3)),
            ]
            .into_iter()
            .map(|(kind, bytes)| [vec![kind], bytes].concat())
            .collect()
        }
        "nbd_messages" => {
            use crate::nbd::protocol::{CMD_WRITE, Request};
            let request = Request {
                flags: 1,
                kind: CMD_WRITE,
                cookie: 7,
                offset: 1 << 20,
                length: 4096,
            };
            let mut go = 3u32.to_be_bytes().to_vec();
            go.extend_from_slice(b"vm1");
            go.extend_from_slice(&1u16.to_be_bytes());
            go.extend_from_slice(&3u16.to_be_bytes());
            vec![request.encode().to_vec(), go]
        }
        "store_u64_record" => [0, 1, u64::MAX]
            .iter()
            .map(|&n| st::encode_u64_record(n))
            .collect(),
        "store_keys" => vec![
            st::freelist_key(3).to_vec(),
            st::refs_key(1 << 40).to_vec(),
            st::deferred_key(17).to_vec(),
            st::onode_key(2, "rbd_data.1234.0000000000000001"),
            st::shard_key(&st::shard_prefix(7, "a\0b\x01"), 3),
            (0..st::FREELIST_LANES as u64)
                .flat_map(|lane| (1u64 << lane).to_le_bytes())
                .collect(),
        ],
        "bench_verify" => [512usize, 4096]
            .iter()
            .map(|&bs| {
                let mut block = vec![0; bs];
                verify::fill(&mut block, 1 << 20, 3);
                block
            })
            .collect(),
        "job_file" => JOB_FILES.iter().map(|f| f.as_bytes().to_vec()).collect(),
        "bench_args" => [
            "--runtime=2\n--filename=null:1G\n--output-format=json",
            "--bs=8k\n--name=w\n--rw=randwrite\n--name=r\n--rw=read\n--stonewall\n--iodepth=4",
            "--name=mix\n--rw=randrw\n--rwmixwrite=30\n--percentile_list=50:99:99.9\n\
             --cpus_allowed=0-1,3\n--size=1.5g\n--ramp_time=500ms",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "store_config" => STORE_CONFIGS
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect(),
        _ => Vec::new(),
    }
}

/// `n` extents spread over the three devices.
fn extents(n: usize) -> Vec<Extent> {
    (0..n as u64)
        .map(|i| Extent {
            device: DeviceId::ALL[i as usize % 3],
            offset: (i + 1) << 20,
            length: 64 << 10,
        })
        .collect()
}

fn log_seeds() -> Vec<Vec<u8>> {
    let txn = |seq, ops| {
        fs::encode_transaction(&fs::Transaction {
            uuid: UUID,
            seq,
            ops,
        })
    };
    let file = Fnode {
        ino: 2,
        size: 8192,
        mtime_ns: 3,
        extents: extents(2),
    };
    let every_op = vec![
        LogOp::Init { created_ns: 1 },
        LogOp::DirCreate { name: "db".into() },
        LogOp::DirLink {
            dir: "db".into(),
            name: "000001.log".into(),
            ino: 2,
        },
        LogOp::FileUpdate(file.clone()),
        LogOp::FileUpdateDelta {
            ino: 2,
            size: 12288,
            mtime_ns: 4,
            appended: extents(1),
        },
        LogOp::FileAppendChecked {
            ino: 2,
            size: 16384,
            mtime_ns: 5,
            appended: Vec::new(),
            data_from: 12288,
            data_crc: 0xdead_beef,
        },
        LogOp::FileAppendInline {
            ino: 2,
            size: 4096 + 100,
            mtime_ns: 6,
            appended: Vec::new(),
            data_from: 4096,
            data: vec![0xab; 100],
        },
        LogOp::DirUnlink {
            dir: "db".into(),
            name: "000001.log".into(),
        },
        LogOp::FileRemove { ino: 2 },
        LogOp::DirRemove { name: "db".into() },
        LogOp::Jump { offset: 1 << 20 },
        LogOp::JumpSeq { seq: 9 },
    ];
    let multi_block = vec![LogOp::FileAppendInline {
        ino: 3,
        size: 5000,
        mtime_ns: 1,
        appended: Vec::new(),
        data_from: 0,
        data: vec![0x11; 5000],
    }];
    let mut three_frames = txn(1, vec![LogOp::Init { created_ns: 1 }]);
    three_frames.extend(txn(2, vec![LogOp::DirCreate { name: "db".into() }]));
    three_frames.extend(txn(3, vec![LogOp::FileUpdate(file)]));
    vec![
        txn(1, Vec::new()),
        txn(5, every_op),
        txn(2, multi_block),
        three_frames,
    ]
}

const JOB_FILES: [&str; 6] = [
    include_str!("../bench/jobs/quick.fio"),
    include_str!("../bench/jobs/randread-4k-qd32.fio"),
    include_str!("../bench/jobs/randrw-70-30.fio"),
    include_str!("../bench/jobs/randwrite-4k-qd32.fio"),
    include_str!("../bench/jobs/seq-128k.fio"),
    include_str!("../bench/jobs/bluefs-append-fsync.fio"),
];

const STORE_CONFIGS: [&str; 3] = [
    "[devices]\nslow = \"mem:1G\"\n",
    "[devices]\nslow = \"mem:1G\"\nwal = \"mem:64M\"\n\n\
     [store]\ncpus = \"0-1\"\nmin_alloc_size = \"8K\"\nprefer_deferred_size = 32768\npin = false\n",
    r#"[devices]
slow = "uring:/var/lib/bluepoll/main.img?size=64G"
db = "uring:/var/lib/bluepoll/db.img?size=4G"
wal = "uring:/var/lib/bluepoll/wal.img?size=1G"

[store]
cpus = [0, 1]
min_alloc_size = "4K"
csum_block = "4K"
extent_shard_span = "64K"
prefer_deferred_size = "64K"
deferred_batch_ops = 32
deferred_max_age_ms = 5
throttle_bytes = "64M"
throttle_cost_per_io = 4000
throttle_deferred_bytes = "128M"
cache_bytes = "256M"
db_size = "4G"
bluefs_reserve = "1G"
queue_depth = 512
idle_spin_us = 200
pin = true
kv_write_buffer_size = "64M"
bluefs_read_cache_bytes = "256M"
"#,
];
