//! What each I/O of a device job is: direction, offset and length, as fio's options define them.
//!
//! The engine asks [`IoPattern::next_io`] once per command; everything fio lets a job file say about
//! where and how big (`rw` with its `:N` modifier and `rw_sequencer`, `bs` per direction,
//! `bsrange`, `bssplit`, `blockalign`, `random_distribution`, `percentage_random`,
//! `zonemode=strided`) is decided here, so it can be tested without a device and recorded by
//! `write_iolog` exactly as issued. The fixed-size uniform case — the one benchmarks of queue
//! pairs use — costs one branch more than before.
//!
//! Semantics follow fio 3.33's documentation (HOWTO) and, where it is silent, its source:
//! - sequential positions are kept per direction; a `:N` skip is added from the second I/O on,
//!   and a position past either end wraps (to the start for forward skips, to the end for
//!   backward ones — `rw=read:-8k` reads backwards);
//! - `bsrange` draws the smallest size plus a uniform share of the largest, aligned down to the
//!   smallest and capped at the largest, as fio does; `bssplit` draws by weight (blank weights share what is left);
//! - random offsets are multiples of `blockalign` (default: the smallest block size);
//! - `zipf`, `pareto` and `normal` draw a block index as fio's generators do (Gray et al.'s zipf,
//!   a power of a uniform for pareto, a sum of twelve uniforms for normal) and scatter it over the
//!   range with a seeded bijection (fio hashes it): which blocks are hot differs from fio, how hot
//!   they are does not; `zoned`/`zoned_abs` pick a zone by its share of accesses, then a uniform
//!   offset inside it.

use super::offsets::{OffsetGen, Rng, splitmix};
use super::options::{BlockSizes, Distribution, JobSpec, RwMode, Sequencer};

/// [`NextIo::dir`] of a read (the same index as [`crate::engine::READ`]).
pub const READ: usize = 0;
/// [`NextIo::dir`] of a write.
pub const WRITE: usize = 1;
/// [`NextIo::dir`] of a trim.
pub const TRIM: usize = 2;

/// One I/O: direction (0 read, 1 write, 2 trim), absolute byte offset, length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextIo {
    /// [`READ`], [`WRITE`] or [`TRIM`].
    pub dir: usize,
    /// Absolute byte offset on the device.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// How block sizes are chosen for one direction.
#[derive(Clone, Debug)]
enum SizeChooser {
    Fixed(u64),
    Range {
        lo: u64,
        hi: u64,
        align: u64,
    },
    /// Cumulative weights (out of the total) with their sizes.
    Split {
        cumulative: Vec<(u64, u64)>,
        total: u64,
    },
}

impl SizeChooser {
    fn new(sizes: &BlockSizes) -> SizeChooser {
        match sizes {
            BlockSizes::Fixed(bs) => SizeChooser::Fixed(*bs),
            BlockSizes::Range(lo, hi) if lo == hi => SizeChooser::Fixed(*lo),
            BlockSizes::Range(lo, hi) => SizeChooser::Range {
                lo: *lo,
                hi: *hi,
                align: if lo.is_power_of_two() { *lo } else { 1 },
            },
            BlockSizes::Split(parts) => {
                let mut acc = 0;
                let cumulative = parts
                    .iter()
                    .filter(|(_, w)| *w > 0)
                    .map(|&(size, weight)| {
                        acc += weight as u64;
                        (acc, size)
                    })
                    .collect();
                SizeChooser::Split {
                    cumulative,
                    total: acc,
                }
            }
        }
    }

    #[inline]
    fn next(&self, rng: &mut Rng) -> u64 {
        match self {
            SizeChooser::Fixed(bs) => *bs,
            // fio's draw: the smallest size plus a uniform share of the largest, aligned down
            // to the smallest and capped at the largest.
            SizeChooser::Range { lo, hi, align } => {
                let len = lo + (*hi as f64 * unit_f64(rng)) as u64;
                let len = if *align > 1 {
                    len / align * align
                } else {
                    len - len % lo
                };
                len.clamp(*lo, *hi)
            }
            SizeChooser::Split { cumulative, total } => {
                let r = rng.below(*total);
                cumulative
                    .iter()
                    .find(|(acc, _)| r < *acc)
                    .map_or(cumulative[cumulative.len() - 1].1, |&(_, size)| size)
            }
        }
    }
}

/// fio's skewed distributions over `0..n` block indices, before scattering.
#[derive(Clone, Debug)]
enum Skew {
    Zipf {
        theta: f64,
        zetan: f64,
        alpha: f64,
        eta: f64,
    },
    Pareto {
        power: f64,
    },
    Normal {
        deviation: u64,
    },
    /// Zones as (cumulative access percent, first index, index count).
    Zoned(Vec<(u32, u64, u64)>),
}

/// The largest range over which zipf's normaliser is summed exactly (fio caps it the same way:
/// past ten million terms the sum changes too little to matter).
const ZIPF_TERMS: u64 = 10_000_000;

#[inline]
fn unit_f64(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl Skew {
    fn new(dist: &Distribution, n: u64, align: u64) -> Option<Skew> {
        let nf = n as f64;
        Some(match dist {
            Distribution::Random => return None,
            Distribution::Zipf(theta) => {
                let zetan: f64 = (1..=n.min(ZIPF_TERMS))
                    .map(|i| (1.0 / i as f64).powf(*theta))
                    .sum();
                let zeta2 = 1.0 + 0.5f64.powf(*theta);
                let alpha = 1.0 / (1.0 - theta);
                let eta = (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
                Skew::Zipf {
                    theta: *theta,
                    zetan,
                    alpha,
                    eta,
                }
            }
            Distribution::Pareto(h) => Skew::Pareto {
                power: h.ln() / (1.0 - h).ln(),
            },
            Distribution::Normal(percent) => Skew::Normal {
                deviation: ((nf * percent / 100.0).ceil() as u64).min(n / 2),
            },
            Distribution::Zoned(zones) => {
                let mut out = Vec::new();
                let (mut access, mut first) = (0u32, 0u64);
                for &(access_pct, range_pct) in zones {
                    access += access_pct;
                    let count =
                        ((n as f64 * range_pct / 100.0) as u64).clamp(1, n - first.min(n - 1));
                    out.push((access, first.min(n - 1), count));
                    first += count;
                }
                Skew::Zoned(out)
            }
            Distribution::ZonedAbs(zones) => {
                let mut out = Vec::new();
                let (mut access, mut first) = (0u32, 0u64);
                for &(access_pct, bytes) in zones {
                    access += access_pct;
                    let count = (bytes / align).clamp(1, n - first.min(n - 1));
                    out.push((access, first.min(n - 1), count));
                    first += count;
                }
                Skew::Zoned(out)
            }
        })
    }

    /// A block index in `0..n`, not yet scattered (0 is the hottest for zipf/pareto).
    fn draw(&self, n: u64, rng: &mut Rng) -> u64 {
        match self {
            Skew::Zipf {
                theta,
                zetan,
                alpha,
                eta,
            } => {
                let u = unit_f64(rng);
                let z = u * zetan;
                let rank = if z < 1.0 {
                    0
                } else if z < 1.0 + 0.5f64.powf(*theta) {
                    1
                } else {
                    ((n as f64) * (eta * u - eta + 1.0).powf(*alpha)) as u64
                };
                rank.min(n - 1)
            }
            Skew::Pareto { power } => (((n - 1) as f64) * unit_f64(rng).powf(*power)) as u64,
            Skew::Normal { deviation } => {
                let sum: u64 = (0..12).map(|_| rng.below(n + 1)).sum();
                let mut centre = sum.div_ceil(12);
                if *deviation > 0 {
                    let mut dev = rng.below(*deviation) as i64 - (*deviation / 2) as i64;
                    while centre as i64 + dev >= n as i64 {
                        dev /= 2;
                    }
                    centre = (centre as i64 + dev).max(0) as u64;
                }
                centre.min(n - 1)
            }
            Skew::Zoned(zones) => {
                let v = rng.below(100) as u32;
                let (_, first, count) = zones
                    .iter()
                    .find(|(acc, _, _)| v < *acc)
                    .copied()
                    .unwrap_or(zones[zones.len() - 1]);
                first + rng.below(count)
            }
        }
    }

    /// Whether indices are scattered after drawing: zoned picks real regions, the others rank.
    fn scatters(&self) -> bool {
        !matches!(self, Skew::Zoned(_))
    }
}

/// A seeded permutation of `0..n` (cycle-walking a bijection on the next power of two), used to
/// scatter ranked indices so the hot blocks are not all at the start of the range.
#[derive(Clone, Debug)]
struct Scatter {
    n: u64,
    mask: u64,
    keys: [u64; 2],
}

impl Scatter {
    fn new(n: u64, seed: u64) -> Scatter {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        Scatter {
            n,
            mask: if bits >= 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            },
            keys: [splitmix(seed) | 1, splitmix(seed ^ 0x5ca7)],
        }
    }

    fn apply(&self, mut x: u64) -> u64 {
        loop {
            x = (x.wrapping_mul(self.keys[0]) ^ self.keys[1]) & self.mask;
            x ^= x >> (self.mask.count_ones() / 2).max(1);
            x &= self.mask;
            if x < self.n {
                return x;
            }
        }
    }
}

/// The first clear bit at or after `from` in `0..units`, wrapping to the start.
fn next_clear(bits: &[u64], from: u64, units: u64) -> Option<u64> {
    let scan = |lo: u64, hi: u64| {
        let mut u = lo;
        while u < hi {
            let word = bits[(u / 64) as usize] | ((1u64 << (u % 64)) - 1);
            if word != u64::MAX {
                let found = (u / 64) * 64 + (!word).trailing_zeros() as u64;
                return (found < hi).then_some(found);
            }
            u = (u / 64 + 1) * 64;
        }
        None
    };
    scan(from, units).or_else(|| scan(0, from))
}

/// Where one direction's sequential stream stands.
#[derive(Clone, Copy, Debug, Default)]
struct SeqPos {
    /// Relative offset of the next I/O.
    next: u64,
    started: bool,
}

/// What a random draw follows between fresh offsets (`rw=randread:N`).
#[derive(Clone, Copy, Debug, Default)]
struct Repeat {
    left: u32,
    offset: u64,
    len: u64,
}

/// Generates a device job's I/Os.
#[derive(Clone, Debug)]
pub struct IoPattern {
    mode: RwMode,
    rwmixread: u64,
    range_start: u64,
    range_len: u64,
    sizes: [SizeChooser; 3],
    max_len: u64,
    fixed_len: Option<u64>,
    align: u64,
    /// Random offsets in units of `align` over the range (the random map, or uniform).
    offsets: OffsetGen,
    skew: Option<Skew>,
    scatter: Option<Scatter>,
    percentage_random: u64,
    /// `:N` of rw: bytes added between sequential I/Os, or I/Os per random offset.
    modifier: i64,
    sequencer: Sequencer,
    seq: [SeqPos; 3],
    repeat: Repeat,
    /// `zonemode=strided`: zone length, distance from one zone start to the next, and where the
    /// current zone starts and how much of it is done.
    zone: Option<(u64, u64)>,
    zone_start: u64,
    zone_done: u64,
    /// trimwrite: the write that follows the trim just issued.
    trimmed: Option<(u64, u64)>,
    /// With the random map and several block sizes: the `align` units this pass touched, and
    /// how many draws the pass has left. fio shortens an I/O that would run into touched units,
    /// so each unit is still touched once per pass.
    touched: Option<(Vec<u64>, u64)>,
    /// Fixed length, random map or uniform, nothing else: the case queue-pair benchmarks run,
    /// kept to a few instructions.
    plain_random: bool,
    rng: Rng,
}

impl IoPattern {
    /// `range_start`/`range_len`: the job's bytes on the device; `seed`: the job's random seed.
    pub fn new(
        spec: &JobSpec,
        range_start: u64,
        range_len: u64,
        seed: u64,
    ) -> Result<IoPattern, String> {
        let sizes = [0, 1, 2].map(|d| SizeChooser::new(&spec.block_sizes[d]));
        let max_len = spec.max_bs();
        let min_len = spec.min_bs();
        if max_len > range_len {
            return Err(format!(
                "block size {max_len} is larger than the job's range ({range_len} bytes)"
            ));
        }
        let align = spec.blockalign.unwrap_or(min_len).max(1);
        let random_map = !spec.norandommap
            && spec.blockalign.is_none()
            && spec.random_distribution == Distribution::Random;
        let shortens = random_map && !spec.fixed_bs();
        let units = if shortens {
            (range_len / align).max(1)
        } else {
            (range_len.saturating_sub(max_len) / align + 1).max(1)
        };
        let offsets = OffsetGen::random(units, seed, random_map);
        let skew = Skew::new(&spec.random_distribution, units, align);
        let scatter = skew
            .as_ref()
            .filter(|s| s.scatters())
            .map(|_| Scatter::new(units, seed ^ 0x2a));
        let zone = match spec.zonemode_strided {
            Some((size, range, skip)) => {
                let size = size.clamp(max_len, range_len);
                let stride = range.max(size) + skip;
                Some((size, stride))
            }
            None => None,
        };
        let fixed_len = match sizes {
            [
                SizeChooser::Fixed(a),
                SizeChooser::Fixed(b),
                SizeChooser::Fixed(c),
            ] if a == b && b == c => Some(a),
            _ => None,
        };
        Ok(IoPattern {
            mode: spec.rw,
            rwmixread: spec.rwmixread as u64,
            range_start,
            range_len,
            sizes,
            max_len,
            fixed_len,
            align,
            offsets,
            skew,
            scatter,
            percentage_random: spec.percentage_random as u64,
            modifier: spec.rw_modifier,
            sequencer: spec.rw_sequencer,
            seq: Default::default(),
            repeat: Repeat::default(),
            zone,
            zone_start: 0,
            zone_done: 0,
            trimmed: None,
            touched: shortens.then(|| (vec![0u64; units.div_ceil(64) as usize], units)),
            plain_random: spec.rw.is_random()
                && fixed_len.is_some()
                && spec.random_distribution == Distribution::Random
                && spec.zonemode_strided.is_none()
                && spec.percentage_random >= 100
                && spec.rw_modifier <= 1
                && !matches!(spec.rw, RwMode::RandTrimWrite),
            rng: Rng::new(seed ^ 0x5eed),
        })
    }

    /// The largest I/O this pattern issues (buffers are this big).
    pub fn max_len(&self) -> u64 {
        self.max_len
    }

    /// Bytes a sequential job skips after each I/O (`rw=write:8k`), which count toward its size
    /// as fio counts them: a pass with holes ends at the end of the range.
    pub fn skip_bytes(&self) -> u64 {
        if self.mode.is_random() {
            0
        } else {
            self.modifier.max(0) as u64
        }
    }

    /// The one length every I/O has, if there is one.
    pub fn fixed_len(&self) -> Option<u64> {
        self.fixed_len
    }

    #[inline]
    fn choose_direction(&mut self) -> usize {
        match self.mode {
            RwMode::Read | RwMode::RandRead => READ,
            RwMode::Write | RwMode::RandWrite => WRITE,
            RwMode::Trim | RwMode::RandTrim => TRIM,
            RwMode::TrimWrite | RwMode::RandTrimWrite => TRIM,
            RwMode::ReadWrite | RwMode::RandRw => {
                if self.rng.below(100) < self.rwmixread {
                    READ
                } else {
                    WRITE
                }
            }
        }
    }

    /// The next I/O. Lengths never run past the range's end.
    #[inline(always)]
    pub fn next_io(&mut self) -> NextIo {
        if self.plain_random {
            let dir = self.choose_direction();
            let len = self.max_len;
            let unit = self.offsets.next(&mut self.rng);
            return NextIo {
                dir,
                offset: self.range_start + unit * self.align,
                len,
            };
        }
        self.next_shaped()
    }

    fn next_shaped(&mut self) -> NextIo {
        if let Some((offset, len)) = self.trimmed.take() {
            return NextIo {
                dir: WRITE,
                offset,
                len,
            };
        }
        let dir = self.choose_direction();
        let mut len = self.sizes[dir].next(&mut self.rng);
        let relative = if self.touched.is_some() && self.mode.is_random() && self.zone.is_none() {
            let (offset, free) = self.untouched(len);
            len = free;
            offset
        } else {
            self.relative_offset(dir, len)
        };
        let (zone_base, zone_len) = match self.zone {
            Some((size, stride)) => {
                self.zone_done += len;
                let base = self.zone_start;
                if self.zone_done >= size {
                    self.zone_done = 0;
                    self.zone_start += stride;
                    if self.zone_start + size > self.range_len {
                        self.zone_start = 0;
                    }
                }
                (base, size)
            }
            None => (0, self.range_len),
        };
        let relative = if zone_len < self.range_len {
            zone_base + relative % (zone_len - len + 1).max(1) / self.align * self.align
        } else {
            relative
        };
        let offset = self.range_start + relative.min(self.range_len - len);
        if matches!(self.mode, RwMode::TrimWrite | RwMode::RandTrimWrite) {
            self.trimmed = Some((offset, len));
        }
        NextIo { dir, offset, len }
    }

    fn relative_offset(&mut self, dir: usize, len: u64) -> u64 {
        if self.mode.is_random() {
            if self.repeat.left > 0 {
                self.repeat.left -= 1;
                return match self.sequencer {
                    Sequencer::Identical => self.repeat.offset,
                    Sequencer::Sequential => {
                        let next = self.repeat.offset + self.repeat.len;
                        let next = if next + len > self.range_len { 0 } else { next };
                        self.repeat.offset = next;
                        self.repeat.len = len;
                        next
                    }
                };
            }
            let sequential_now =
                self.percentage_random < 100 && self.rng.below(100) >= self.percentage_random;
            let offset = if sequential_now {
                self.sequential(dir, len)
            } else {
                self.random(len)
            };
            if self.modifier > 1 {
                self.repeat = Repeat {
                    left: self.modifier as u32 - 1,
                    offset,
                    len,
                };
            }
            offset
        } else {
            self.sequential(dir, len)
        }
    }

    /// A random map pass with several block sizes, as fio's: a uniform draw; if that unit was
    /// touched, the next untouched one after it (wrapping); the length is cut to the untouched run
    /// from there (at most `len`). The pass starts over when every unit is touched.
    fn untouched(&mut self, len: u64) -> (u64, u64) {
        let units = self.offsets.units();
        let align = self.align;
        let Some((bits, free)) = &mut self.touched else {
            return (0, len);
        };
        let is_set = |bits: &[u64], u: u64| bits[(u / 64) as usize] & (1 << (u % 64)) != 0;
        if *free == 0 {
            bits.iter_mut().for_each(|w| *w = 0);
            *free = units;
        }
        let mut unit = self.rng.below(units);
        if is_set(bits, unit) {
            unit = next_clear(bits, unit, units).unwrap_or(0);
        }
        let wanted = len.div_ceil(align);
        let mut run = 0;
        while run < wanted && unit + run < units && !is_set(bits, unit + run) {
            bits[((unit + run) / 64) as usize] |= 1 << ((unit + run) % 64);
            run += 1;
        }
        *free -= run;
        (unit * align, (run * align).min(len).max(align.min(len)))
    }

    fn random(&mut self, len: u64) -> u64 {
        let units = self.offsets.units();
        let unit = match &self.skew {
            None => self.offsets.next(&mut self.rng),
            Some(skew) => {
                let drawn = skew.draw(units, &mut self.rng);
                match &self.scatter {
                    Some(s) => s.apply(drawn),
                    None => drawn,
                }
            }
        };
        (unit * self.align).min(self.range_len - len)
    }

    fn sequential(&mut self, dir: usize, len: u64) -> u64 {
        let size = self.range_len;
        let skip = if self.mode.is_random() {
            0
        } else {
            self.modifier
        };
        let pos = &mut self.seq[dir];
        let mut at = pos.next;
        if pos.started && skip != 0 {
            let moved = at as i64 + skip;
            at = if moved < 0 || moved as u64 >= size {
                if skip > 0 {
                    0
                } else {
                    (size as i64 + skip).max(0) as u64
                }
            } else {
                moved as u64
            };
        }
        if at + len > size {
            at = 0;
        }
        pos.started = true;
        pos.next = at + len;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::parse_invocation;

    fn pattern(args: &[&str], range: u64) -> IoPattern {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let inv = parse_invocation(&args).unwrap();
        IoPattern::new(&inv.jobs[0], 0, range, 7).unwrap()
    }

    fn offsets(p: &mut IoPattern, n: usize) -> Vec<(usize, u64, u64)> {
        (0..n)
            .map(|_| {
                let io = p.next_io();
                (io.dir, io.offset, io.len)
            })
            .collect()
    }

    #[test]
    fn backwards_reads_walk_down_from_the_end() {
        let mut p = pattern(&["--name=b", "--rw=read:-8k", "--bs=4k"], 64 << 10);
        let got: Vec<u64> = offsets(&mut p, 5).into_iter().map(|x| x.1).collect();
        assert_eq!(got, vec![0, 56 << 10, 52 << 10, 48 << 10, 44 << 10]);
    }

    #[test]
    fn forward_skips_leave_holes_and_wrap() {
        let mut p = pattern(&["--name=s", "--rw=write:8k", "--bs=4k"], 32 << 10);
        let got: Vec<u64> = offsets(&mut p, 4).into_iter().map(|x| x.1).collect();
        assert_eq!(got, vec![0, 12 << 10, 24 << 10, 0]);
    }

    #[test]
    fn bssplit_follows_its_weights_per_direction() {
        let mut p = pattern(
            &[
                "--name=s",
                "--rw=randrw",
                "--norandommap",
                "--bssplit=4k/10:64k/50:32k/40,8k/100",
            ],
            64 << 20,
        );
        let mut counts = std::collections::HashMap::new();
        for (dir, _, len) in offsets(&mut p, 100_000) {
            *counts.entry((dir, len)).or_insert(0u32) += 1;
        }
        let reads: u32 = [4096, 65536, 32768]
            .iter()
            .map(|l| counts[&(READ, *l)])
            .sum();
        let share = |l: u64| counts[&(READ, l)] as f64 / reads as f64;
        assert!((share(4096) - 0.10).abs() < 0.01, "{counts:?}");
        assert!((share(65536) - 0.50).abs() < 0.01, "{counts:?}");
        assert!((share(32768) - 0.40).abs() < 0.01, "{counts:?}");
        assert_eq!(counts.keys().filter(|(d, _)| *d == WRITE).count(), 1);
        assert!(counts.contains_key(&(WRITE, 8192)));
    }

    /// With the random map, a pass touches every block exactly once: I/Os are cut short rather
    /// than overlap.
    #[test]
    fn random_map_with_several_sizes_touches_each_block_once_per_pass() {
        let range = 16u64 << 20;
        let mut p = pattern(
            &["--name=s", "--rw=randread", "--bssplit=4k/50:64k/50"],
            range,
        );
        let mut seen = vec![0u8; (range / 4096) as usize];
        let mut covered = 0;
        while covered < range {
            let (_, offset, len) = offsets(&mut p, 1)[0];
            for block in offset / 4096..(offset + len) / 4096 {
                seen[block as usize] += 1;
            }
            covered += len;
        }
        assert_eq!(covered, range);
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn bsrange_stays_in_range_and_aligned() {
        let mut p = pattern(&["--name=s", "--rw=randread", "--bsrange=4k-32k"], 64 << 20);
        for (_, offset, len) in offsets(&mut p, 10_000) {
            assert!((4096..=32768).contains(&len) && len % 4096 == 0, "{len}");
            assert!(offset + len <= 64 << 20);
        }
    }

    #[test]
    fn zoned_sends_accesses_to_their_zones() {
        let range = 100 << 20;
        let mut p = pattern(
            &[
                "--name=z",
                "--rw=randread",
                "--norandommap",
                "--random_distribution=zoned:50/5:30/15:20/80",
            ],
            range,
        );
        let (mut a, mut b, mut c) = (0, 0, 0);
        for (_, offset, _) in offsets(&mut p, 100_000) {
            let pct = offset as f64 / range as f64 * 100.0;
            if pct < 5.0 {
                a += 1
            } else if pct < 20.0 {
                b += 1
            } else {
                c += 1
            }
        }
        assert!((a as f64 / 1000.0 - 50.0).abs() < 1.5, "{a} {b} {c}");
        assert!((b as f64 / 1000.0 - 30.0).abs() < 1.5, "{a} {b} {c}");
        assert!((c as f64 / 1000.0 - 20.0).abs() < 1.5, "{a} {b} {c}");
    }

    #[test]
    fn zipf_concentrates_accesses() {
        let mut p = pattern(
            &[
                "--name=z",
                "--rw=randread",
                "--random_distribution=zipf:1.2",
            ],
            256 << 20,
        );
        let mut hits = std::collections::HashMap::new();
        for (_, offset, _) in offsets(&mut p, 100_000) {
            *hits.entry(offset).or_insert(0u32) += 1;
        }
        let mut counts: Vec<u32> = hits.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top: u32 = counts.iter().take(counts.len() / 100).sum();
        // With theta 1.2 the hottest 1% of touched blocks take most accesses.
        assert!(top > 50_000, "top 1% took {top}");
    }

    #[test]
    fn trimwrite_trims_then_writes_the_same_block() {
        let mut p = pattern(&["--name=t", "--rw=trimwrite", "--bs=8k"], 1 << 20);
        let got = offsets(&mut p, 4);
        assert_eq!(
            got,
            vec![
                (TRIM, 0, 8192),
                (WRITE, 0, 8192),
                (TRIM, 8192, 8192),
                (WRITE, 8192, 8192)
            ]
        );
    }

    #[test]
    fn random_with_a_modifier_repeats_or_runs_on() {
        let mut p = pattern(&["--name=r", "--rw=randread:4", "--bs=4k"], 64 << 20);
        let got: Vec<u64> = offsets(&mut p, 8).into_iter().map(|x| x.1).collect();
        for run in got.chunks(4) {
            assert_eq!(run[1], run[0] + 4096, "{got:?}");
            assert_eq!(run[3], run[2] + 4096, "{got:?}");
        }
        let mut p = pattern(
            &[
                "--name=r",
                "--rw=randread:3",
                "--rw_sequencer=identical",
                "--bs=4k",
            ],
            64 << 20,
        );
        let got: Vec<u64> = offsets(&mut p, 6).into_iter().map(|x| x.1).collect();
        assert_eq!(got[0], got[2]);
        assert_eq!(got[3], got[5]);
    }
}
