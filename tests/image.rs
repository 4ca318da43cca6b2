//! RBD-style images on the object store (issue 8, first part): reads, writes, discards and
//! resizes against a byte model, the object map always agreeing with which data objects exist,
//! reads of unwritten space answered from the map with no object read, a damaged map refused
//! and rebuilt, and bad requests answered with errors.

use bluepoll::image::{self, Image, ImageError, ObjectState, features};
use bluepoll::nvme::Device;
use bluepoll::rand::Rng;
use bluepoll::store::{Store, StoreConfig, StoreDevices, Transaction};

fn store() -> Store {
    let devices = StoreDevices::only(Device::open("mem:1G").unwrap());
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        ..StoreConfig::default()
    };
    Store::mkfs_on(&devices, &config).unwrap();
    Store::mount_on(devices, config).unwrap()
}

/// The image's data objects that exist in the store (names as docs/format.md gives them).
fn existing_objects(store: &Store, name: &str, objects: u64) -> Vec<bool> {
    let coll = format!("img.{name}");
    (0..objects)
        .map(|i| store.exists(&coll, &format!("data.{i:016x}")).unwrap())
        .collect()
}

fn check_map_agrees(store: &Store, img: &Image, what: &str) {
    let Some(map) = img.object_map() else {
        return;
    };
    let exists = existing_objects(store, img.name(), img.info().objects());
    for (i, e) in exists.iter().enumerate() {
        let state = map.get(i as u64);
        assert_eq!(
            state.may_exist(),
            *e,
            "{what}: object {i} is {state:?} in the map, exists={e}"
        );
    }
}

#[test]
fn random_requests_match_a_byte_model_and_the_map_matches_the_objects() {
    let store = store();
    let mut rng = Rng::new(11);
    for (case, feats) in [
        features::DEFAULT,
        features::SHARED,
        features::OBJECT_MAP | features::EXCLUSIVE_LOCK,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("model{case}");
        // 16 KiB objects, so requests cross object boundaries often.
        let mut size = 1 << 20;
        image::create(&store, &name, size, 14, feats).unwrap();
        let mut img = Image::open(&store, &name).unwrap();
        let mut model = vec![0u8; size as usize];
        for step in 0..400 {
            let what = format!("case {case} step {step}");
            match rng.below(12) {
                0..=5 => {
                    let len = 1 + rng.below(40_000).min(size - 1);
                    let off = rng.below(size - len + 1);
                    let mut data = vec![0u8; len as usize];
                    rng.fill_bytes(&mut data);
                    img.write(off, &data).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                6 | 7 => {
                    let len = 1 + rng.below(60_000).min(size - 1);
                    let off = rng.below(size - len + 1);
                    if rng.below(2) == 0 {
                        img.discard(off, len).unwrap();
                    } else {
                        img.write_zeroes(off, len).unwrap();
                    }
                    model[off as usize..(off + len) as usize].fill(0);
                }
                8 => {
                    let new = (1 + rng.below(2 << 20)).next_multiple_of(512);
                    let mut calls = 0;
                    img.resize(new, |done, total| {
                        assert!(done <= total);
                        calls += 1;
                    })
                    .unwrap();
                    model.resize(new as usize, 0);
                    size = new;
                }
                9 => img = Image::open(&store, &name).unwrap(),
                _ => {
                    let len = rng.below(size + 1);
                    let off = rng.below(size - len + 1);
                    let got = img.read(off, len).unwrap();
                    assert!(
                        got == model[off as usize..(off + len) as usize],
                        "{what}: read {len} at {off} differs"
                    );
                }
            }
            check_map_agrees(&store, &img, &what);
        }
        assert!(
            img.read(0, size).unwrap() == model,
            "case {case}: whole image"
        );
        // The lock (and with it the trusted map) goes with the client that held it.
        drop(img);
        let img = Image::open(&store, &name).unwrap();
        assert_eq!(img.info().size, size);
        assert_eq!(
            img.object_map().is_some(),
            feats & features::OBJECT_MAP != 0
        );
        check_map_agrees(&store, &img, "reopened");
    }
    assert_eq!(image::list(&store).unwrap(), ["model0", "model1", "model2"]);
    for name in ["model0", "model1", "model2"] {
        image::remove(&store, name).unwrap();
    }
    assert!(image::list(&store).unwrap().is_empty());
    store.umount().unwrap();
}

#[test]
fn reads_of_unwritten_space_read_no_object() {
    let store = store();
    image::create(&store, "thin", 1 << 40, 22, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "thin").unwrap();
    for off in [0, 4 << 20, (1 << 40) - (8 << 20)] {
        assert_eq!(img.read(off, 8 << 20).unwrap(), vec![0u8; 8 << 20]);
    }
    assert_eq!(img.stats().object_reads, 0);
    assert!(img.stats().reads_from_map >= 6);
    img.write(5 << 20, b"hello").unwrap();
    assert_eq!(img.read(5 << 20, 5).unwrap(), b"hello");
    assert_eq!(img.stats().object_reads, 1);
    // The map changed once, one block; a second write to the same object changes nothing.
    let written = img.stats().map_blocks_written;
    assert_eq!((img.stats().map_updates, written), (1, 1));
    img.write(6 << 20, b"again").unwrap();
    assert_eq!(img.stats().map_blocks_written, written);
    let map = img.object_map().unwrap();
    assert_eq!(map.get(1), ObjectState::Exists);
    assert_eq!(map.objects_in(ObjectState::Exists).count(), 1);
    store.umount().unwrap();
}

#[test]
fn a_damaged_map_is_invalidated_and_rebuilt() {
    let store = store();
    image::create(&store, "vm", 64 << 20, 20, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "vm").unwrap();
    for off in [0u64, 3 << 20, 40 << 20] {
        img.write(off, &[7u8; 1000]).unwrap();
    }
    drop(img);
    // One byte of the map's first block, behind the image's back.
    let mut t = Transaction::new("img.vm");
    t.write("object_map", 9, vec![0xff]);
    store.apply(t).unwrap();
    let mut img = Image::open(&store, "vm").unwrap();
    assert!(img.object_map().is_none());
    assert!(img.info().map_invalid());
    // Every object may exist now: reads go to the store and stay right.
    assert_eq!(img.read(3 << 20, 1000).unwrap(), vec![7u8; 1000]);
    assert_eq!(img.read(10 << 20, 10).unwrap(), vec![0u8; 10]);
    // Still invalid after a reopen, until rebuilt.
    drop(img);
    let mut img2 = Image::open(&store, "vm").unwrap();
    assert!(img2.object_map().is_none());
    img2.rebuild_object_map().unwrap();
    let exists: Vec<u64> = img2
        .object_map()
        .unwrap()
        .objects_in(ObjectState::Exists)
        .collect();
    assert_eq!(exists, vec![0, 3, 40]);
    let rebuilt = img2.object_map().cloned();
    drop(img2);
    let img3 = Image::open(&store, "vm").unwrap();
    assert!(!img3.info().map_invalid());
    assert_eq!(img3.object_map().cloned(), rebuilt);
    store.umount().unwrap();
}

#[test]
fn a_shrink_removes_the_objects_past_the_end_with_progress() {
    let store = store();
    image::create(&store, "big", 200 << 16, 16, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "big").unwrap();
    for i in 0..200u64 {
        img.write(i << 16, &[1u8; 10]).unwrap();
    }
    let mut reports = Vec::new();
    img.resize((10 << 16) + 100, |done, total| reports.push((done, total)))
        .unwrap();
    assert_eq!(reports.last(), Some(&(189, 189)));
    assert!(reports.len() >= 3, "{reports:?}");
    let exists = existing_objects(&store, "big", 200);
    assert_eq!(exists.iter().filter(|e| **e).count(), 11);
    assert_eq!(img.read(10 << 16, 100).unwrap()[..10], [1u8; 10]);
    // Growing again shows zeros where the removed data was, not the old bytes.
    img.resize(200 << 16, |_, _| {}).unwrap();
    assert_eq!(img.read(100 << 16, 10).unwrap(), vec![0u8; 10]);
    assert_eq!(img.read((10 << 16) + 100, 16).unwrap(), vec![0u8; 16]);
    store.umount().unwrap();
}

#[test]
fn bad_requests_are_errors() {
    let store = store();
    image::create(&store, "a", 1 << 20, 22, features::DEFAULT).unwrap();
    let e = image::create(&store, "a", 1 << 20, 22, features::DEFAULT).unwrap_err();
    assert!(matches!(e, ImageError::Exists { .. }), "{e}");
    let e = image::create(&store, "b", 1 << 20, 40, features::DEFAULT).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let shared_with_map = features::SHARED | features::OBJECT_MAP;
    assert!(image::create(&store, "c", 1 << 20, 22, shared_with_map).is_err());
    assert!(image::create(&store, "", 1 << 20, 22, features::DEFAULT).is_err());
    assert!(image::create(&store, "x/y", 1 << 20, 22, features::DEFAULT).is_err());
    assert!(matches!(
        Image::open(&store, "missing"),
        Err(ImageError::NoSuchImage { .. })
    ));
    let mut img = Image::open(&store, "a").unwrap();
    for (off, len) in [(1 << 20, 1), ((1 << 20) - 1, 2), (u64::MAX, 2)] {
        let e = img.read(off, len).unwrap_err();
        assert!(matches!(e, ImageError::Beyond { .. }), "{e}");
        assert!(img.discard(off, len).is_err());
    }
    assert!(img.write((1 << 20) - 1, b"ab").is_err());
    assert!(image::remove(&store, "missing").is_err());
    store.umount().unwrap();
}

/// The asynchronous forms (what the NBD server uses): many writes in flight, reads queued behind
/// them see them, every callback comes.
#[test]
fn queued_writes_and_reads_agree_with_the_model() {
    let store = store();
    image::create(&store, "async", 4 << 20, 14, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "async").unwrap();
    let mut model = vec![0u8; 4 << 20];
    let mut rng = Rng::new(5);
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..200u64 {
        let len = 1 + rng.below(50_000);
        let off = rng.below((4 << 20) - len + 1);
        if i % 3 == 2 {
            let tx = tx.clone();
            let want = model[off as usize..(off + len) as usize].to_vec();
            img.read_async(off, len, move |r| {
                tx.send((i, r.map(|got| got == want).unwrap_or(false)))
                    .unwrap();
            })
            .unwrap();
        } else {
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
            let tx = tx.clone();
            img.write_async(off, &data, move |r| tx.send((i, r.is_ok())).unwrap())
                .unwrap();
        }
    }
    drop(tx);
    let results: Vec<(u64, bool)> = rx.iter().collect();
    assert_eq!(results.len(), 200, "every callback comes");
    assert!(results.iter().all(|(_, ok)| *ok), "{results:?}");
    assert!(img.read(0, 4 << 20).unwrap() == model);
    check_map_agrees(&store, &img, "after queued writes");
    store.umount().unwrap();
}
