use super::*;
use proptest::prelude::*;

const K: u64 = 4096;

fn ext(offset: u64, length: u64) -> Extent {
    Extent {
        device: DeviceId::Db,
        offset,
        length,
    }
}

/// Units → extent on the DB device, for allocators with a 4 KiB unit.
fn u(offset: u64, length: u64) -> Extent {
    ext(offset * K, length * K)
}

/// The internal invariants every public operation must preserve.
fn check_invariants(a: &ExtentAllocator) {
    let mut total = 0;
    let mut previous_end = None;
    for (&offset, &length) in &a.by_offset {
        assert!(length > 0, "empty run at {offset}");
        assert_eq!(offset % a.unit, 0);
        assert_eq!(length % a.unit, 0);
        assert!(offset >= a.reserved_end);
        assert!(offset + length <= a.end());
        if let Some(end) = previous_end {
            assert!(offset > end, "runs touch or overlap at {offset}");
        }
        previous_end = Some(offset + length);
        assert!(a.by_size.contains(&(length, offset)));
        total += length;
    }
    assert_eq!(a.by_size.len(), a.by_offset.len());
    assert_eq!(total, a.free);
}

fn db(units: u64) -> ExtentAllocator {
    ExtentAllocator::new(DeviceId::Db, units * K, K, 0)
}

/// An allocator whose free runs are exactly `runs` (in units), everything else used.
fn with_free_runs(units: u64, runs: &[(u64, u64)]) -> ExtentAllocator {
    let mut a = db(units);
    a.mark_used(&[u(0, units)]).unwrap();
    let runs: Vec<Extent> = runs.iter().map(|&(o, l)| u(o, l)).collect();
    a.release(&runs).unwrap();
    check_invariants(&a);
    a
}

#[test]
fn new_frees_everything_past_the_reserved_prefix() {
    let a = ExtentAllocator::new(DeviceId::Db, 256 * K + 100, K, 5000);
    assert_eq!(a.device(), DeviceId::Db);
    assert_eq!(a.unit(), K);
    assert_eq!(a.size(), 256 * K + 100);
    assert_eq!(a.free_extents(), vec![ext(2 * K, 254 * K)]);
    assert_eq!(a.free_bytes(), 254 * K);
    check_invariants(&a);
}

#[test]
fn bad_units_are_clamped_up_to_a_power_of_two() {
    let unit = |unit| ExtentAllocator::new(DeviceId::Wal, 1 << 30, unit, 0).unit();
    assert_eq!(unit(0), 4096);
    assert_eq!(unit(1000), 4096);
    assert_eq!(unit(5000), 8192);
    assert_eq!(unit(65536), 65536);
    assert_eq!(unit(u64::MAX), 1 << 63);
}

#[test]
fn tiny_and_huge_devices_do_not_panic() {
    // Smaller than the reserved prefix, smaller than a unit, empty.
    for (size, reserved) in [(8 * K, 16 * K), (100, 0), (0, 0), (0, u64::MAX)] {
        let mut a = ExtentAllocator::new(DeviceId::Wal, size, K, reserved);
        assert_eq!(a.free_bytes(), 0);
        assert!(matches!(a.allocate(1), Err(AllocError::NoSpace { .. })));
        check_invariants(&a);
    }
    let mut a = ExtentAllocator::new(DeviceId::Slow, u64::MAX, 1 << 20, u64::MAX - 5);
    assert_eq!(a.free_bytes(), 0);
    let mut a2 = ExtentAllocator::new(DeviceId::Slow, u64::MAX, 1 << 20, 0);
    assert_eq!(a2.free_bytes(), u64::MAX - ((1 << 20) - 1));
    assert_eq!(
        a2.allocate(u64::MAX),
        Err(AllocError::NoSpace {
            device: DeviceId::Slow,
            wanted: u64::MAX,
            free: a2.free_bytes()
        })
    );
    let big = a2.allocate(u64::MAX - (1 << 21)).unwrap();
    assert_eq!(big.len(), 1);
    let wild = Extent {
        device: DeviceId::Slow,
        offset: u64::MAX - ((1 << 20) - 1),
        length: 1 << 20,
    };
    assert!(matches!(
        a2.release(&[wild]),
        Err(AllocError::OutOfRange { .. })
    ));
    assert!(matches!(
        a.mark_used(&[wild]),
        Err(AllocError::OutOfRange { .. })
    ));
    a2.release(&big).unwrap();
    assert_eq!(a2.free_extents().len(), 1);
    assert!(a.grow(u64::MAX).is_ok());
    check_invariants(&a);
    check_invariants(&a2);
}

#[test]
fn allocate_release_and_merge() {
    let mut a = db(16);
    let x = a.allocate(4 * K).unwrap();
    let y = a.allocate(4 * K).unwrap();
    let z = a.allocate(4 * K).unwrap();
    assert_eq!((x[0], y[0], z[0]), (u(0, 4), u(4, 4), u(8, 4)));
    assert_eq!(a.free_extents(), vec![u(12, 4)]);
    a.release(&y).unwrap();
    assert_eq!(a.free_extents(), vec![u(4, 4), u(12, 4)]);
    // Merges with the run after it...
    a.release(&z).unwrap();
    assert_eq!(a.free_extents(), vec![u(4, 12)]);
    // ...and the one before it.
    a.release(&x).unwrap();
    assert_eq!(a.free_extents(), vec![u(0, 16)]);
    assert_eq!(a.free_bytes(), 16 * K);
    check_invariants(&a);
}

#[test]
fn requests_round_up_to_the_unit() {
    let mut a = db(16);
    assert_eq!(a.allocate(1).unwrap(), vec![u(0, 1)]);
    assert_eq!(a.allocate(K + 1).unwrap(), vec![u(1, 2)]);
    assert_eq!(a.free_bytes(), 13 * K);
    let mut big = ExtentAllocator::new(DeviceId::Slow, 1 << 30, 1 << 16, 0);
    let got = big.allocate((1 << 16) + 1).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].length, 1 << 17);
}

#[test]
fn zero_bytes_is_no_extents() {
    let mut a = db(4);
    assert_eq!(a.allocate(0), Ok(vec![]));
    a.mark_used(&[u(0, 4)]).unwrap();
    assert_eq!(a.allocate(0), Ok(vec![]));
    assert_eq!(a.allocate_keeping(0, 1 << 40), Ok(vec![]));
}

#[test]
fn reserved_prefix_is_never_handed_out_or_accepted() {
    let mut a = ExtentAllocator::new(DeviceId::Db, 64 * K, K, 2 * K + 1);
    assert_eq!(a.free_bytes(), 61 * K);
    let all = a.allocate(61 * K).unwrap();
    assert!(all.iter().all(|e| e.offset >= 3 * K));
    assert_eq!(
        a.allocate(1),
        Err(AllocError::NoSpace {
            device: DeviceId::Db,
            wanted: K,
            free: 0
        })
    );
    // The prefix is neither free nor allocated.
    assert_eq!(
        a.release(&[u(2, 1)]),
        Err(AllocError::NotAllocated { extent: u(2, 1) })
    );
    a.release(&all).unwrap();
    assert_eq!(
        a.mark_used(&[u(0, 1)]),
        Err(AllocError::NotFree { extent: u(0, 1) })
    );
    assert_eq!(
        a.mark_used(&[u(2, 2)]),
        Err(AllocError::NotFree { extent: u(2, 2) })
    );
    assert_eq!(a.free_extents(), vec![u(3, 61)]);
    check_invariants(&a);
}

#[test]
fn no_space_leaves_the_allocator_unchanged() {
    let mut a = with_free_runs(32, &[(1, 2), (5, 3), (20, 4)]);
    let before = a.free_extents();
    assert_eq!(
        a.allocate(10 * K),
        Err(AllocError::NoSpace {
            device: DeviceId::Db,
            wanted: 10 * K,
            free: 9 * K
        })
    );
    assert_eq!(a.free_extents(), before);
    assert_eq!(a.free_bytes(), 9 * K);
    // Exactly all of it is fine, in three pieces.
    assert_eq!(a.allocate(9 * K).unwrap().len(), 3);
    assert_eq!(a.free_bytes(), 0);
}

#[test]
fn single_extent_is_best_fit_lowest_offset() {
    let mut a = with_free_runs(64, &[(0, 5), (10, 2), (20, 3), (30, 2), (40, 8)]);
    assert_eq!(a.allocate(2 * K).unwrap(), vec![u(10, 2)]);
    assert_eq!(a.allocate(2 * K).unwrap(), vec![u(30, 2)]);
    assert_eq!(a.allocate(K).unwrap(), vec![u(20, 1)]);
    assert_eq!(a.allocate(4 * K).unwrap(), vec![u(0, 4)]);
    assert_eq!(a.allocate(6 * K).unwrap(), vec![u(40, 6)]);
    check_invariants(&a);
}

#[test]
fn fragmented_space_gives_the_fewest_pieces() {
    let mut a = with_free_runs(64, &[(0, 1), (4, 3), (10, 4), (20, 2), (30, 4), (40, 1)]);
    // 10 units: the two 4-unit runs (largest first), then the best fit for the last 2.
    let got = a.allocate(10 * K).unwrap();
    assert_eq!(got, vec![u(10, 4), u(20, 2), u(30, 4)]);
    assert_eq!(a.free_extents(), vec![u(0, 1), u(4, 3), u(40, 1)]);
    // 4 units from runs of 1, 3, 1: two pieces, the 3 then a 1 (lowest offset).
    let got = a.allocate(4 * K).unwrap();
    assert_eq!(got, vec![u(0, 1), u(4, 3)]);
    assert_eq!(a.free_extents(), vec![u(40, 1)]);
    check_invariants(&a);
}

#[test]
fn allocate_keeping_honours_the_reserve() {
    let mut a = db(16);
    let err = a.allocate_keeping(13 * K, 4 * K);
    assert_eq!(
        err,
        Err(AllocError::NoSpace {
            device: DeviceId::Db,
            wanted: 13 * K,
            free: 12 * K
        })
    );
    assert_eq!(a.free_bytes(), 16 * K);
    a.allocate_keeping(12 * K, 4 * K).unwrap();
    assert_eq!(a.free_bytes(), 4 * K);
    assert!(a.allocate_keeping(1, 4 * K).is_err());
    // A reserve larger than the free space refuses everything but nothing.
    assert!(a.allocate_keeping(1, 1 << 40).is_err());
    // The reserve is for the log: plain allocate may use it.
    a.allocate(4 * K).unwrap();
    assert_eq!(a.free_bytes(), 0);
}

#[test]
fn grow_adds_space_and_merges_with_the_tail() {
    let mut a = ExtentAllocator::new(DeviceId::Db, 8 * K + 10, K, 0);
    let first = a.allocate(2 * K).unwrap();
    a.grow(16 * K).unwrap();
    assert_eq!(a.size(), 16 * K);
    assert_eq!(a.free_extents(), vec![u(2, 14)]);
    // Growing a full device.
    a.allocate(14 * K).unwrap();
    a.grow(20 * K + 5).unwrap();
    assert_eq!(a.free_extents(), vec![u(16, 4)]);
    // Growing within the same unit changes the size but adds nothing.
    a.grow(20 * K + 4000).unwrap();
    assert_eq!(a.free_bytes(), 4 * K);
    a.grow(a.size()).unwrap();
    a.release(&first).unwrap();
    assert_eq!(a.free_extents(), vec![u(0, 2), u(16, 4)]);
    check_invariants(&a);
}

#[test]
fn grow_past_the_reserved_prefix() {
    let mut a = ExtentAllocator::new(DeviceId::Wal, 4 * K, K, 8 * K);
    assert_eq!(a.free_bytes(), 0);
    a.grow(6 * K).unwrap();
    assert_eq!(a.free_bytes(), 0);
    a.grow(12 * K).unwrap();
    assert_eq!(
        a.free_extents(),
        vec![Extent {
            device: DeviceId::Wal,
            offset: 8 * K,
            length: 4 * K
        }]
    );
    check_invariants(&a);
}

#[test]
fn shrinking_is_refused() {
    let mut a = db(16);
    assert_eq!(
        a.grow(16 * K - 1),
        Err(AllocError::Shrink {
            device: DeviceId::Db,
            from: 16 * K,
            to: 16 * K - 1
        })
    );
    assert_eq!(a.size(), 16 * K);
    assert_eq!(a.free_bytes(), 16 * K);
}

#[test]
fn double_free_is_detected() {
    let mut a = db(16);
    let x = a.allocate(4 * K).unwrap();
    a.release(&x).unwrap();
    assert_eq!(
        a.release(&x),
        Err(AllocError::NotAllocated { extent: x[0] })
    );
    // Partly free counts too.
    let y = a.allocate(2 * K).unwrap();
    assert_eq!(y, vec![u(0, 2)]);
    assert_eq!(
        a.release(&[u(1, 2)]),
        Err(AllocError::NotAllocated { extent: u(1, 2) })
    );
    assert_eq!(a.free_extents(), vec![u(2, 14)]);
    check_invariants(&a);
}

#[test]
fn overlapping_release_is_all_or_nothing() {
    let mut a = db(16);
    a.allocate(8 * K).unwrap();
    let before = a.free_extents();
    for bad in [
        vec![u(0, 2), u(4, 2), u(5, 2)],
        vec![u(0, 2), u(0, 2)],
        vec![u(2, 4), u(0, 3)],
        vec![u(0, 1), u(7, 2)],
    ] {
        let culprit = *bad.last().unwrap();
        assert_eq!(
            a.release(&bad),
            Err(AllocError::NotAllocated { extent: culprit })
        );
        assert_eq!(a.free_extents(), before, "{bad:?} changed the map");
    }
    // Valid pieces in any order, touching each other: merged into one run.
    a.release(&[u(4, 4), u(0, 2), u(2, 2)]).unwrap();
    assert_eq!(a.free_extents(), vec![u(0, 16)]);
    check_invariants(&a);
}

#[test]
fn mark_used_of_used_space_is_detected() {
    let mut a = db(16);
    a.mark_used(&[u(2, 2), u(8, 4)]).unwrap();
    assert_eq!(a.free_extents(), vec![u(0, 2), u(4, 4), u(12, 4)]);
    let before = a.free_extents();
    for bad in [
        vec![u(0, 1), u(3, 1)],
        vec![u(4, 1), u(1, 2)],
        vec![u(12, 2), u(13, 1)],
        vec![u(12, 2), u(12, 2)],
        vec![u(7, 2)],
    ] {
        let culprit = *bad.last().unwrap();
        assert_eq!(
            a.mark_used(&bad),
            Err(AllocError::NotFree { extent: culprit })
        );
        assert_eq!(a.free_extents(), before, "{bad:?} changed the map");
    }
    a.mark_used(&[u(13, 1), u(0, 2), u(12, 1)]).unwrap();
    assert_eq!(a.free_extents(), vec![u(4, 4), u(14, 2)]);
    check_invariants(&a);
}

#[test]
fn out_of_range_and_misaligned_extents_are_rejected() {
    let mut a = ExtentAllocator::new(DeviceId::Db, 16 * K + 512, K, 0);
    a.allocate(16 * K).unwrap();
    let wal = Extent {
        device: DeviceId::Wal,
        offset: 0,
        length: K,
    };
    for bad in [
        ext(512, K),
        ext(0, 512),
        ext(0, K + 1),
        ext(15 * K, 2 * K),
        ext(16 * K, K),
        ext(u64::MAX - K + 1, K),
        ext(K, u64::MAX - K + 1),
        ext(20 * K, 0),
        wal,
    ] {
        let expected = Err(AllocError::OutOfRange {
            extent: bad,
            size: 16 * K + 512,
            unit: K,
        });
        // Reported even after a valid extent, which is then not released.
        assert_eq!(a.release(&[u(0, 1), bad]), expected);
        assert_eq!(a.mark_used(&[bad]), expected);
        assert_eq!(a.free_bytes(), 0);
    }
    // Empty but in range: ignored.
    a.release(&[u(3, 0), u(16, 0)]).unwrap();
    a.mark_used(&[u(3, 0)]).unwrap();
    assert_eq!(a.free_bytes(), 0);
    check_invariants(&a);
}

#[test]
fn errors_name_the_device() {
    let e = AllocError::NoSpace {
        device: DeviceId::Slow,
        wanted: 8192,
        free: 4096,
    };
    assert_eq!(
        e.to_string(),
        "no space on the slow device: 8192 bytes wanted, 4096 free"
    );
    let e = AllocError::OutOfRange {
        extent: ext(1, 2),
        size: 3,
        unit: 4096,
    };
    assert!(e.to_string().contains("the db device's 3 bytes"));
}

#[test]
fn shared_allocator_clones_share_one_map() {
    let shared = SharedAllocator::new(db(16));
    let store: Arc<dyn SharedSpace> = Arc::new(shared.clone());
    let got = store.allocate(4 * K).unwrap();
    assert_eq!(shared.free_bytes(), 12 * K);
    assert_eq!(shared.with(|a| a.free_extents()), vec![u(4, 12)]);
    assert_eq!(store.device_size(), 16 * K);
    assert_eq!(store.unit(), K);
    assert!(store.mark_used(&got).is_err());
    store.release(&got).unwrap();
    store.mark_used(&got).unwrap();
    store.grow(32 * K).unwrap();
    assert_eq!(shared.free_bytes(), 28 * K);
}

#[test]
fn poisoned_lock_is_still_usable() {
    let shared = SharedAllocator::new(db(16));
    let clone = shared.clone();
    let result = std::thread::spawn(move || {
        clone.with(|a| {
            a.allocate(K).unwrap();
            panic!("poison the lock");
        })
    })
    .join();
    assert!(result.is_err());
    assert_eq!(shared.free_bytes(), 15 * K);
    assert_eq!(shared.allocate(K).unwrap(), vec![u(1, 1)]);
}

#[test]
fn shared_allocator_from_several_threads() {
    const UNITS: u64 = 512;
    let shared = SharedAllocator::new(db(UNITS));
    // One owner flag per unit: taking a unit someone else holds means an overlap.
    let owned: Arc<Vec<std::sync::atomic::AtomicBool>> =
        Arc::new((0..UNITS).map(|_| Default::default()).collect());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let space: Arc<dyn SharedSpace> = Arc::new(shared.clone());
            let owned = Arc::clone(&owned);
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::SeqCst;
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                let mut held: Vec<Vec<Extent>> = Vec::new();
                for _ in 0..2000 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if rng % 3 != 0 || held.is_empty() {
                        match space.allocate((rng >> 8) % (24 * K) + 1) {
                            Ok(extents) => {
                                for e in &extents {
                                    assert_eq!(e.offset % K, 0);
                                    assert!(e.end() <= UNITS * K);
                                    for unit in e.offset / K..e.end() / K {
                                        let was = owned[unit as usize].swap(true, SeqCst);
                                        assert!(!was, "unit {unit} handed out twice");
                                    }
                                }
                                held.push(extents);
                            }
                            Err(AllocError::NoSpace { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        let extents = held.swap_remove((rng >> 8) as usize % held.len());
                        for e in &extents {
                            for unit in e.offset / K..e.end() / K {
                                owned[unit as usize].store(false, SeqCst);
                            }
                        }
                        space.release(&extents).unwrap();
                    }
                }
                for extents in held {
                    for e in &extents {
                        for unit in e.offset / K..e.end() / K {
                            owned[unit as usize].store(false, SeqCst);
                        }
                    }
                    space.release(&extents).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(shared.free_bytes(), UNITS * K);
    assert_eq!(shared.with(|a| a.free_extents()), vec![u(0, UNITS)]);
    shared.with(|a| check_invariants(a));
}

// --- Model-based property test ---

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reserved,
    Free,
    Used,
}

/// One state per unit of the managed range: the obviously-correct allocator.
#[derive(Clone, Debug)]
struct Model {
    unit: u64,
    size: u64,
    reserved_units: u64,
    units: Vec<State>,
}

impl Model {
    fn new(size: u64, unit: u64, reserved: u64) -> Model {
        let mut m = Model {
            unit,
            size: 0,
            reserved_units: reserved.div_ceil(unit),
            units: Vec::new(),
        };
        m.grow_to(size);
        m
    }

    fn grow_to(&mut self, size: u64) {
        self.size = size;
        while (self.units.len() as u64) < size / self.unit {
            let state = if (self.units.len() as u64) < self.reserved_units {
                State::Reserved
            } else {
                State::Free
            };
            self.units.push(state);
        }
    }

    fn free_bytes(&self) -> u64 {
        self.units.iter().filter(|&&s| s == State::Free).count() as u64 * self.unit
    }

    /// Maximal runs of units in `state`, as (first unit, unit count).
    fn runs(&self, state: State) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, &s) in self.units.iter().enumerate() {
            if s != state {
                continue;
            }
            match runs.last_mut() {
                Some((start, len)) if *start + *len == i as u64 => *len += 1,
                _ => runs.push((i as u64, 1)),
            }
        }
        runs
    }

    fn free_extents(&self) -> Vec<Extent> {
        self.runs(State::Free)
            .into_iter()
            .map(|(o, l)| ext(o * self.unit, l * self.unit))
            .collect()
    }

    /// Applies the extents one by one on a copy; the first that fails is the error.
    fn apply(&self, extents: &[Extent], from: State, to: State) -> Result<Model, AllocError> {
        let mut m = self.clone();
        for e in extents {
            let aligned = e.offset % self.unit == 0 && e.length % self.unit == 0;
            let in_range = (e.offset as u128 + e.length as u128)
                <= (self.units.len() as u64 * self.unit) as u128;
            if e.device != DeviceId::Db || !aligned || !in_range {
                return Err(AllocError::OutOfRange {
                    extent: *e,
                    size: self.size,
                    unit: self.unit,
                });
            }
            let first = e.offset / self.unit;
            for i in first..first + e.length / self.unit {
                if m.units[i as usize] != from {
                    return Err(if from == State::Used {
                        AllocError::NotAllocated { extent: *e }
                    } else {
                        AllocError::NotFree { extent: *e }
                    });
                }
                m.units[i as usize] = to;
            }
        }
        Ok(m)
    }
}

#[derive(Clone, Debug)]
struct RawExtent {
    offset_units: u64,
    length_units: u64,
    /// 0: aligned; 1: offset off by 512; 2: length off by 512; 3: another device.
    flaw: u8,
}

#[derive(Clone, Debug)]
enum Op {
    Allocate {
        units: u64,
        under: u64,
        keep_units: u64,
    },
    /// Pieces of currently used runs (possibly the same twice).
    ReleaseUsed(
        Vec<(
            prop::sample::Index,
            prop::sample::Index,
            prop::sample::Index,
        )>,
    ),
    /// Pieces of currently free runs (possibly the same twice).
    MarkFree(
        Vec<(
            prop::sample::Index,
            prop::sample::Index,
            prop::sample::Index,
        )>,
    ),
    Release(Vec<RawExtent>),
    MarkUsed(Vec<RawExtent>),
    Grow {
        units: u64,
        bytes: u64,
    },
    Shrink {
        bytes: u64,
    },
}

fn raw_extent() -> impl Strategy<Value = RawExtent> {
    (
        0u64..72,
        0u64..10,
        prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
    )
        .prop_map(|(offset_units, length_units, flaw)| RawExtent {
            offset_units,
            length_units,
            flaw,
        })
}

fn picks() -> impl Strategy<
    Value = Vec<(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
    )>,
> {
    prop::collection::vec(
        any::<(
            prop::sample::Index,
            prop::sample::Index,
            prop::sample::Index,
        )>(),
        1..4,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..14, 0u64..4096, prop_oneof![3 => Just(0u64), 1 => 1u64..6])
            .prop_map(|(units, under, keep_units)| Op::Allocate { units, under, keep_units }),
        4 => picks().prop_map(Op::ReleaseUsed),
        2 => picks().prop_map(Op::MarkFree),
        1 => prop::collection::vec(raw_extent(), 1..4).prop_map(Op::Release),
        1 => prop::collection::vec(raw_extent(), 1..4).prop_map(Op::MarkUsed),
        1 => (0u64..12, 0u64..70_000).prop_map(|(units, bytes)| Op::Grow { units, bytes }),
        1 => (1u64..70_000).prop_map(|bytes| Op::Shrink { bytes }),
    ]
}

/// Chooses extents inside the runs of `state`: a run, a start in it, a length to its end.
fn pick_extents(
    model: &Model,
    state: State,
    picks: &[(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
    )],
) -> Vec<Extent> {
    let runs = model.runs(state);
    if runs.is_empty() {
        return Vec::new();
    }
    picks
        .iter()
        .map(|(run, start, length)| {
            let (first, count) = *run.get(&runs);
            let skip = start.index(count as usize) as u64;
            let length = length.index((count - skip) as usize) as u64 + 1;
            ext((first + skip) * model.unit, length * model.unit)
        })
        .collect()
}

fn to_extent(raw: &RawExtent, unit: u64) -> Extent {
    let mut e = ext(raw.offset_units * unit, raw.length_units * unit);
    match raw.flaw {
        1 => e.offset += 512,
        2 => e.length += 512,
        3 => e.device = DeviceId::Wal,
        _ => {}
    }
    e
}

/// Releases (or marks used) `extents` in both the allocator and the model, checks that both
/// agree on the outcome, and returns the model afterwards.
fn check_change(
    a: &mut ExtentAllocator,
    model: &Model,
    extents: &[Extent],
    release: bool,
) -> Result<Model, TestCaseError> {
    let (result, expected) = if release {
        (
            a.release(extents),
            model.apply(extents, State::Used, State::Free),
        )
    } else {
        (
            a.mark_used(extents),
            model.apply(extents, State::Free, State::Used),
        )
    };
    match expected {
        Ok(after) => {
            prop_assert_eq!(result, Ok(()));
            Ok(after)
        }
        Err(error) => {
            prop_assert_eq!(result, Err(error));
            Ok(model.clone())
        }
    }
}

fn run_ops(unit: u64, size: u64, reserved: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut a = ExtentAllocator::new(DeviceId::Db, size, unit, reserved);
    let mut model = Model::new(size, unit, reserved);
    for op in ops {
        match op {
            Op::Allocate {
                units,
                under,
                keep_units,
            } => {
                let want = (units * unit).saturating_sub(under % unit);
                let wanted = want.div_ceil(unit) * unit;
                let keep = keep_units * unit;
                let free = model.free_bytes();
                let runs = model.runs(State::Free);
                let result = a.allocate_keeping(want, keep);
                if want == 0 {
                    prop_assert_eq!(result, Ok(vec![]));
                } else if wanted + keep > free {
                    prop_assert_eq!(
                        result,
                        Err(AllocError::NoSpace {
                            device: DeviceId::Db,
                            wanted,
                            free: free.saturating_sub(keep)
                        })
                    );
                } else {
                    let extents = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), wanted);
                    prop_assert!(extents.windows(2).all(|w| w[0].end() <= w[1].offset));
                    // Policy: one best-fit extent when some run is big enough, otherwise
                    // as many pieces as the largest runs need.
                    let need = wanted / unit;
                    let best = runs
                        .iter()
                        .filter(|r| r.1 >= need)
                        .min_by_key(|r| (r.1, r.0));
                    if let Some(&(first, _)) = best {
                        prop_assert_eq!(&extents, &vec![ext(first * unit, wanted)]);
                    } else {
                        let mut lengths: Vec<u64> = runs.iter().map(|r| r.1).collect();
                        lengths.sort_unstable_by(|x, y| y.cmp(x));
                        let mut sum = 0;
                        let pieces = lengths
                            .iter()
                            .take_while(|&&l| {
                                let more = sum < need;
                                sum += l;
                                more
                            })
                            .count();
                        prop_assert_eq!(extents.len(), pieces);
                    }
                    // Aligned, in range, and only space that was free: no overlap with
                    // anything live.
                    model = model
                        .apply(&extents, State::Free, State::Used)
                        .map_err(|e| TestCaseError::fail(format!("handed out {e}")))?;
                }
            }
            Op::ReleaseUsed(picks) => {
                let extents = pick_extents(&model, State::Used, picks);
                model = check_change(&mut a, &model, &extents, true)?;
            }
            Op::MarkFree(picks) => {
                let extents = pick_extents(&model, State::Free, picks);
                model = check_change(&mut a, &model, &extents, false)?;
            }
            Op::Release(raw) => {
                let extents: Vec<Extent> = raw.iter().map(|r| to_extent(r, unit)).collect();
                model = check_change(&mut a, &model, &extents, true)?;
            }
            Op::MarkUsed(raw) => {
                let extents: Vec<Extent> = raw.iter().map(|r| to_extent(r, unit)).collect();
                model = check_change(&mut a, &model, &extents, false)?;
            }
            Op::Grow { units, bytes } => {
                let new_size = model.size + units * unit + bytes;
                prop_assert_eq!(a.grow(new_size), Ok(()));
                model.grow_to(new_size);
            }
            Op::Shrink { bytes } => {
                let to = model.size.saturating_sub(*bytes);
                let expected = if to < model.size {
                    Err(AllocError::Shrink {
                        device: DeviceId::Db,
                        from: model.size,
                        to,
                    })
                } else {
                    Ok(())
                };
                prop_assert_eq!(a.grow(to), expected);
            }
        }
        prop_assert_eq!(a.size(), model.size);
        prop_assert_eq!(a.free_bytes(), model.free_bytes());
        prop_assert_eq!(a.free_extents(), model.free_extents());
        check_invariants(&a);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn allocator_matches_a_unit_bitmap(
        unit in prop::sample::select(vec![4096u64, 8192, 65536]),
        units in 0u64..64,
        tail in 0u64..4096,
        reserved in prop_oneof![2 => Just(0u64), 3 => 0u64..300_000],
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_ops(unit, units * unit + tail, reserved, &ops)?;
    }
}
