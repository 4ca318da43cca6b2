//! `ioengine=image`: jobs on RBD-style images of a bluepoll store, the way fio's rbd engine runs
//! on librbd images.
//!
//! `filename` names the store's devices as for `ioengine=store` (the harness makes and mounts
//! the store the same way, and store jobs on the same `filename` share it). Each job clone gets
//! an image `bench.JOB.CLONE` of `size` bytes (`image_order`, default 22: 4 MiB objects; the
//! default features: object map, exclusive lock, fast-diff), written in full before the first
//! phase unless `image_layout=0` (then reads of unwritten space are answered from the object
//! map), and keeps `iodepth` reads and writes in flight on its own thread through the image's
//! asynchronous calls. A write counts as done when it is durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use anyhow::{Context as _, Result, bail};

use super::engine::{JobProgress, JobResult, READ, RunControl, ThreadRun};
use super::offsets::{OffsetGen, Rng};
use super::options::JobSpec;
use super::stats::Meter;
use bluepoll_base::sys::{Clock, thread_cpu_usage};
use bluepoll_image::{self as image, Image, ImageError, features};
use bluepoll_store::StoreHandle;

/// Most error messages kept per job.
const MAX_MESSAGES: usize = 10;
/// Bytes per request while laying an image out.
const LAYOUT_CHUNK: u64 = 1 << 20;

/// Checks what an image job can do before anything is opened.
pub fn validate(spec: &JobSpec) -> Result<()> {
    let name = &spec.name;
    if spec.filename.is_none() {
        bail!(
            "job '{name}': ioengine=image needs filename= (the store's devices: URI, or \
             slow=URI|db=URI|wal=URI)"
        );
    }
    let Some(size) = spec.size else {
        bail!("job '{name}': ioengine=image needs size= (the bytes of each job's image)");
    };
    if size < spec.bs {
        bail!("job '{name}': size={size} is smaller than bs={}", spec.bs);
    }
    if !(12..=26).contains(&spec.image_order) {
        bail!(
            "job '{name}': image_order={} is outside 12..=26 (4 KiB to 64 MiB objects)",
            spec.image_order
        );
    }
    Ok(())
}

/// The image of a job clone.
pub fn image_name(spec: &JobSpec, clone: u32) -> String {
    format!("bench.{}.{clone}", spec.name)
}

/// Makes the job clone's image (unless it exists with the right size) and, unless
/// `image_layout=0`, writes it in full.
pub fn lay_out(store: &StoreHandle, spec: &JobSpec, clone: u32, seed: u64) -> Result<()> {
    let name = image_name(spec, clone);
    let size = spec.size.unwrap_or(spec.bs);
    let fresh = match Image::open(store, &name) {
        Ok(img) if img.info().size == size => false,
        Ok(img) => bail!(
            "image '{name}' exists with {} bytes, not {size}: remove it or change size=",
            img.info().size
        ),
        Err(ImageError::NoSuchImage { .. }) => {
            image::create(store, &name, size, spec.image_order, features::DEFAULT)?;
            true
        }
        Err(e) => return Err(e.into()),
    };
    if !fresh || !spec.image_layout {
        return Ok(());
    }
    let mut img = Image::open(store, &name)?;
    let mut data = vec![0u8; LAYOUT_CHUNK as usize];
    Rng::new(seed ^ 0x1a70).fill_bytes(&mut data);
    let mut at = 0;
    while at < size {
        let n = LAYOUT_CHUNK.min(size - at);
        img.write_async(at, &data[..n as usize], |_| {})?;
        at += n;
    }
    img.flush()
        .with_context(|| format!("laying out image '{name}'"))?;
    Ok(())
}

/// One job clone, ready to run on its own thread.
pub struct ImageJob {
    /// The job's options.
    pub spec: Arc<JobSpec>,
    /// Number of the job in the run (0-based; reports add one).
    pub number: usize,
    /// The group (phase) the job runs in.
    pub group: usize,
    /// Which clone of its job (0..`numjobs`): picks its image ([`image_name`]).
    pub clone: u32,
    /// Seed of the job's random offsets and data.
    pub seed: u64,
    /// The mounted store the image lives on.
    pub store: StoreHandle,
    /// Where the job publishes its progress for the main thread.
    pub progress: Arc<JobProgress>,
    /// The run-wide switches (stop on Ctrl-C).
    pub control: Arc<RunControl>,
}

/// What a completed request reports back to the job's thread.
struct Done {
    dir: usize,
    started_ns: u64,
    error: Option<String>,
}

/// Runs one job clone on the calling thread.
pub fn run(job: ImageJob) -> Result<JobResult> {
    let ImageJob {
        spec,
        number,
        group,
        clone,
        seed,
        store,
        progress,
        control,
    } = job;
    let name = image_name(&spec, clone);
    let mut img = Image::open(&store, &name)?;
    let bs = spec.bs;
    let units = spec.size.unwrap_or(bs) / bs;
    let mut offsets = if spec.rw.is_random() {
        OffsetGen::random(units, seed, !spec.norandommap)
    } else {
        OffsetGen::sequential(units)
    };
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut data = vec![0u8; bs as usize];
    Rng::new(seed ^ 0x0b1e_55ed).fill_bytes(&mut data);
    let (tx, rx) = mpsc::channel::<Done>();
    let clock = Clock::start();
    let mut meter = Meter::new(spec.sample_every_ns());
    let ramp_ns = spec.ramp_time.as_nanos() as u64;
    let (mut measuring, mut deadline, mut budget) = (false, None, None);
    let mut cpu_start = thread_cpu_usage();
    let depth = spec.iodepth.max(1) as usize;
    let (mut in_flight, mut errors, mut messages) = (0usize, 0u64, Vec::new());
    let mut stopping = false;
    let run_end;
    loop {
        let now = clock.now_ns();
        if !measuring && now >= ramp_ns {
            meter.begin(now);
            deadline = spec.runtime.map(|r| now + r.as_nanos() as u64);
            budget = (!spec.time_based).then_some(units * bs);
            cpu_start = thread_cpu_usage();
            measuring = true;
        }
        // No more requests once stopped, past the deadline, the budget given out, or failed;
        // the run ends when the last one in flight is answered.
        if !stopping
            && (control.stop.load(Ordering::Relaxed)
                || deadline.is_some_and(|d| now >= d)
                || budget == Some(0)
                || errors > 0)
        {
            stopping = true;
        }
        if stopping && in_flight == 0 {
            run_end = now;
            break;
        }
        if measuring && meter.sample_due(now) {
            meter.take_sample(now);
        }
        while !stopping && in_flight < depth {
            let offset = offsets.next(&mut rng) * bs;
            let dir = spec.rw.read_or_write(spec.rwmixread, &mut rng);
            let (tx, started_ns) = (tx.clone(), clock.now_ns());
            let queued = if dir == READ {
                img.read_async(offset, bs, move |r| {
                    let error = r.err().map(|e| e.to_string());
                    let _ = tx.send(Done {
                        dir,
                        started_ns,
                        error,
                    });
                })
            } else {
                img.write_async(offset, &data, move |r| {
                    let error = r.err().map(|e| e.to_string());
                    let _ = tx.send(Done {
                        dir,
                        started_ns,
                        error,
                    });
                })
            };
            match queued {
                Ok(()) => {
                    in_flight += 1;
                    if measuring && let Some(b) = &mut budget {
                        *b = b.saturating_sub(bs);
                        if *b == 0 {
                            break;
                        }
                    }
                }
                Err(e) => {
                    errors += 1;
                    messages.push(format!("image {name}: {e}"));
                    break;
                }
            }
        }
        let Ok(done) = rx.recv_timeout(std::time::Duration::from_millis(20)) else {
            continue;
        };
        let mut next = Some(done);
        while let Some(d) = next {
            in_flight -= 1;
            let finished = clock.now_ns();
            match d.error {
                Some(e) => {
                    errors += 1;
                    if messages.len() < MAX_MESSAGES {
                        messages.push(format!("image {name}: {e}"));
                    }
                }
                None if measuring && d.started_ns >= meter.measure_start_ns => {
                    meter.record(d.dir, bs, finished.saturating_sub(d.started_ns));
                }
                None => {}
            }
            next = rx.try_recv().ok();
        }
        for d in 0..super::engine::DIRS {
            progress.ios[d].store(meter.ios[d], Ordering::Relaxed);
            progress.bytes[d].store(meter.bytes[d], Ordering::Relaxed);
        }
    }
    let finish = clock.now_ns();
    meter.take_sample(finish.max(run_end));
    let cpu_used = thread_cpu_usage().since(&cpu_start);
    progress.finished.store(true, Ordering::Release);
    let stats = img.stats();
    drop(img);
    if stats.object_reads == 0 && spec.rw.reads() && !spec.image_layout {
        messages.push(format!(
            "image {name}: every read was answered from the object map (image_layout=0)"
        ));
    }
    Ok(JobResult::from_thread(
        &spec,
        number,
        group,
        ThreadRun {
            device_uri: format!("image {name}"),
            meter,
            run_end_ns: run_end,
            finish_ns: finish,
            cpu_usage: cpu_used,
            errors,
            messages,
        },
    ))
}
