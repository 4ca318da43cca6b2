//! Where each I/O of a job goes.
//!
//! Random jobs by default touch every block once per pass in a shuffled order (fio's random
//! map). Rather than a bitmap of visited blocks we walk a counter through a seeded bijection on
//! the next power of two and skip values past the end: no memory, a different order per pass,
//! and at most two steps per offset on average. `norandommap` draws blocks uniformly instead.

pub use bluepoll_base::rand::{Rng, splitmix};

/// A seeded bijection on `0..2^bits`: each step (xor, odd multiply, xorshift) is invertible
/// modulo 2^bits, so the composition permutes the range.
#[derive(Clone, Debug)]
struct Shuffle {
    mask: u64,
    shift: u32,
    keys: [u64; 3],
}

impl Shuffle {
    fn new(bits: u32, seed: u64) -> Shuffle {
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Shuffle {
            mask,
            shift: (bits / 2).max(1),
            keys: [
                splitmix(seed),
                splitmix(seed ^ 1) | 1,
                splitmix(seed ^ 2) | 1,
            ],
        }
    }

    #[inline]
    fn apply(&self, mut x: u64) -> u64 {
        x = (x ^ self.keys[0]) & self.mask;
        x = x.wrapping_mul(self.keys[1]) & self.mask;
        x ^= x >> self.shift;
        x = x.wrapping_mul(self.keys[2]) & self.mask;
        x ^= x >> self.shift;
        x
    }
}

#[derive(Clone, Debug)]
enum Order {
    Sequential {
        next: u64,
    },
    Shuffled {
        shuffle: Shuffle,
        counter: u64,
        pass: u64,
        seed: u64,
        bits: u32,
    },
    Uniform,
}

/// Yields unit indices in `0..units`; the caller turns them into byte offsets.
#[derive(Clone, Debug)]
pub struct OffsetGen {
    units: u64,
    order: Order,
}

impl OffsetGen {
    /// Units in order, `0, 1, …, units - 1`, then from 0 again (at least one unit).
    pub fn sequential(units: u64) -> OffsetGen {
        OffsetGen {
            units: units.max(1),
            order: Order::Sequential { next: 0 },
        }
    }

    /// Random units from `seed`: with `random_map`, every unit once per pass in a shuffled
    /// order (a new order each pass); without it (`norandommap`), each drawn uniformly.
    pub fn random(units: u64, seed: u64, random_map: bool) -> OffsetGen {
        let units = units.max(1);
        if !random_map {
            return OffsetGen {
                units,
                order: Order::Uniform,
            };
        }
        let bits = 64 - (units - 1).leading_zeros();
        OffsetGen {
            units,
            order: Order::Shuffled {
                shuffle: Shuffle::new(bits, seed),
                counter: 0,
                pass: 0,
                seed,
                bits,
            },
        }
    }

    /// How many units indices are drawn from (at least 1).
    pub fn units(&self) -> u64 {
        self.units
    }

    /// The next unit index; `rng` is drawn from only by the uniform order.
    #[inline(always)]
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        match &mut self.order {
            Order::Sequential { next } => {
                let unit = *next;
                *next = if unit + 1 == self.units { 0 } else { unit + 1 };
                unit
            }
            Order::Uniform => rng.below(self.units),
            Order::Shuffled {
                shuffle,
                counter,
                pass,
                seed,
                bits,
            } => loop {
                if *counter > shuffle.mask {
                    *counter = 0;
                    *pass += 1;
                    *shuffle = Shuffle::new(
                        *bits,
                        splitmix(*seed ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    );
                }
                let unit = shuffle.apply(*counter);
                *counter += 1;
                if unit < self.units {
                    return unit;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_map_visits_every_unit_once_per_pass() {
        for units in [1u64, 2, 3, 7, 1000, 65536, 100_003] {
            let mut offsets = OffsetGen::random(units, 42, true);
            let mut rng = Rng::new(1);
            let mut seen = vec![0u8; units as usize];
            for _ in 0..units {
                seen[offsets.next(&mut rng) as usize] += 1;
            }
            assert!(seen.iter().all(|&n| n == 1), "units={units}");
            // The next pass is again a permutation, in another order.
            let second: Vec<u64> = (0..units).map(|_| offsets.next(&mut rng)).collect();
            let mut sorted = second.clone();
            sorted.sort();
            assert_eq!(sorted, (0..units).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shuffled_order_is_not_sequential_and_depends_on_the_seed() {
        let take = |seed| {
            let mut offsets = OffsetGen::random(65536, seed, true);
            let mut rng = Rng::new(0);
            (0..64).map(|_| offsets.next(&mut rng)).collect::<Vec<_>>()
        };
        let a = take(1);
        assert_ne!(a, take(2));
        assert_eq!(a, take(1));
        let ascending = a.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(ascending < 4, "{a:?}");
    }

    #[test]
    fn sequential_wraps_and_uniform_stays_in_range() {
        let mut offsets = OffsetGen::sequential(3);
        let mut rng = Rng::new(0);
        assert_eq!(
            (0..7).map(|_| offsets.next(&mut rng)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2, 0]
        );
        let mut offsets = OffsetGen::random(10, 0, false);
        let mut hist = [0u32; 10];
        for _ in 0..100_000 {
            hist[offsets.next(&mut rng) as usize] += 1;
        }
        assert!(hist.iter().all(|&n| (9000..11000).contains(&n)), "{hist:?}");
    }
}
