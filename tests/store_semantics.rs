//! What the object store promises, checked through its public API only — after the cases of
//! Ceph's `store_test` (src/test/objectstore/store_test.cc), written anew:
//!
//! 1. collections and objects made and removed, with remounts between; the errnos of the
//!    failures (EEXIST, ENOTEMPTY, ENOENT) and that a failed transaction leaves no trace;
//! 2. writes and reads at every alignment and size class, into new objects, over committed
//!    data and past the end of short objects, byte for byte against a model, while the writes
//!    are still in flight, after they commit and after a remount;
//! 3. overwrite, zero and truncate patterns;
//! 4. clones and clone_range (shared and copied), with fsck checking the reference counts;
//! 5. attributes and omap, including reads made before a queued transaction commits;
//! 6. collection and object listing (paged, odd names, pending creates and removes), rename;
//! 7. every core test above on one shard and on two (collections spread by hash), with
//!    deferred writes off (`mem:` is class nvme) and on (`prefer_deferred_size` = 64 KiB);
//! 8. a model-based random test: random transactions applied to the store and to an in-memory
//!    model, every failure's errno predicted, the whole store compared with the model, remounts
//!    at random points, a deep fsck at the end of every case. `BLUEPOLL_STORE_PROPTEST_CASES`
//!    sets the cases per variant, `BLUEPOLL_STORE_PROPTEST_SEED` the first seed,
//!    `BLUEPOLL_STORE_PROPTEST_VERBOSE=1` prints every transaction.
//!
//! Every test ends with a deep fsck that must be clean.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::mpsc;

use bluepoll::rand::Rng;
use bluepoll::store::{
    FsckReport, Op, Store, StoreConfig, StoreDevices, StoreError, Transaction, fsck,
};
use libc::{EEXIST, EINVAL, ENODATA, ENOENT, ENOTEMPTY};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const AU: u64 = 4096;

// ---- the store under test ------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Variant {
    shards: usize,
    deferred: bool,
}

const V1: Variant = Variant {
    shards: 1,
    deferred: false,
};
const V1D: Variant = Variant {
    shards: 1,
    deferred: true,
};
const V2: Variant = Variant {
    shards: 2,
    deferred: false,
};
const V2D: Variant = Variant {
    shards: 2,
    deferred: true,
};

/// One test per variant: `name::one_shard`, `name::two_shards_deferred`, ...
macro_rules! variants {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn one_shard() {
                super::$name(super::V1)
            }
            #[test]
            fn one_shard_deferred() {
                super::$name(super::V1D)
            }
            #[test]
            fn two_shards() {
                super::$name(super::V2)
            }
            #[test]
            fn two_shards_deferred() {
                super::$name(super::V2D)
            }
        }
    )*};
}

variants!(
    collections_and_objects,
    collection_recreated_behind_inflight_writes,
    every_alignment_and_size,
    overwrite_zero_truncate,
    clones,
    clone_reference_counts,
    omap_and_attrs,
    reads_see_queued_transactions,
    listing_and_rename,
    model_based,
);

/// Adds ops to a transaction (the failing-op table).
type TxnBuilder = Box<dyn Fn(&mut Transaction)>;

fn config(v: Variant) -> StoreConfig {
    let mut c = StoreConfig::default();
    c.devices.slow = "mem:2G".into();
    c.pin = false;
    c.cpus = (0..v.shards).collect();
    if v.deferred {
        c.prefer_deferred_size = Some(64 << 10);
    }
    c
}

struct Env {
    devices: StoreDevices,
    config: StoreConfig,
    store: Option<Store>,
}

impl Env {
    fn new(v: Variant) -> Env {
        Env::with(config(v))
    }

    fn with(config: StoreConfig) -> Env {
        let devices = StoreDevices::open(&config.devices).expect("open devices");
        Store::mkfs_on(&devices, &config).expect("mkfs");
        let store = Store::mount_on(devices.clone(), config.clone()).expect("mount");
        Env {
            devices,
            config,
            store: Some(store),
        }
    }

    fn s(&self) -> &Store {
        self.store.as_ref().expect("mounted")
    }

    fn remount(&mut self) {
        self.store
            .take()
            .expect("mounted")
            .umount()
            .expect("umount");
        self.store =
            Some(Store::mount_on(self.devices.clone(), self.config.clone()).expect("mount"));
    }

    /// Unmounts, runs a deep fsck that must be clean, mounts again.
    fn fsck_remount(&mut self) -> FsckReport {
        self.store
            .take()
            .expect("mounted")
            .umount()
            .expect("umount");
        let report = fsck(&self.devices, &self.config, true, false).expect("fsck");
        assert!(report.is_clean(), "fsck: {:#?}", report.errors);
        self.store =
            Some(Store::mount_on(self.devices.clone(), self.config.clone()).expect("mount"));
        report
    }

    /// Unmounts for good and runs a deep fsck that must be clean.
    fn finish(mut self) -> FsckReport {
        self.store
            .take()
            .expect("mounted")
            .umount()
            .expect("umount");
        let report = fsck(&self.devices, &self.config, true, false).expect("fsck");
        assert!(report.is_clean(), "fsck: {:#?}", report.errors);
        report
    }

    #[track_caller]
    fn apply(&self, t: Transaction) {
        let what = describe(&t);
        if let Err(e) = self.s().apply(t) {
            panic!("{what} failed: {e}");
        }
    }

    /// The transaction must fail with `errno`.
    #[track_caller]
    fn apply_fails(&self, t: Transaction, errno: i32) {
        let what = describe(&t);
        match self.s().apply(t) {
            Ok(()) => panic!("{what} succeeded; expected errno {errno}"),
            Err(e) => assert_eq!(e.errno(), errno, "{what}: {e}"),
        }
    }

    /// Applies to the store and to the model; both must agree on the outcome.
    #[track_caller]
    fn apply_both(&self, model: &mut Model, t: Transaction) {
        let what = describe(&t);
        let want = model.apply(&t);
        let got = self.s().apply(t).map_err(|e| (e.errno(), e.to_string()));
        match (&got, want) {
            (Ok(()), Ok(())) => {}
            (Err((errno, _)), Err(w)) if *errno == w => {}
            _ => panic!("{what}: store gave {got:?}, the model {want:?}"),
        }
    }
}

fn tx(coll: &str) -> Transaction {
    Transaction::new(coll)
}

/// A transaction's ops without their data, for messages.
fn describe(t: &Transaction) -> String {
    let ops: Vec<String> = t
        .ops()
        .iter()
        .map(|op| match op {
            Op::Write { obj, offset, data } => {
                format!("write({obj:?}, {offset}, {} bytes)", data.len())
            }
            Op::SetAttrs { obj, attrs } => {
                format!("setattrs({obj:?}, {:?})", attrs.keys().collect::<Vec<_>>())
            }
            Op::OmapSetKeys { obj, entries } => format!(
                "omap_setkeys({obj:?}, {:?})",
                entries.keys().collect::<Vec<_>>()
            ),
            Op::OmapSetHeader { obj, header } => {
                format!("omap_setheader({obj:?}, {} bytes)", header.len())
            }
            other => format!("{other:?}"),
        })
        .collect();
    format!("txn on {:?} [{}]", t.collection(), ops.join(", "))
}

fn errno<T>(r: Result<T, StoreError>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

/// Collection names that spread over the shards: the n-th lands on shard n % shards.
fn spread_colls(store: &Store, stem: &str, n: usize) -> Vec<String> {
    let shards = store.shard_count();
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let name = format!("{stem}.{i}");
        if store.shard_of(&name) == out.len() % shards {
            out.push(name);
        }
        i += 1;
    }
    out
}

fn random_bytes(rng: &mut Rng, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; n as usize];
    rng.fill_bytes(&mut v);
    v
}

#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| b[first.min(b.len())..(first + 16).min(b.len())].to_vec();
    panic!(
        "{what}: got {} bytes, want {}; first difference at byte {first}: got {:02x?}, want {:02x?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

/// The bytes a read of `len` at `offset` returns from `data` (short at the end).
fn expected_read(data: &[u8], offset: u64, len: u64) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = (offset.saturating_add(len) as usize).min(data.len());
    &data[start..end.max(start)]
}

#[track_caller]
fn check_read(store: &Store, coll: &str, obj: &str, offset: u64, len: u64, data: &[u8]) {
    let got = store
        .read(coll, obj, offset, len)
        .unwrap_or_else(|e| panic!("read {coll}/{obj} {offset}~{len}: {e}"));
    assert_bytes(
        &got,
        expected_read(data, offset, len),
        &format!("read {coll}/{obj} {offset}~{len}"),
    );
}

/// Size and bytes of an object: the whole of it, then windows around `points`, a read from
/// its end and one past it.
#[track_caller]
fn check_data(store: &Store, coll: &str, obj: &str, data: &[u8], points: &[u64]) {
    let size = data.len() as u64;
    let stat = store
        .stat(coll, obj)
        .unwrap_or_else(|e| panic!("stat {coll}/{obj}: {e}"));
    assert_eq!(stat.size, size, "size of {coll}/{obj}");
    check_read(store, coll, obj, 0, size + 8192, data);
    check_read(store, coll, obj, 0, u64::MAX, data);
    for &p in points.iter().chain(&[size, size.saturating_sub(1)]) {
        check_read(store, coll, obj, p, 1, data);
        check_read(store, coll, obj, p.saturating_sub(1), 3, data);
        check_read(store, coll, obj, p.saturating_sub(4096), 8193, data);
    }
    check_read(store, coll, obj, size + 1, 100, data);
    check_read(store, coll, obj, size + 10 * MIB, 4096, data);
}

/// Every page of a listing, `page` names at a time.
fn list_all(store: &Store, coll: &str, page: usize) -> Result<Vec<String>, StoreError> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let got = store.list_objects(coll, out.last().map(String::as_str), page)?;
        assert!(
            got.len() <= page,
            "a page of {} names, asked {page}",
            got.len()
        );
        let done = got.len() < page;
        out.extend(got);
        if done {
            return Ok(out);
        }
    }
}

// ---- the model ------------------------------------------------------------------------------

/// An object as the model sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MObj {
    data: Rc<Vec<u8>>,
    attrs: BTreeMap<String, Vec<u8>>,
    omap: BTreeMap<Vec<u8>, Vec<u8>>,
    header: Option<Vec<u8>>,
}

type MColl = BTreeMap<String, MObj>;

/// Collections → objects, changed by the same transactions the store gets, with the
/// semantics transaction.rs documents (Ceph's).
#[derive(Clone, Debug, Default)]
struct Model {
    colls: BTreeMap<String, MColl>,
}

fn model_write(d: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let (a, b) = (offset as usize, offset as usize + bytes.len());
    if d.len() < b {
        d.resize(b, 0);
    }
    d[a..b].copy_from_slice(bytes);
}

fn model_zero(d: &mut Vec<u8>, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    let (a, b) = (offset as usize, (offset + len) as usize);
    if d.len() < b {
        d.resize(b, 0);
    }
    d[a..b].fill(0);
}

/// `len` bytes at `offset`, zeroes past the end.
fn model_range(d: &[u8], offset: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    let got = expected_read(d, offset, len);
    out[..got.len()].copy_from_slice(got);
    out
}

impl Model {
    /// Applies a transaction all or nothing; Err(errno) when it must fail.
    fn apply(&mut self, t: &Transaction) -> Result<(), i32> {
        let name = t.collection();
        let mut coll = self.colls.get(name).cloned();
        for op in t.ops() {
            model_op(&mut coll, op)?;
        }
        match coll {
            Some(c) => self.colls.insert(name.to_string(), c),
            None => self.colls.remove(name),
        };
        Ok(())
    }

    fn obj(&self, coll: &str, obj: &str) -> &MObj {
        &self.colls[coll][obj]
    }
}

fn model_op(coll: &mut Option<MColl>, op: &Op) -> Result<(), i32> {
    match op {
        Op::CreateCollection => {
            if coll.is_some() {
                return Err(EEXIST);
            }
            *coll = Some(MColl::new());
            return Ok(());
        }
        Op::RemoveCollection => {
            return match coll {
                None => Err(ENOENT),
                Some(c) if !c.is_empty() => Err(ENOTEMPTY),
                Some(_) => {
                    *coll = None;
                    Ok(())
                }
            };
        }
        _ => {}
    }
    let Some(c) = coll.as_mut() else {
        return Err(ENOENT);
    };
    fn existing<'a>(c: &'a mut MColl, obj: &str) -> Result<&'a mut MObj, i32> {
        c.get_mut(obj).ok_or(ENOENT)
    }
    match op {
        Op::CreateCollection | Op::RemoveCollection => unreachable!(),
        Op::Touch { obj } => {
            c.entry(obj.clone()).or_default();
        }
        Op::Write { obj, offset, data } => {
            let o = c.entry(obj.clone()).or_default();
            model_write(Rc::make_mut(&mut o.data), *offset, data);
        }
        Op::Zero { obj, offset, len } => {
            let o = c.entry(obj.clone()).or_default();
            model_zero(Rc::make_mut(&mut o.data), *offset, *len);
        }
        Op::Truncate { obj, size } => {
            let o = existing(c, obj)?;
            Rc::make_mut(&mut o.data).resize(*size as usize, 0);
        }
        Op::Remove { obj } => {
            c.remove(obj).ok_or(ENOENT)?;
        }
        Op::SetAttrs { obj, attrs } => {
            existing(c, obj)?.attrs.extend(attrs.clone());
        }
        Op::RmAttr { obj, name } => {
            existing(c, obj)?.attrs.remove(name);
        }
        Op::RmAttrs { obj } => existing(c, obj)?.attrs.clear(),
        Op::OmapSetKeys { obj, entries } => existing(c, obj)?.omap.extend(entries.clone()),
        Op::OmapRmKeys { obj, keys } => {
            let o = existing(c, obj)?;
            for k in keys {
                o.omap.remove(k);
            }
        }
        Op::OmapRmKeyRange { obj, first, last } => {
            let o = existing(c, obj)?;
            o.omap.retain(|k, _| !(k >= first && k < last));
        }
        Op::OmapClear { obj } => {
            let o = existing(c, obj)?;
            o.omap.clear();
            o.header = None;
        }
        Op::OmapSetHeader { obj, header } => existing(c, obj)?.header = Some(header.clone()),
        Op::Clone { src, dst } => {
            if src == dst {
                return Err(EINVAL);
            }
            let s = c.get(src).ok_or(ENOENT)?.clone();
            c.insert(dst.clone(), s);
        }
        Op::CloneRange {
            src,
            dst,
            src_offset,
            len,
            dst_offset,
        } => {
            let s = c.get(src).ok_or(ENOENT)?;
            let bytes = model_range(&s.data, *src_offset, *len);
            let d = c.entry(dst.clone()).or_default();
            model_write(Rc::make_mut(&mut d.data), *dst_offset, &bytes);
        }
        Op::Rename { from, to } => {
            if from == to {
                return Ok(());
            }
            if !c.contains_key(from) {
                return Err(ENOENT);
            }
            if c.contains_key(to) {
                return Err(EEXIST);
            }
            let o = c.remove(from).expect("checked");
            c.insert(to.clone(), o);
        }
    }
    Ok(())
}

/// One object against the model: size, bytes (whole and two random windows), attributes,
/// omap and header.
#[track_caller]
fn check_obj(store: &Store, coll: &str, name: &str, o: &MObj, rng: &mut Rng, ctx: &str) {
    let size = o.data.len() as u64;
    let stat = store
        .stat(coll, name)
        .unwrap_or_else(|e| panic!("{ctx}: stat {coll}/{name}: {e}"));
    assert_eq!(stat.size, size, "{ctx}: size of {coll}/{name}");
    let got = store
        .read(coll, name, 0, size + 1)
        .unwrap_or_else(|e| panic!("{ctx}: read {coll}/{name}: {e}"));
    assert_bytes(&got, &o.data, &format!("{ctx}: data of {coll}/{name}"));
    for _ in 0..2 {
        let off = rng.below(size + 2);
        let len = rng.below(256 * KIB);
        let got = store
            .read(coll, name, off, len)
            .unwrap_or_else(|e| panic!("{ctx}: read {coll}/{name} {off}~{len}: {e}"));
        assert_bytes(
            &got,
            expected_read(&o.data, off, len),
            &format!("{ctx}: read {coll}/{name} {off}~{len}"),
        );
    }
    let attrs = store
        .getattrs(coll, name)
        .unwrap_or_else(|e| panic!("{ctx}: getattrs {coll}/{name}: {e}"));
    assert_eq!(attrs, o.attrs, "{ctx}: attributes of {coll}/{name}");
    let omap = store
        .omap_get(coll, name)
        .unwrap_or_else(|e| panic!("{ctx}: omap_get {coll}/{name}: {e}"));
    assert_eq!(omap, o.omap, "{ctx}: omap of {coll}/{name}");
    let header = store
        .omap_get_header(coll, name)
        .unwrap_or_else(|e| panic!("{ctx}: omap header {coll}/{name}: {e}"));
    assert_eq!(header, o.header, "{ctx}: omap header of {coll}/{name}");
}

/// A collection against the model: existence, the listing (paged), every object of the model
/// and every name of `names` it lacks.
#[track_caller]
fn check_coll(
    store: &Store,
    model: &Model,
    coll: &str,
    names: &[String],
    rng: &mut Rng,
    ctx: &str,
) {
    let exists = store
        .collection_exists(coll)
        .unwrap_or_else(|e| panic!("{ctx}: collection_exists {coll}: {e}"));
    let Some(m) = model.colls.get(coll) else {
        assert!(
            !exists,
            "{ctx}: collection {coll} exists, the model has none"
        );
        assert_eq!(errno(store.list_objects(coll, None, 10)), ENOENT, "{ctx}");
        assert_eq!(errno(store.exists(coll, "x")), ENOENT, "{ctx}");
        return;
    };
    assert!(exists, "{ctx}: collection {coll} is missing");
    let page = 1 + rng.below(9) as usize;
    let listed =
        list_all(store, coll, page).unwrap_or_else(|e| panic!("{ctx}: list_objects {coll}: {e}"));
    let want: Vec<String> = m.keys().cloned().collect();
    assert_eq!(listed, want, "{ctx}: objects of {coll} (pages of {page})");
    for (name, o) in m {
        check_obj(store, coll, name, o, rng, ctx);
    }
    for name in names.iter().filter(|n| !m.contains_key(*n)) {
        assert!(
            !store.exists(coll, name).unwrap(),
            "{ctx}: {coll}/{name} exists, the model has no such object"
        );
        assert_eq!(errno(store.stat(coll, name)), ENOENT, "{ctx}: stat {name}");
        assert_eq!(
            errno(store.read(coll, name, 0, 1)),
            ENOENT,
            "{ctx}: read {name}"
        );
    }
}

#[track_caller]
fn check_all(
    store: &Store,
    model: &Model,
    colls: &[String],
    names: &[String],
    rng: &mut Rng,
    ctx: &str,
) {
    let listed = store.list_collections().unwrap();
    let want: Vec<String> = model.colls.keys().cloned().collect();
    assert_eq!(listed, want, "{ctx}: collections");
    let all: BTreeSet<&String> = colls.iter().chain(model.colls.keys()).collect();
    for coll in all {
        check_coll(store, model, coll, names, rng, ctx);
    }
}

// ---- 1. collections and objects -----------------------------------------------------------

fn collections_and_objects(v: Variant) {
    let mut env = Env::new(v);
    assert!(env.s().list_collections().unwrap().is_empty());
    let colls = spread_colls(env.s(), "trivial", 3);
    let (a, b, c) = (&colls[0], &colls[1], &colls[2]);

    // Create; create twice (in two transactions, and in one).
    let mut t = tx(a);
    t.create_collection();
    env.apply(t);
    assert!(env.s().collection_exists(a).unwrap());
    assert!(!env.s().collection_exists(b).unwrap());
    let mut t = tx(a);
    t.create_collection();
    env.apply_fails(t, EEXIST);
    let mut t = tx(b);
    t.create_collection().touch("x").create_collection();
    env.apply_fails(t, EEXIST);
    assert!(
        !env.s().collection_exists(b).unwrap(),
        "a failed create left the collection"
    );
    assert_eq!(env.s().list_collections().unwrap(), vec![a.clone()]);

    // Everything on a collection that does not exist is ENOENT.
    let missing = "no-such-collection";
    for t in [
        {
            let mut t = tx(missing);
            t.touch("o");
            t
        },
        {
            let mut t = tx(missing);
            t.write("o", 0, b"x".to_vec());
            t
        },
        {
            let mut t = tx(missing);
            t.remove_collection();
            t
        },
        {
            let mut t = tx(missing);
            t.omap_setkey("o", b"k", b"v");
            t
        },
    ] {
        env.apply_fails(t, ENOENT);
    }
    let s = env.s();
    assert_eq!(errno(s.read(missing, "o", 0, 1)), ENOENT);
    assert_eq!(errno(s.stat(missing, "o")), ENOENT);
    assert_eq!(errno(s.exists(missing, "o")), ENOENT);
    assert_eq!(errno(s.getattr(missing, "o", "a")), ENOENT);
    assert_eq!(errno(s.getattrs(missing, "o")), ENOENT);
    assert_eq!(errno(s.omap_get(missing, "o")), ENOENT);
    assert_eq!(errno(s.omap_get_header(missing, "o")), ENOENT);
    assert_eq!(
        errno(s.omap_get_values(missing, "o", &[b"k".to_vec()])),
        ENOENT
    );
    assert_eq!(errno(s.omap_iterate(missing, "o", None, 10)), ENOENT);
    assert_eq!(errno(s.list_objects(missing, None, 10)), ENOENT);
    assert!(!s.collection_exists(missing).unwrap());

    // Objects: touch, remount, still there.
    let mut t = tx(a);
    t.touch("o1").write("o2", 0, b"hello".to_vec());
    env.apply(t);
    env.remount();
    let s = env.s();
    assert!(s.exists(a, "o1").unwrap() && s.exists(a, "o2").unwrap());
    assert_eq!(s.stat(a, "o1").unwrap().size, 0);
    assert_eq!(s.read(a, "o1", 0, 100).unwrap(), b"");
    assert_eq!(s.read(a, "o2", 0, 100).unwrap(), b"hello");
    assert!(!s.exists(a, "o3").unwrap());

    // Every op but write/zero/touch on a missing object is ENOENT, and reads too.
    let failing: Vec<TxnBuilder> = vec![
        Box::new(|t: &mut Transaction| {
            t.truncate("nope", 0);
        }),
        Box::new(|t: &mut Transaction| {
            t.remove("nope");
        }),
        Box::new(|t: &mut Transaction| {
            t.setattr("nope", "a", b"1".to_vec());
        }),
        Box::new(|t: &mut Transaction| {
            t.rmattr("nope", "a");
        }),
        Box::new(|t: &mut Transaction| {
            t.rmattrs("nope");
        }),
        Box::new(|t: &mut Transaction| {
            t.omap_setkey("nope", b"k", b"v");
        }),
        Box::new(|t: &mut Transaction| {
            t.omap_rmkeys("nope", vec![b"k".to_vec()]);
        }),
        Box::new(|t: &mut Transaction| {
            t.omap_rmkeyrange("nope", b"a", b"z");
        }),
        Box::new(|t: &mut Transaction| {
            t.omap_clear("nope");
        }),
        Box::new(|t: &mut Transaction| {
            t.omap_setheader("nope", b"h".to_vec());
        }),
        Box::new(|t: &mut Transaction| {
            t.clone_object("nope", "o9");
        }),
        Box::new(|t: &mut Transaction| {
            t.clone_range("nope", "o9", 0, 4096, 0);
        }),
        Box::new(|t: &mut Transaction| {
            t.rename("nope", "o9");
        }),
    ];
    for f in &failing {
        // Changes before the failing op must leave no trace.
        let mut t = tx(a);
        t.write("o1", 0, vec![7u8; 10000])
            .touch("o4")
            .setattr("o2", "x", b"y".to_vec())
            .omap_setkey("o2", b"k", b"v")
            .remove("o2");
        f(&mut t);
        t.touch("o5");
        env.apply_fails(t, ENOENT);
    }
    let s = env.s();
    assert_eq!(
        s.stat(a, "o1").unwrap().size,
        0,
        "a failed transaction wrote"
    );
    assert_eq!(s.read(a, "o2", 0, 100).unwrap(), b"hello");
    assert!(s.getattrs(a, "o2").unwrap().is_empty());
    assert!(s.omap_get(a, "o2").unwrap().is_empty());
    assert!(
        !s.exists(a, "o4").unwrap() && !s.exists(a, "o5").unwrap() && !s.exists(a, "o9").unwrap()
    );
    assert_eq!(list_all(s, a, 10).unwrap(), vec!["o1", "o2"]);
    for (what, r) in [
        ("read", errno(s.read(a, "nope", 0, 1))),
        ("stat", errno(s.stat(a, "nope"))),
        ("getattr", errno(s.getattr(a, "nope", "a"))),
        ("getattrs", errno(s.getattrs(a, "nope"))),
        ("omap_get", errno(s.omap_get(a, "nope"))),
        ("omap_get_header", errno(s.omap_get_header(a, "nope"))),
        ("omap_iterate", errno(s.omap_iterate(a, "nope", None, 5))),
        (
            "omap_get_values",
            errno(s.omap_get_values(a, "nope", &[b"k".to_vec()])),
        ),
    ] {
        assert_eq!(r, ENOENT, "{what} of a missing object");
    }

    // Remove a non-empty collection: committed objects (from the cache, and from the kv after
    // a remount), objects made in the same transaction, objects of a queued transaction.
    let mut t = tx(a);
    t.remove_collection();
    env.apply_fails(t, ENOTEMPTY);
    env.remount();
    let mut t = tx(a);
    t.remove_collection();
    env.apply_fails(t, ENOTEMPTY);
    let mut t = tx(a);
    t.remove("o1").remove_collection();
    env.apply_fails(t, ENOTEMPTY);
    let mut t = tx(b);
    t.create_collection();
    env.apply(t);
    let mut t = tx(b);
    t.touch("p").remove_collection();
    env.apply_fails(t, ENOTEMPTY);
    let mut t = tx(b);
    t.touch("p");
    let queued = env.s().submit(t);
    let mut t = tx(b);
    t.remove_collection();
    env.apply_fails(t, ENOTEMPTY);
    queued.wait().unwrap();
    assert!(env.s().exists(b, "p").unwrap());

    // Removing every object and the collection in one transaction works; so does removing the
    // objects in a queued transaction and the collection in the next.
    let mut t = tx(a);
    t.remove("o1").remove("o2").remove_collection();
    env.apply(t);
    assert!(!env.s().collection_exists(a).unwrap());
    assert_eq!(errno(env.s().read(a, "o2", 0, 1)), ENOENT);
    let mut t = tx(b);
    t.remove("p");
    let queued = env.s().submit(t);
    let mut t = tx(b);
    t.remove_collection();
    env.apply(t);
    queued.wait().unwrap();
    assert!(env.s().list_collections().unwrap().is_empty());
    env.remount();
    assert!(env.s().list_collections().unwrap().is_empty());
    let mut t = tx(a);
    t.remove_collection();
    env.apply_fails(t, ENOENT);

    // A collection made again is empty: nothing of the old one shows, before or after a
    // remount.
    let mut t = tx(a);
    t.create_collection().write("o1", 0, vec![1u8; 5000]);
    env.apply(t);
    let mut t = tx(a);
    t.remove("o1")
        .remove_collection()
        .create_collection()
        .touch("fresh");
    env.apply(t);
    assert_eq!(list_all(env.s(), a, 3).unwrap(), vec!["fresh"]);
    assert!(!env.s().exists(a, "o1").unwrap());
    env.remount();
    assert_eq!(list_all(env.s(), a, 3).unwrap(), vec!["fresh"]);
    assert_eq!(env.s().stat(a, "fresh").unwrap().size, 0);

    // Made and removed in one transaction (with an object made and removed in between): it
    // commits, and leaves nothing.
    let fleeting = spread_colls(env.s(), "fleeting", 2);
    for f in &fleeting {
        let mut t = tx(f);
        t.create_collection().remove_collection();
        env.apply(t);
        let mut t = tx(f);
        t.create_collection()
            .write("x", 0, vec![3u8; 9000])
            .remove("x")
            .remove_collection();
        env.apply(t);
        assert!(!env.s().collection_exists(f).unwrap());
        let mut t = tx(f);
        t.create_collection().remove_collection().touch("x");
        env.apply_fails(t, ENOENT);
    }
    assert_eq!(env.s().list_collections().unwrap(), vec![a.clone()]);

    // Create and fill collections on every shard, remount, all there.
    for coll in [b, c] {
        let mut t = tx(coll);
        t.create_collection()
            .write("obj", 0, coll.as_bytes().to_vec());
        env.apply(t);
    }
    env.remount();
    let mut want = vec![a.clone(), b.clone(), c.clone()];
    want.sort();
    assert_eq!(env.s().list_collections().unwrap(), want);
    for coll in [b, c] {
        assert_eq!(env.s().read(coll, "obj", 0, 100).unwrap(), coll.as_bytes());
    }
    let report = env.finish();
    assert_eq!((report.collections, report.objects), (3, 3));
}

/// A collection removed and made again while a write to it is still in flight, all queued
/// without waiting: every transaction must commit (Ceph's "create, remove, create" churn).
fn collection_recreated_behind_inflight_writes(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(11);
    for coll in spread_colls(env.s(), "churn", 2) {
        let mut t = tx(&coll);
        t.create_collection();
        env.apply(t);
        for round in 0..3u64 {
            let data = random_bytes(&mut rng, 300 * KIB + round);
            let mut commits = Vec::new();
            let mut t = tx(&coll);
            t.write("big", 0, data.clone())
                .write("small", 100, b"abc".to_vec());
            commits.push(env.s().submit(t));
            let mut t = tx(&coll);
            t.remove("big").remove("small").remove_collection();
            commits.push(env.s().submit(t));
            let mut t = tx(&coll);
            t.create_collection().write("after", 0, data.clone());
            commits.push(env.s().submit(t));
            let mut t = tx(&coll);
            t.write("after", 5, b"xyz".to_vec());
            commits.push(env.s().submit(t));
            for (i, c) in commits.into_iter().enumerate() {
                c.wait()
                    .unwrap_or_else(|e| panic!("{coll} round {round} txn {i}: {e}"));
            }
            let mut want = data.clone();
            want[5..8].copy_from_slice(b"xyz");
            assert_eq!(list_all(env.s(), &coll, 10).unwrap(), vec!["after"]);
            check_read(env.s(), &coll, "after", 0, u64::MAX, &want);
            let mut t = tx(&coll);
            t.remove("after");
            env.apply(t);
        }
        // The same, with the recreation in the transaction that removes.
        let mut commits = Vec::new();
        let mut t = tx(&coll);
        t.write("big", 0, random_bytes(&mut rng, 200 * KIB));
        commits.push(env.s().submit(t));
        let mut t = tx(&coll);
        t.remove("big")
            .remove_collection()
            .create_collection()
            .write("x", 0, b"x".to_vec());
        commits.push(env.s().submit(t));
        let mut t = tx(&coll);
        t.write("y", 0, b"y".to_vec());
        commits.push(env.s().submit(t));
        for (i, c) in commits.into_iter().enumerate() {
            c.wait().unwrap_or_else(|e| panic!("{coll} txn {i}: {e}"));
        }
        assert_eq!(list_all(env.s(), &coll, 10).unwrap(), vec!["x", "y"]);
        // Made again by a transaction without data I/O: nothing after the in-flight write
        // moves the collection's sequencer on, so the write must move it itself when it lands.
        let mut commits = Vec::new();
        let mut t = tx(&coll);
        t.write("big", 0, random_bytes(&mut rng, 256 * KIB));
        commits.push(env.s().submit(t));
        let mut t = tx(&coll);
        t.remove("big").remove("x").remove("y").remove_collection();
        commits.push(env.s().submit(t));
        let mut t = tx(&coll);
        t.create_collection().touch("x").touch("y");
        commits.push(env.s().submit(t));
        for (i, c) in commits.into_iter().enumerate() {
            c.wait().unwrap_or_else(|e| panic!("{coll} txn {i}: {e}"));
        }
        assert_eq!(list_all(env.s(), &coll, 10).unwrap(), vec!["x", "y"]);
    }
    env.remount();
    for coll in spread_colls(env.s(), "churn", 2) {
        assert_eq!(list_all(env.s(), &coll, 10).unwrap(), vec!["x", "y"]);
    }
    env.finish();
}

// ---- 2. every alignment and size class ----------------------------------------------------

const POINTS: &[u64] = &[0, 1, 511, 4095, 4096, 4097, 65535, 65536, MIB + 1];
const LENS: &[u64] = &[1, 511, 4095, 4096, 4097, 65535, 65536, MIB + 1];

#[derive(Clone, Copy, Debug)]
enum Base {
    /// A new object.
    New,
    /// Over committed data that reaches past the write.
    Over,
    /// Over a short object: the write runs past its end.
    Extend,
}

struct Case {
    coll: String,
    obj: String,
    off: u64,
    len: u64,
    want: Vec<u8>,
    points: Vec<u64>,
}

fn check_cases(store: &Store, cases: &[Case]) {
    for c in cases {
        check_data(store, &c.coll, &c.obj, &c.want, &c.points);
    }
}

fn every_alignment_and_size(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(2);
    let colls = spread_colls(env.s(), "align", 2);
    for c in &colls {
        let mut t = tx(c);
        t.create_collection();
        env.apply(t);
    }
    let mut cases = Vec::new();
    let mut writes = Vec::new();
    let mut n = 0;
    for base in [Base::New, Base::Over, Base::Extend] {
        for &off in POINTS {
            for &len in LENS {
                let coll = colls[n % colls.len()].clone();
                n += 1;
                let obj = format!("{base:?}.{off}.{len}");
                let base_len = match base {
                    Base::New => 0,
                    Base::Over => off + len + 5000,
                    Base::Extend => off / 2 + 3,
                };
                let mut want = random_bytes(&mut rng, base_len);
                if base_len > 0 {
                    let mut t = tx(&coll);
                    t.write(&obj, 0, want.clone());
                    env.apply(t);
                }
                let data = random_bytes(&mut rng, len);
                model_write(&mut want, off, &data);
                let mut t = tx(&coll);
                t.write(&obj, off, data);
                writes.push(t);
                let mut points = POINTS.to_vec();
                points.extend([off, off + len, base_len]);
                cases.push(Case {
                    coll,
                    obj,
                    off,
                    len,
                    want,
                    points,
                });
            }
        }
    }
    // Queue every write at once; reads must see them in flight, committed, and remounted.
    let commits: Vec<_> = writes.into_iter().map(|t| env.s().submit(t)).collect();
    check_cases(env.s(), &cases);
    for (c, commit) in cases.iter().zip(commits) {
        commit
            .wait()
            .unwrap_or_else(|e| panic!("write {}/{} {}~{}: {e}", c.coll, c.obj, c.off, c.len));
    }
    check_cases(env.s(), &cases);
    env.remount();
    check_cases(env.s(), &cases);

    // Holes read as zeroes: a sparse object with data at both ends.
    let coll = &colls[0];
    let mut want = Vec::new();
    let mut t = tx(coll);
    for (off, len) in [(0, 10), (3 * MIB + 1, 4096), (5 * MIB, 1)] {
        let data = random_bytes(&mut rng, len);
        model_write(&mut want, off, &data);
        t.write("sparse", off, data);
    }
    env.apply(t);
    assert!(
        env.s()
            .read(coll, "sparse", 10, 3 * MIB - 9)
            .unwrap()
            .iter()
            .all(|b| *b == 0),
        "a hole reads as zeroes"
    );
    check_data(
        env.s(),
        coll,
        "sparse",
        &want,
        &[4096, MIB, 3 * MIB, 3 * MIB + 4097],
    );
    let stat = env.s().stat(coll, "sparse").unwrap();
    assert_eq!(stat.size, 5 * MIB + 1);
    assert!(
        stat.allocated < MIB,
        "holes take no space: {} bytes allocated",
        stat.allocated
    );
    env.finish();
}

// ---- 3. overwrite, zero, truncate ---------------------------------------------------------

fn overwrite_zero_truncate(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(3);
    let mut model = Model::default();
    let colls = spread_colls(env.s(), "ozt", 2);
    for coll in &colls {
        let mut t = tx(coll);
        t.create_collection();
        env.apply_both(&mut model, t);
    }
    for coll in &colls {
        let c = coll.as_str();
        let zeros = |store: &Store, obj: &str, off: u64, len: u64, what: &str| {
            let got = store.read(c, obj, off, len).unwrap();
            assert_eq!(got.len() as u64, len, "{what}: short read");
            if let Some(at) = got.iter().position(|b| *b != 0) {
                panic!(
                    "{what}: byte {} is {:#04x}, not zero",
                    off + at as u64,
                    got[at]
                );
            }
        };

        // Truncate down mid-block, then extend: the tail reads as zeroes.
        let mut t = tx(c);
        t.write("t1", 0, random_bytes(&mut rng, 3 * AU + 100));
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.truncate("t1", 5000);
        env.apply_both(&mut model, t);
        assert_eq!(env.s().stat(c, "t1").unwrap().size, 5000);
        let mut t = tx(c);
        t.truncate("t1", 20000);
        env.apply_both(&mut model, t);
        zeros(env.s(), "t1", 5000, 15000, "truncated down then up");
        let mut t = tx(c);
        t.write("t1", 30000, b"x".to_vec());
        env.apply_both(&mut model, t);
        zeros(
            env.s(),
            "t1",
            5000,
            25000,
            "truncated, then written past the end",
        );
        // Down and up in one transaction; down mid-block and written past the end in one.
        let mut t = tx(c);
        t.write("t2", 0, random_bytes(&mut rng, 64 * KIB))
            .truncate("t2", 1)
            .truncate("t2", 64 * KIB);
        env.apply_both(&mut model, t);
        zeros(
            env.s(),
            "t2",
            1,
            64 * KIB - 1,
            "down and up in one transaction",
        );
        let mut t = tx(c);
        t.truncate("t2", 4097).write("t2", 9000, b"tail".to_vec());
        env.apply_both(&mut model, t);
        // To a unit boundary, to zero, then written at an offset.
        let mut t = tx(c);
        t.write("t3", 0, random_bytes(&mut rng, 40000));
        env.apply_both(&mut model, t);
        for (size, then) in [(8192, 16384), (0, 100), (4095, 4097), (4096, 4096)] {
            let mut t = tx(c);
            t.truncate("t3", size).truncate("t3", then);
            env.apply_both(&mut model, t);
            zeros(env.s(), "t3", size, then - size, "truncate then extend");
            let mut t = tx(c);
            t.write("t3", then, random_bytes(&mut rng, 3000));
            env.apply_both(&mut model, t);
        }
        // A big object cut to 1 MiB + 1 and extended.
        let mut t = tx(c);
        t.write("t4", 0, random_bytes(&mut rng, 2 * MIB + 3));
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.truncate("t4", MIB + 1);
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.truncate("t4", 2 * MIB);
        env.apply_both(&mut model, t);
        zeros(
            env.s(),
            "t4",
            MIB + 1,
            MIB - 1,
            "big object cut and extended",
        );
        let mut t = tx(c);
        t.truncate("t4", 2 * MIB);
        env.apply_both(&mut model, t); // same size: nothing changes

        // Zero across unit and extent-shard boundaries.
        let mut t = tx(c);
        t.write("z1", 0, random_bytes(&mut rng, 192 * KIB));
        env.apply_both(&mut model, t);
        for (off, len) in [
            (4000, 10000),
            (65530, 12),
            (8192, 8192),
            (100, 1),
            (4095, 2),
            (128 * KIB - 1, 64 * KIB + 2),
        ] {
            let mut t = tx(c);
            t.zero("z1", off, len);
            env.apply_both(&mut model, t);
            zeros(env.s(), "z1", off, len, "zeroed range");
        }
        let mut t = tx(c);
        t.zero("z1", 0, 192 * KIB);
        env.apply_both(&mut model, t);
        zeros(env.s(), "z1", 0, 192 * KIB, "zeroed whole");
        // Zero beyond the end extends the object; a zero-length zero does not.
        let mut t = tx(c);
        t.write("z2", 0, random_bytes(&mut rng, 100));
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.zero("z2", 5000, 100);
        env.apply_both(&mut model, t);
        assert_eq!(env.s().stat(c, "z2").unwrap().size, 5100);
        zeros(env.s(), "z2", 100, 5000, "zero past the end");
        let mut t = tx(c);
        t.zero("z2", MIB, 4096).zero("z2", 9 * MIB, 0);
        env.apply_both(&mut model, t);
        assert_eq!(env.s().stat(c, "z2").unwrap().size, MIB + 4096);
        // Zero and zero-length writes create; a zero-length write past the end changes nothing.
        let mut t = tx(c);
        t.zero("z3", 10, 10)
            .write("z4", 0, Vec::new())
            .write("z2", 20 * MIB, Vec::new());
        env.apply_both(&mut model, t);
        assert_eq!(env.s().stat(c, "z3").unwrap().size, 20);
        assert_eq!(env.s().stat(c, "z4").unwrap().size, 0);
        assert_eq!(env.s().stat(c, "z2").unwrap().size, MIB + 4096);

        // Overwrites: small ones inside a block, across blocks, the same range twice in one
        // transaction, write-zero-write in one transaction.
        let mut t = tx(c);
        t.write("w1", 0, random_bytes(&mut rng, 128 * KIB));
        env.apply_both(&mut model, t);
        for (off, len) in [
            (1, 1),
            (4095, 2),
            (3 * AU - 1, AU + 2),
            (60000, 10000),
            (0, 64 * KIB),
            (64 * KIB - 1, 64 * KIB + 2),
            (100 * KIB, 64 * KIB),
        ] {
            let mut t = tx(c);
            t.write("w1", off, random_bytes(&mut rng, len));
            env.apply_both(&mut model, t);
        }
        let mut t = tx(c);
        t.write("w1", 5000, random_bytes(&mut rng, 3000))
            .write("w1", 6000, random_bytes(&mut rng, 3000))
            .zero("w1", 5500, 100)
            .write("w1", 5550, random_bytes(&mut rng, 10));
        env.apply_both(&mut model, t);
        // Overwrites queued behind each other, read before they commit.
        let mut commits = Vec::new();
        for k in 0..8u64 {
            let mut t = tx(c);
            match k % 4 {
                0 => t.write("w1", k * 3000, random_bytes(&mut rng, 5000)),
                1 => t.zero("w1", k * 2000, 7000),
                2 => t.truncate("w1", 100 * KIB + k),
                _ => t.write("w1", 90 * KIB, random_bytes(&mut rng, 20 * KIB)),
            };
            model.apply(&t).unwrap();
            commits.push(env.s().submit(t));
        }
        let w1 = model.obj(c, "w1").data.clone();
        check_data(env.s(), c, "w1", &w1, &[5000, 90 * KIB, 100 * KIB]);
        for commit in commits {
            commit.wait().unwrap();
        }
        check_data(env.s(), c, "w1", &w1, &[5000, 90 * KIB, 100 * KIB]);
    }
    let names: Vec<String> = ["t1", "t2", "t3", "t4", "z1", "z2", "z3", "z4", "w1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    check_all(env.s(), &model, &colls, &names, &mut rng, "before remount");
    env.remount();
    check_all(env.s(), &model, &colls, &names, &mut rng, "after remount");
    env.finish();
}

// ---- 4. clones ------------------------------------------------------------------------------

fn clones(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(4);
    let mut model = Model::default();
    let colls = spread_colls(env.s(), "clone", 2);
    let names: Vec<String> = ["A", "B", "C", "D", "E", "F", "G", "H"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for coll in &colls {
        let c = coll.as_str();
        let check = |env: &Env, model: &Model, rng: &mut Rng, what: &str| {
            check_coll(env.s(), model, c, &names, rng, what);
        };
        let mut t = tx(c);
        t.create_collection()
            .write("A", 0, random_bytes(&mut rng, 200 * KIB + 123))
            .setattr("A", "a", b"1".to_vec())
            .setattr("A", "b", vec![2u8; 3000])
            .omap_setkey("A", b"k1", b"v1")
            .omap_setkey("A", b"k2", b"v2")
            .omap_setheader("A", b"hdr".to_vec());
        env.apply_both(&mut model, t);

        // Clone, then write either side: they stay independent.
        let mut t = tx(c);
        t.clone_object("A", "B");
        env.apply_both(&mut model, t);
        assert_eq!(env.s().getattr(c, "B", "a").unwrap(), b"1");
        assert_eq!(
            env.s().omap_get_header(c, "B").unwrap(),
            Some(b"hdr".to_vec())
        );
        check(&env, &model, &mut rng, "after clone A→B");
        let mut t = tx(c);
        t.write("A", 1000, random_bytes(&mut rng, 4000));
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.write("B", 100 * KIB, random_bytes(&mut rng, 7)).write(
            "B",
            0,
            random_bytes(&mut rng, 64 * KIB),
        );
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.zero("B", 150 * KIB, 10 * KIB).truncate("A", 190 * KIB);
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.setattr("B", "a", b"B's".to_vec())
            .omap_setkey("B", b"k3", b"v3")
            .omap_clear("A")
            .omap_setkey("A", b"kA", b"only A");
        env.apply_both(&mut model, t);
        check(&env, &model, &mut rng, "after writing both sides");

        // A clone onto an existing object replaces all of it.
        let mut t = tx(c);
        t.write("C", 0, random_bytes(&mut rng, 300 * KIB))
            .setattr("C", "c-only", b"x".to_vec())
            .omap_setkey("C", b"c-key", b"x")
            .omap_setheader("C", b"C header".to_vec());
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.clone_object("B", "C");
        env.apply_both(&mut model, t);
        assert_eq!(errno(env.s().getattr(c, "C", "c-only")), ENODATA);
        check(
            &env,
            &model,
            &mut rng,
            "after clone onto an existing object",
        );
        // A clone of an object without omap clears the target's.
        let mut t = tx(c);
        t.write("H", 0, b"no omap".to_vec()).clone_object("H", "C");
        env.apply_both(&mut model, t);
        assert!(env.s().omap_get(c, "C").unwrap().is_empty());
        assert_eq!(env.s().omap_get_header(c, "C").unwrap(), None);

        // clone_range: aligned (shared), unaligned (copied), past the source's end, within one
        // object (overlapping).
        let mut t = tx(c);
        t.clone_range("A", "D", 0, 64 * KIB, 128 * KIB);
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.clone_range("A", "D", 1000, 5000, 3);
        env.apply_both(&mut model, t);
        let a_size = model.obj(c, "A").data.len() as u64;
        let mut t = tx(c);
        t.clone_range("A", "D", a_size - 10, 4096 - 10 + 4096, 300 * KIB + 1)
            .clone_range(
                "A",
                "D",
                a_size.next_multiple_of(AU) - AU,
                3 * AU,
                400 * KIB,
            );
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.clone_range("D", "D", 0, 10000, 5000).clone_range(
            "D",
            "D",
            128 * KIB,
            64 * KIB,
            160 * KIB,
        );
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.clone_range("A", "D2", 0, 0, 777);
        env.apply_both(&mut model, t);
        check(&env, &model, &mut rng, "after clone_range");

        // Clones of data not yet on the device: written in the same transaction, and written
        // by a transaction queued just before.
        let mut t = tx(c);
        t.write("A", 8192, random_bytes(&mut rng, 8192))
            .clone_object("A", "E")
            .write("A", 0, random_bytes(&mut rng, 10))
            .write("E", 4, random_bytes(&mut rng, 10));
        env.apply_both(&mut model, t);
        let mut t1 = tx(c);
        t1.write("A", 64 * KIB, random_bytes(&mut rng, 64 * KIB))
            .write("A", 3, random_bytes(&mut rng, 100));
        let mut t2 = tx(c);
        t2.clone_object("A", "F")
            .clone_range("A", "G", 64 * KIB, 64 * KIB, 0)
            .clone_range("A", "G", 0, 4096, 64 * KIB);
        model.apply(&t1).unwrap();
        model.apply(&t2).unwrap();
        let c1 = env.s().submit(t1);
        let c2 = env.s().submit(t2);
        check(&env, &model, &mut rng, "clones of queued writes, in flight");
        c1.wait().unwrap();
        c2.wait().unwrap();
        check(&env, &model, &mut rng, "clones of queued writes");

        // Remove the sources; the clones keep their data.
        let mut t = tx(c);
        t.remove("A");
        env.apply_both(&mut model, t);
        check(&env, &model, &mut rng, "source removed");
        let mut t = tx(c);
        t.clone_object("B", "H").remove("B");
        env.apply_both(&mut model, t);
        let mut t = tx(c);
        t.clone_object("H", "A").remove("H").clone_object("A", "B");
        env.apply_both(&mut model, t);
        check(&env, &model, &mut rng, "clone chain");
        let mut t = tx(c);
        t.clone_object("E", "E");
        env.apply_fails(t, EINVAL);
    }
    check_all(env.s(), &model, &colls, &names, &mut rng, "before fsck");
    env.fsck_remount();
    check_all(env.s(), &model, &colls, &names, &mut rng, "after remount");
    // Overwrite every shared unit from either side, remove everything: nothing left shared.
    for coll in &colls {
        let mut t = tx(coll);
        for name in model.colls[coll].keys() {
            t.remove(name);
        }
        env.apply_both(&mut model, t);
    }
    let report = env.finish();
    assert_eq!(report.objects, 0);
    assert_eq!((report.shared_units, report.referenced_bytes), (0, 0));
}

/// Reference counts of shared units, counted by fsck after each step.
fn clone_reference_counts(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(40);
    let c = "refs";
    let mut t = tx(c);
    t.create_collection()
        .write("S", 0, random_bytes(&mut rng, 256 * KIB));
    env.apply(t);
    let expect = |env: &mut Env, shared: u64, referenced: u64, objects: u64, what: &str| {
        let r = env.fsck_remount();
        assert_eq!(
            (r.shared_units, r.referenced_bytes / AU, r.objects),
            (shared, referenced, objects),
            "{what}: (shared units, referenced units, objects)"
        );
    };
    expect(&mut env, 0, 64, 1, "one object");
    let mut t = tx(c);
    t.clone_object("S", "T");
    env.apply(t);
    expect(&mut env, 64, 64, 2, "clone S→T");
    let mut t = tx(c);
    t.write("T", 0, random_bytes(&mut rng, 64 * KIB));
    env.apply(t);
    expect(&mut env, 48, 80, 2, "T's first 16 units rewritten");
    // A small overwrite of shared space is never in place, deferred or not.
    let mut t = tx(c);
    t.write("T", 64 * KIB, random_bytes(&mut rng, 100));
    env.apply(t);
    expect(&mut env, 47, 81, 2, "T's unit 16 rewritten");
    let mut t = tx(c);
    t.clone_range("S", "U", 128 * KIB, 64 * KIB, 0);
    env.apply(t);
    expect(
        &mut env,
        47,
        81,
        3,
        "clone_range S→U (units with three mappings)",
    );
    let mut t = tx(c);
    t.remove("S");
    env.apply(t);
    expect(&mut env, 16, 64, 2, "S removed");
    let mut t = tx(c);
    t.remove("T");
    env.apply(t);
    expect(&mut env, 0, 16, 1, "T removed");
    // A clone then an overwrite of the clone in place, in one transaction.
    let mut t = tx(c);
    t.clone_object("U", "V").write("V", 100, b"v".to_vec());
    env.apply(t);
    expect(
        &mut env,
        15,
        17,
        2,
        "clone and overwrite in one transaction",
    );
    let mut t = tx(c);
    t.remove("U").remove("V");
    env.apply(t);
    let r = env.finish();
    assert_eq!((r.shared_units, r.referenced_bytes, r.objects), (0, 0, 0));
}

// ---- 5. omap and attributes ----------------------------------------------------------------

fn omap_and_attrs(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(5);
    let mut model = Model::default();
    let colls = spread_colls(env.s(), "omap", 2);
    let names = vec!["o".to_string(), "big".to_string()];
    for coll in &colls {
        let c = coll.as_str();
        let mut t = tx(c);
        t.create_collection().touch("o");
        env.apply_both(&mut model, t);
        let s = env.s();
        assert_eq!(errno(s.getattr(c, "o", "a")), ENODATA);
        assert!(s.getattrs(c, "o").unwrap().is_empty());
        assert!(s.omap_get(c, "o").unwrap().is_empty());
        assert_eq!(s.omap_get_header(c, "o").unwrap(), None);
        assert!(s.omap_iterate(c, "o", None, 10).unwrap().is_empty());
        assert!(
            s.omap_get_values(c, "o", &[b"k".to_vec()])
                .unwrap()
                .is_empty()
        );
        // Key-less omap ops on an object without an omap do nothing.
        let mut t = tx(c);
        t.omap_rmkeys("o", vec![b"k".to_vec()])
            .omap_rmkeyrange("o", b"a", b"z")
            .omap_clear("o");
        env.apply_both(&mut model, t);

        // Attributes.
        let mut attrs = BTreeMap::new();
        attrs.insert("a".to_string(), b"1".to_vec());
        attrs.insert("b".to_string(), Vec::new());
        attrs.insert("_long.name".to_string(), random_bytes(&mut rng, 5000));
        let mut t = tx(c);
        t.setattrs("o", attrs).setattr("o", "c", b"3".to_vec());
        env.apply_both(&mut model, t);
        assert_eq!(env.s().getattr(c, "o", "b").unwrap(), b"");
        assert_eq!(env.s().getattr(c, "o", "c").unwrap(), b"3");
        let mut t = tx(c);
        t.setattr("o", "a", b"one".to_vec())
            .rmattr("o", "b")
            .rmattr("o", "never-set");
        env.apply_both(&mut model, t);
        assert_eq!(env.s().getattr(c, "o", "a").unwrap(), b"one");
        assert_eq!(errno(env.s().getattr(c, "o", "b")), ENODATA);
        check_coll(env.s(), &model, c, &names, &mut rng, "attributes");
        env.remount();
        check_coll(
            env.s(),
            &model,
            c,
            &names,
            &mut rng,
            "attributes, remounted",
        );
        let mut t = tx(c);
        t.rmattrs("o").setattr("o", "after", b"x".to_vec());
        env.apply_both(&mut model, t);
        assert_eq!(env.s().getattrs(c, "o").unwrap().len(), 1);

        // Omap keys: ordinary, binary, empty.
        let mut keys: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("key.{i:03}").into_bytes())
            .collect();
        keys.extend([
            Vec::new(),
            vec![0],
            vec![0, 0],
            vec![0xff],
            vec![0xff, 0xff],
            b"a\0b".to_vec(),
            b"key.050\0".to_vec(),
        ]);
        let entries: BTreeMap<Vec<u8>, Vec<u8>> = keys
            .iter()
            .map(|k| (k.clone(), random_bytes(&mut rng, k.len() as u64 * 7)))
            .collect();
        let mut t = tx(c);
        t.omap_setkeys("o", entries)
            .omap_setheader("o", b"header".to_vec());
        env.apply_both(&mut model, t);
        let check_paging = |env: &Env, model: &Model, what: &str| {
            let want = &model.obj(c, "o").omap;
            for page in [1, 7, 1000] {
                let mut got: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                loop {
                    let after = got.last().map(|(k, _)| k.clone());
                    let p = env
                        .s()
                        .omap_iterate(c, "o", after.as_deref(), page)
                        .unwrap();
                    assert!(p.len() <= page);
                    let done = p.len() < page;
                    got.extend(p);
                    if done {
                        break;
                    }
                }
                let want: Vec<(Vec<u8>, Vec<u8>)> =
                    want.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(got, want, "{what}: omap in pages of {page}");
            }
            // From a key that is not there, from the last key, and max 0.
            let after = b"key.0505".to_vec();
            let got = env.s().omap_iterate(c, "o", Some(&after), 3).unwrap();
            let want3: Vec<(Vec<u8>, Vec<u8>)> = want
                .range::<Vec<u8>, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .take(3)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(got, want3, "{what}: after a missing key");
            if let Some(last) = want.keys().last() {
                assert!(
                    env.s()
                        .omap_iterate(c, "o", Some(last), 5)
                        .unwrap()
                        .is_empty()
                );
            }
            assert!(env.s().omap_iterate(c, "o", None, 0).unwrap().is_empty());
            // get_values: present and missing keys.
            let ask: Vec<Vec<u8>> = vec![
                b"key.000".to_vec(),
                b"key.015".to_vec(),
                b"missing".to_vec(),
                Vec::new(),
                vec![0xff, 0xff],
                b"key.099".to_vec(),
            ];
            let got = env.s().omap_get_values(c, "o", &ask).unwrap();
            let want_values: BTreeMap<Vec<u8>, Vec<u8>> = ask
                .iter()
                .filter_map(|k| want.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            assert_eq!(got, want_values, "{what}: omap_get_values");
        };
        check_paging(&env, &model, "all keys");
        let mut t = tx(c);
        t.omap_rmkeys(
            "o",
            vec![b"key.003".to_vec(), Vec::new(), b"not-there".to_vec()],
        )
        .omap_rmkeyrange("o", b"key.010", b"key.020")
        .omap_rmkeyrange("o", b"key.090", b"key.080")
        .omap_rmkeyrange("o", b"key.030", b"key.030");
        env.apply_both(&mut model, t);
        assert!(!model.obj(c, "o").omap.contains_key(b"key.015".as_slice()));
        assert!(model.obj(c, "o").omap.contains_key(b"key.020".as_slice()));
        check_paging(&env, &model, "after rmkeys and rmkeyrange");
        env.remount();
        check_paging(&env, &model, "remounted");
        // Range removal then new keys in the range, in one transaction.
        let mut t = tx(c);
        t.omap_rmkeyrange("o", b"key.040", b"key.060")
            .omap_setkey("o", b"key.045", b"back")
            .omap_setheader("o", b"header 2".to_vec());
        env.apply_both(&mut model, t);
        check_paging(&env, &model, "range removed, one key back");
        // Clear takes the header too; keys set after a clear stay.
        let mut t = tx(c);
        t.omap_clear("o");
        env.apply_both(&mut model, t);
        assert_eq!(env.s().omap_get_header(c, "o").unwrap(), None);
        assert!(env.s().omap_get(c, "o").unwrap().is_empty());
        assert!(
            !env.s().stat(c, "o").unwrap().has_omap,
            "has_omap after a clear"
        );
        let mut t = tx(c);
        t.omap_setkey("o", b"k", b"v")
            .omap_clear("o")
            .omap_setkey("o", b"k2", b"v2")
            .omap_setheader("o", Vec::new());
        env.apply_both(&mut model, t);
        assert_eq!(env.s().omap_get_header(c, "o").unwrap(), Some(Vec::new()));
        check_paging(&env, &model, "after clear");

        // More entries than omap_get's page.
        let big: BTreeMap<Vec<u8>, Vec<u8>> = (0..2500u32)
            .map(|i| (i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec()))
            .collect();
        let mut t = tx(c);
        t.touch("big").omap_setkeys("big", big.clone());
        env.apply_both(&mut model, t);
        assert_eq!(env.s().omap_get(c, "big").unwrap(), big);

        // A removed and re-made object has no attributes or omap.
        let mut t = tx(c);
        t.remove("o").touch("o");
        env.apply_both(&mut model, t);
        assert!(env.s().getattrs(c, "o").unwrap().is_empty());
        assert!(env.s().omap_get(c, "o").unwrap().is_empty());
        assert_eq!(env.s().omap_get_header(c, "o").unwrap(), None);
        let mut t = tx(c);
        t.setattr("o", "x", b"y".to_vec())
            .omap_setkey("o", b"x", b"y")
            .remove("o")
            .touch("o");
        env.apply_both(&mut model, t);
        check_coll(env.s(), &model, c, &names, &mut rng, "remade object");
    }
    env.remount();
    check_all(env.s(), &model, &colls, &names, &mut rng, "remounted");
    env.finish();
}

/// Reads right after `queue_transaction` (before the commit) see the transaction, and the
/// ones queued before it.
fn reads_see_queued_transactions(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(6);
    let mut model = Model::default();
    let colls = spread_colls(env.s(), "ryw", 2);
    let names: Vec<String> = ["o", "p", "q"].iter().map(|s| s.to_string()).collect();
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut queued = 0;
    for coll in &colls {
        let c = coll.as_str();
        let mut t = tx(c);
        t.create_collection()
            .write("o", 0, random_bytes(&mut rng, 100 * KIB))
            .omap_setkeys(
                "o",
                (0..20u8).map(|i| (vec![b'k', i], vec![i; 10])).collect(),
            )
            .setattr("o", "a", b"1".to_vec());
        env.apply_both(&mut model, t);
    }
    for round in 0..6 {
        for coll in &colls {
            let c = coll.as_str();
            let mut t = tx(c);
            match round {
                0 => t
                    .setattr("o", "a", b"2".to_vec())
                    .setattr("o", "new", b"n".to_vec())
                    .omap_setkey("o", b"k\x05", b"changed")
                    .omap_setheader("o", b"h".to_vec())
                    .write("o", 4000, random_bytes(&mut rng, 200)),
                1 => t
                    .rmattr("o", "a")
                    .omap_rmkeys("o", vec![vec![b'k', 1]])
                    .omap_rmkeyrange("o", &[b'k', 10], &[b'k', 15])
                    .write("o", 64 * KIB - 10, random_bytes(&mut rng, 64 * KIB)),
                2 => t
                    .omap_clear("o")
                    .omap_setkey("o", b"after-clear", b"1")
                    .truncate("o", 5000)
                    .write("p", 0, random_bytes(&mut rng, 3)),
                3 => t
                    .clone_object("o", "q")
                    .rename("p", "p2")
                    .rename("p2", "p")
                    .zero("o", 0, 4097),
                4 => t.remove("q").rmattrs("o").touch("r").remove("r"),
                _ => t
                    .rename("p", "q")
                    .write("o", MIB, random_bytes(&mut rng, 10)),
            };
            let what = describe(&t);
            let want = model.apply(&t).map_err(|e| e.to_string());
            let done = done_tx.clone();
            let id = queued;
            queued += 1;
            env.s()
                .queue_transaction(t, move |r| {
                    let _ = done.send((id, r.map_err(|e| e.to_string())));
                })
                .unwrap_or_else(|e| panic!("{what}: not queued: {e}"));
            assert_eq!(want, Ok(()), "{what}");
            // Before the commit (nothing waited for): every read sees it.
            check_coll(
                env.s(),
                &model,
                c,
                &names,
                &mut rng,
                &format!("round {round}, queued, not waited for"),
            );
        }
    }
    drop(done_tx);
    let mut results: Vec<(usize, Result<(), String>)> = done_rx.iter().collect();
    results.sort_by_key(|r| r.0);
    assert_eq!(results.len(), queued);
    for (id, r) in results {
        assert_eq!(r, Ok(()), "queued transaction {id}");
    }
    check_all(env.s(), &model, &colls, &names, &mut rng, "committed");
    env.remount();
    check_all(env.s(), &model, &colls, &names, &mut rng, "remounted");
    env.finish();
}

// ---- 6. listing and rename -----------------------------------------------------------------

fn listing_and_rename(v: Variant) {
    let mut env = Env::new(v);
    let mut rng = Rng::new(7);
    let mut model = Model::default();
    // Collections with odd names, spread over the shards, listed sorted.
    let mut colls = spread_colls(env.s(), "list", 2);
    colls.extend(["κόσμε".to_string(), "a b".to_string(), "Z".to_string()]);
    for coll in &colls {
        let mut t = tx(coll);
        t.create_collection();
        env.apply_both(&mut model, t);
    }
    let mut sorted = colls.clone();
    sorted.sort();
    assert_eq!(env.s().list_collections().unwrap(), sorted);

    let mut names: Vec<String> = (0..150).map(|i| format!("obj.{i:03}")).collect();
    names.extend(
        [
            "a\u{0}b",
            "a",
            "ab",
            "a\u{0}",
            "a\u{1}",
            "\u{1}",
            "é",
            "日本語",
            "Z",
            " ",
            "x/y",
            "\u{10ffff}",
            "a\u{ff}",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    for coll in &colls[..2] {
        let c = coll.as_str();
        // Made in several transactions, some objects with data.
        for chunk in names.chunks(40) {
            let mut t = tx(c);
            for n in chunk {
                if n.len() % 3 == 0 {
                    t.write(n, 0, n.as_bytes().to_vec());
                } else {
                    t.touch(n);
                }
            }
            env.apply_both(&mut model, t);
        }
        let want: Vec<String> = model.colls[c].keys().cloned().collect();
        assert_eq!(list_all(env.s(), c, 7).unwrap(), want, "pages of 7");
        assert_eq!(list_all(env.s(), c, 1).unwrap(), want, "pages of 1");
        assert_eq!(env.s().list_objects(c, None, 1000).unwrap(), want);
        assert!(env.s().list_objects(c, None, 0).unwrap().is_empty());
        // After a name that is not there, and after the last one.
        let got = env.s().list_objects(c, Some("a\u{0}a"), 3).unwrap();
        assert_eq!(got, vec!["a\u{0}b", "a\u{1}", "ab"]);
        let got = env.s().list_objects(c, Some("obj.0995"), 2).unwrap();
        assert_eq!(got, vec!["obj.100", "obj.101"]);
        let last = want.last().unwrap();
        assert!(env.s().list_objects(c, Some(last), 5).unwrap().is_empty());
    }
    env.remount();
    for coll in &colls[..2] {
        let want: Vec<String> = model.colls[coll].keys().cloned().collect();
        assert_eq!(
            list_all(env.s(), coll, 7).unwrap(),
            want,
            "remounted, pages of 7"
        );
    }

    // Pending creates and removes show in listings before they commit.
    for coll in &colls[..2] {
        let c = coll.as_str();
        let mut commits = Vec::new();
        let mut t = tx(c);
        t.touch("new.1")
            .remove("a")
            .remove("obj.005")
            .write("a\u{0}c", 0, b"x".to_vec());
        model.apply(&t).unwrap();
        commits.push(env.s().submit(t));
        let mut t = tx(c);
        t.remove("new.1")
            .touch("new.2")
            .rename("obj.006", "obj.0055");
        model.apply(&t).unwrap();
        commits.push(env.s().submit(t));
        let want: Vec<String> = model.colls[c].keys().cloned().collect();
        assert_eq!(list_all(env.s(), c, 7).unwrap(), want, "pending changes");
        let got = env.s().list_objects(c, Some("obj.004"), 3).unwrap();
        assert_eq!(got, vec!["obj.0055", "obj.007", "obj.008"]);
        for commit in commits {
            commit.wait().unwrap();
        }
        assert_eq!(list_all(env.s(), c, 7).unwrap(), want, "committed");
    }

    // Rename: data, attributes and omap move; onto an existing name is EEXIST and changes
    // nothing; chains and swaps in one transaction.
    let c = colls[0].as_str();
    let mut t = tx(c);
    t.write("r1", 0, random_bytes(&mut rng, 70 * KIB))
        .setattr("r1", "a", b"r1".to_vec())
        .omap_setkey("r1", b"k", b"r1")
        .omap_setheader("r1", b"h1".to_vec())
        .write("r2", 0, random_bytes(&mut rng, 5000));
    env.apply_both(&mut model, t);
    let mut t = tx(c);
    t.rename("r1", "renamed");
    env.apply_both(&mut model, t);
    assert!(!env.s().exists(c, "r1").unwrap());
    assert_eq!(env.s().getattr(c, "renamed", "a").unwrap(), b"r1");
    let mut t = tx(c);
    t.write("r2", 0, b"changed".to_vec())
        .rename("renamed", "r2");
    env.apply_fails(t.clone(), EEXIST);
    assert_eq!(model.apply(&t), Err(EEXIST));
    let mut t = tx(c);
    t.rename("missing", "r9");
    env.apply_fails(t, ENOENT);
    let mut t = tx(c);
    t.rename("r2", "r2");
    env.apply_both(&mut model, t);
    // A chain: c1 → c2 → c3 → c4.
    let mut t = tx(c);
    t.write("c1", 0, random_bytes(&mut rng, 9000))
        .rename("c1", "c2")
        .rename("c2", "c3")
        .rename("c3", "c4");
    env.apply_both(&mut model, t);
    // A swap through a temporary name, of committed objects.
    let mut t = tx(c);
    t.rename("renamed", "tmp")
        .rename("r2", "renamed")
        .rename("tmp", "r2");
    env.apply_both(&mut model, t);
    // Renamed away and written again under the old name; renamed onto a name removed earlier
    // in the transaction; onto a name removed by a queued transaction; there and back.
    let mut t = tx(c);
    t.rename("c4", "c5").write("c4", 0, b"new c4".to_vec());
    env.apply_both(&mut model, t);
    let mut t = tx(c);
    t.remove("c5").rename("c4", "c5");
    env.apply_both(&mut model, t);
    let mut t1 = tx(c);
    t1.remove("r2");
    let mut t2 = tx(c);
    t2.rename("renamed", "r2")
        .rename("r2", "back")
        .rename("back", "r2");
    model.apply(&t1).unwrap();
    model.apply(&t2).unwrap();
    let c1 = env.s().submit(t1);
    let c2 = env.s().submit(t2);
    check_coll(env.s(), &model, c, &[], &mut rng, "renames in flight");
    c1.wait().unwrap();
    c2.wait().unwrap();
    // A name both vacated and filled in one transaction (big → moved, small → big), the
    // object moving away holding cached data: the cache must keep counting it (a miscount
    // surfaced as an arithmetic overflow on the reactor once the object went).
    let mut t = tx(c);
    t.write("big", 0, random_bytes(&mut rng, 128 * KIB))
        .write("small", 0, b"s".to_vec());
    env.apply_both(&mut model, t);
    assert_eq!(
        env.s().read(c, "big", 0, u64::MAX).unwrap().len() as u64,
        128 * KIB
    );
    let mut t = tx(c);
    t.rename("big", "moved").rename("small", "big");
    env.apply_both(&mut model, t);
    let mut t = tx(c);
    t.remove("moved").remove("big");
    env.apply_both(&mut model, t);
    // Renamed and then cloned, and the source overwritten, in one transaction.
    let mut t = tx(c);
    t.rename("c5", "c6")
        .clone_object("c6", "c7")
        .write("c6", 10, b"c6 only".to_vec());
    env.apply_both(&mut model, t);
    let extra: Vec<String> = [
        "r1", "r2", "renamed", "tmp", "back", "c1", "c2", "c3", "c4", "c5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    check_coll(env.s(), &model, c, &extra, &mut rng, "after renames");
    env.remount();
    check_all(env.s(), &model, &colls, &extra, &mut rng, "remounted");
    env.finish();
}

// ---- 8. model-based random transactions ----------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn rand_offset(rng: &mut Rng) -> u64 {
    match rng.below(7) {
        0 => 0,
        1 => rng.below(8192),
        2 => rng.below(64) * AU,
        3 => (rng.below(64) * AU + rng.below(3)).saturating_sub(1),
        4 => rng.below(2 * MIB),
        5 => 64 * KIB * rng.below(8) + rng.below(2),
        _ => rng.below(256 * KIB),
    }
}

fn rand_len(rng: &mut Rng) -> u64 {
    match rng.below(12) {
        0 => rng.below(16),
        1 | 2 => 1 + rng.below(4096),
        3 => AU * (1 + rng.below(4)),
        4 | 5 => 1 + rng.below(64 * KIB),
        6 => 64 * KIB - 1 + rng.below(3),
        7 => rng.below(256 * KIB),
        8 => rng.below(1536 * KIB),
        9 => AU * (1 + rng.below(32)),
        _ => 1 + rng.below(20000),
    }
}

const ATTR_NAMES: &[&str] = &["a", "b", "_", "snapset", "long attribute name"];

fn omap_key(rng: &mut Rng) -> Vec<u8> {
    const FIXED: &[&[u8]] = &[b"", b"\0", b"a", b"a\0", b"b", b"\xff", b"\xff\xff", b"k"];
    if rng.below(3) == 0 {
        FIXED[rng.below(FIXED.len() as u64) as usize].to_vec()
    } else {
        format!("key.{:02}", rng.below(30)).into_bytes()
    }
}

/// Adds one random op. Objects it needs to exist come from `existing` (the collection as the
/// transaction so far leaves it) but for one time in twelve, which makes an ENOENT; targets of
/// renames are mostly free names.
fn random_op(rng: &mut Rng, t: &mut Transaction, names: &[String], existing: &[String]) {
    let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
    let any = pick(rng);
    let obj = if existing.is_empty() || rng.below(12) == 0 {
        any.clone()
    } else {
        existing[rng.below(existing.len() as u64) as usize].clone()
    };
    match rng.below(100) {
        0..=27 => {
            let (off, len) = (rand_offset(rng), rand_len(rng));
            let target = if rng.below(3) == 0 { &any } else { &obj };
            t.write(target, off, random_bytes(rng, len))
        }
        28..=35 => t.zero(&obj, rand_offset(rng), rand_len(rng)),
        36..=43 => t.truncate(&obj, rand_offset(rng)),
        44..=46 => t.touch(&any),
        47..=51 => t.remove(&obj),
        52..=57 => {
            let mut attrs = BTreeMap::new();
            for _ in 0..1 + rng.below(3) {
                let name = ATTR_NAMES[rng.below(ATTR_NAMES.len() as u64) as usize];
                let len = if rng.below(10) == 0 {
                    rng.below(5000)
                } else {
                    rng.below(40)
                };
                attrs.insert(name.to_string(), random_bytes(rng, len));
            }
            t.setattrs(&obj, attrs)
        }
        58..=60 => t.rmattr(
            &obj,
            ATTR_NAMES[rng.below(ATTR_NAMES.len() as u64) as usize],
        ),
        61..=62 => t.rmattrs(&obj),
        63..=70 => {
            let entries = (0..1 + rng.below(6))
                .map(|_| {
                    let len = rng.below(60);
                    (omap_key(rng), random_bytes(rng, len))
                })
                .collect();
            t.omap_setkeys(&obj, entries)
        }
        71..=74 => {
            let keys = (0..1 + rng.below(4)).map(|_| omap_key(rng)).collect();
            t.omap_rmkeys(&obj, keys)
        }
        75..=77 => {
            let (a, b) = (omap_key(rng), omap_key(rng));
            t.omap_rmkeyrange(&obj, &a, &b)
        }
        78..=79 => t.omap_clear(&obj),
        80..=82 => {
            let len = rng.below(100);
            t.omap_setheader(&obj, random_bytes(rng, len))
        }
        83..=88 => {
            let dst = pick(rng);
            t.clone_object(&obj, &dst)
        }
        89..=95 => {
            let dst = pick(rng);
            let (so, len, dof) = if rng.below(2) == 0 {
                (rng.below(64) * AU, rng.below(48) * AU, rng.below(64) * AU)
            } else {
                (
                    rand_offset(rng),
                    rand_len(rng).min(512 * KIB),
                    rand_offset(rng),
                )
            };
            t.clone_range(&obj, &dst, so, len, dof)
        }
        _ => {
            let mut to = pick(rng);
            for _ in 0..3 {
                if !existing.contains(&to) {
                    break;
                }
                to = pick(rng);
            }
            t.rename(&obj, &to)
        }
    };
}

/// Adds `n` random ops, each chosen against the collection as the ops before it leave it; stops
/// after the first op that fails.
fn random_ops(
    rng: &mut Rng,
    t: &mut Transaction,
    names: &[String],
    mut scratch: Option<MColl>,
    n: u64,
) {
    for _ in 0..n {
        let existing: Vec<String> = scratch
            .as_ref()
            .map_or_else(Vec::new, |c| c.keys().cloned().collect());
        random_op(rng, t, names, &existing);
        if model_op(&mut scratch, t.ops().last().expect("just added")).is_err() {
            return;
        }
    }
}

fn random_txn(rng: &mut Rng, model: &Model, colls: &[String], names: &[String]) -> Transaction {
    let coll = &colls[rng.below(colls.len() as u64) as usize];
    let mut t = tx(coll);
    let existing = model.colls.get(coll);
    if existing.is_none() && rng.below(8) != 0 {
        t.create_collection();
    }
    if let Some(objs) = existing
        && rng.below(20) == 0
    {
        // Empty the collection and remove it (sometimes forgetting an object), and maybe
        // make it again.
        let skip = if rng.below(4) == 0 {
            rng.below(4)
        } else {
            u64::MAX
        };
        for (i, name) in objs.keys().enumerate() {
            if i as u64 != skip {
                t.remove(name);
            }
        }
        t.remove_collection();
        if rng.below(2) == 0 {
            t.create_collection();
            let n = 1 + rng.below(3);
            random_ops(rng, &mut t, names, Some(MColl::new()), n);
        }
        return t;
    }
    let scratch = if t.ops().is_empty() {
        existing.cloned()
    } else {
        Some(MColl::new())
    };
    let n = 1 + rng.below(5);
    random_ops(rng, &mut t, names, scratch, n);
    match rng.below(40) {
        0 => {
            t.create_collection();
        }
        1 => {
            t.remove_collection();
        }
        _ => {}
    }
    t
}

fn model_based(v: Variant) {
    let cases = env_u64("BLUEPOLL_STORE_PROPTEST_CASES").unwrap_or(2);
    let first_seed = env_u64("BLUEPOLL_STORE_PROPTEST_SEED").unwrap_or(0x5eed);
    let verbose = std::env::var_os("BLUEPOLL_STORE_PROPTEST_VERBOSE").is_some();
    let steps = 60;
    for case in 0..cases {
        let seed = first_seed
            .wrapping_add(case)
            .wrapping_add((v.shards as u64) << 32)
            .wrapping_add(u64::from(v.deferred) << 40);
        let mut rng = Rng::new(seed);
        let mut config = config(v);
        // Every other case with a tiny cache: onodes and buffers evicted all the time.
        if case % 2 == 1 {
            config.cache_bytes = 16 * KIB;
        }
        let mut env = Env::with(config);
        let colls = spread_colls(env.s(), "m", 3);
        let names: Vec<String> = ["o0", "o1", "o2", "o3", "o4", "o5", "o6", "a\u{0}b", "é", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut model = Model::default();
        // Outcomes by errno (0: committed), committed ops by name, remounts: printed at the
        // end of the case and checked, so the generator cannot drift into testing nothing.
        let mut outcomes: BTreeMap<i32, u64> = BTreeMap::new();
        let mut ops: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut remounts = 0;
        for step in 0..steps {
            let ctx = format!("{v:?} seed {seed:#x} step {step}");
            if rng.below(10) == 0 {
                env.remount();
                remounts += 1;
                check_all(
                    env.s(),
                    &model,
                    &colls,
                    &names,
                    &mut rng,
                    &format!("{ctx}, remounted"),
                );
            }
            let batch = if rng.below(4) == 0 {
                2 + rng.below(3)
            } else {
                1
            };
            let mut pending = Vec::new();
            let mut touched = BTreeSet::new();
            for _ in 0..batch {
                let t = random_txn(&mut rng, &model, &colls, &names);
                let what = describe(&t);
                if verbose {
                    eprintln!("{ctx}: {what}");
                }
                let want = model.apply(&t);
                *outcomes.entry(want.err().unwrap_or(0)).or_default() += 1;
                if want.is_ok() {
                    for op in t.ops() {
                        *ops.entry(op.name()).or_default() += 1;
                    }
                }
                touched.insert(t.collection().to_string());
                pending.push((env.s().submit(t), want, what));
            }
            // In flight: reads see every queued transaction.
            for c in &touched {
                check_coll(
                    env.s(),
                    &model,
                    c,
                    &names,
                    &mut rng,
                    &format!("{ctx}, in flight"),
                );
            }
            for (commit, want, what) in pending {
                let got = commit.wait().map_err(|e| (e.errno(), e.to_string()));
                let same = match (&got, want) {
                    (Ok(()), Ok(())) => true,
                    (Err((errno, _)), Err(w)) => *errno == w,
                    _ => false,
                };
                assert!(
                    same,
                    "{ctx}: {what}: the store gave {got:?}, the model {want:?}"
                );
            }
            if step % 5 == 4 {
                check_all(
                    env.s(),
                    &model,
                    &colls,
                    &names,
                    &mut rng,
                    &format!("{ctx}, committed"),
                );
            }
        }
        check_all(
            env.s(),
            &model,
            &colls,
            &names,
            &mut rng,
            &format!("{v:?} seed {seed:#x}, end"),
        );
        env.remount();
        check_all(
            env.s(),
            &model,
            &colls,
            &names,
            &mut rng,
            &format!("{v:?} seed {seed:#x}, remounted"),
        );
        env.finish();
        eprintln!(
            "{v:?} seed {seed:#x}: {steps} steps, {remounts} remounts, outcomes by errno \
             {outcomes:?}, committed ops {ops:?}"
        );
        let total: u64 = outcomes.values().sum();
        assert!(
            outcomes.get(&0).copied().unwrap_or(0) * 2 > total,
            "most transactions should commit: {outcomes:?}"
        );
    }
}

// ---- fsck ----------------------------------------------------------------------------------

/// fsck leaves the store as it found it: run twice in a row, both clean, and the store mounts
/// with its data intact. (fsck opens RocksDB read-write; RocksDB's writes go through BlueFS to
/// the allocator shared with object data, which must know first what objects use.)
#[test]
fn fsck_leaves_the_store_intact() {
    let mut env = Env::new(V1);
    let mut rng = Rng::new(9);
    let mut objects = Vec::new();
    let mut t = tx("c");
    t.create_collection();
    env.apply(t);
    for i in 0..10 {
        let data = random_bytes(&mut rng, 64 * KIB);
        let mut t = tx("c");
        t.write(&format!("o{i}"), 0, data.clone());
        env.apply(t);
        objects.push(data);
        env.fsck_remount();
        for (k, data) in objects.iter().enumerate() {
            check_read(env.s(), "c", &format!("o{k}"), 0, u64::MAX, data);
        }
    }
    env.finish();
}

/// A transaction without ops on a collection that does not exist is refused like any op on it,
/// and the shard goes on serving (it once panicked the shard's reactor and hung the store).
#[test]
fn an_empty_transaction_on_a_missing_collection_is_refused() {
    for v in [V1, V2] {
        let env = Env::new(v);
        let store = env.s();
        for i in 0..4 {
            let coll = format!("missing{i}");
            let refused = store.apply(tx(&coll));
            assert!(
                matches!(refused, Err(StoreError::NoSuchCollection { .. })),
                "{coll}: {refused:?}"
            );
            let mut t = tx(&coll);
            t.create_collection().write("o", 0, b"after".to_vec());
            store.apply(t).expect("the shard still serves");
            assert_eq!(store.read(&coll, "o", 0, 5).unwrap(), b"after");
            // On an existing collection an empty transaction is a no-op that commits.
            store
                .apply(tx(&coll))
                .expect("empty transaction on an existing collection");
        }
    }
}
