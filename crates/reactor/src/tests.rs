use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

fn unpinned(cpus: Vec<usize>) -> ReactorConfig {
    ReactorConfig {
        pin: false,
        ..ReactorConfig::new(cpus)
    }
}

#[test]
fn messages_run_on_the_addressed_reactor() {
    let reactors = Reactors::start(unpinned(vec![0, 1])).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..2 {
        let tx = tx.clone();
        reactors
            .send(i, move |cx| {
                tx.send((cx.index(), thread::current().name().map(str::to_string)))
                    .unwrap();
            })
            .unwrap();
    }
    let mut got: Vec<_> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(0, Some("reactor-0".into())), (1, Some("reactor-1".into()))]
    );
    let stats = reactors.shutdown();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|s| s.messages == 1));
}

#[test]
fn pollers_run_until_done_and_count_busy_iterations() {
    let reactors = Reactors::start(unpinned(vec![0])).unwrap();
    let (tx, rx) = mpsc::channel();
    reactors
        .send(0, move |cx| {
            let mut left = 1000u32;
            cx.add_poller(move |_: &mut Context<'_>| {
                left -= 1;
                if left == 0 {
                    tx.send(()).unwrap();
                    Poll::Done
                } else {
                    Poll::Busy
                }
            });
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let stats = reactors.shutdown();
    assert!(stats[0].busy_iterations >= 1000, "{stats:?}");
    assert!(stats[0].iterations >= stats[0].busy_iterations);
}

#[test]
fn timers_fire_in_deadline_order_and_periodic_ones_repeat() {
    let reactors = Reactors::start(unpinned(vec![0])).unwrap();
    let (tx, rx) = mpsc::channel();
    reactors
        .send(0, move |cx| {
            let start = cx.now();
            let t1 = tx.clone();
            cx.after(Duration::from_millis(30), move |_| t1.send("late").unwrap());
            let t2 = tx.clone();
            cx.after(Duration::from_millis(10), move |_| {
                t2.send("early").unwrap()
            });
            let mut ticks = 0;
            cx.every(Duration::from_millis(5), move |cx| {
                ticks += 1;
                if ticks == 3 {
                    assert!(cx.now().duration_since(start) >= Duration::from_millis(15));
                    tx.send("third tick").unwrap();
                    TimerAction::Cancel
                } else {
                    TimerAction::Continue
                }
            });
        })
        .unwrap();
    let order: Vec<&str> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(order.iter().filter(|s| **s == "third tick").count(), 1);
    let early = order.iter().position(|s| *s == "early").unwrap();
    let late = order.iter().position(|s| *s == "late").unwrap();
    assert!(early < late);
}

#[test]
fn reactors_pass_messages_to_each_other_over_their_queues() {
    let reactors = Reactors::start(unpinned(vec![0, 1])).unwrap();
    let (tx, rx) = mpsc::channel();
    let hops = Arc::new(AtomicUsize::new(0));
    // Ping-pong 100 times between reactor 0 and 1.
    fn bounce(cx: &mut Context<'_>, left: u32, hops: Arc<AtomicUsize>, tx: mpsc::Sender<usize>) {
        hops.fetch_add(1, Ordering::SeqCst);
        if left == 0 {
            tx.send(cx.index()).unwrap();
            return;
        }
        let to = 1 - cx.index();
        let msg: Message = Box::new(move |cx| bounce(cx, left - 1, hops, tx));
        assert!(cx.send(to, msg).is_ok());
    }
    let h = Arc::clone(&hops);
    reactors.send(0, move |cx| bounce(cx, 100, h, tx)).unwrap();
    let last = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(last, 0, "an even number of hops ends where it started");
    assert_eq!(hops.load(Ordering::SeqCst), 101);
}

#[test]
fn idle_reactors_back_off_to_sleeping_and_wake_for_mail() {
    let config = ReactorConfig {
        idle: IdlePolicy {
            spin: Duration::from_micros(50),
            max_sleep: Duration::from_millis(50),
        },
        ..unpinned(vec![0])
    };
    let reactors = Reactors::start(config).unwrap();
    thread::sleep(Duration::from_millis(300));
    // Parked with up to 50 ms of backoff, the reactor must still answer promptly when mailed.
    let (tx, rx) = mpsc::channel();
    let sent = Instant::now();
    reactors
        .send(0, move |_| tx.send(Instant::now()).unwrap())
        .unwrap();
    let ran = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let stats = reactors.shutdown();
    assert!(stats[0].sleeps > 0, "an idle reactor parks: {stats:?}");
    assert!(stats[0].idle_iterations > 0);
    // Generous bound: this checks the unpark path exists, not scheduling latency.
    assert!(ran.duration_since(sent) < Duration::from_secs(2));
}

#[test]
fn full_mailboxes_push_back() {
    let config = ReactorConfig {
        mailbox_capacity: 2,
        ..unpinned(vec![0])
    };
    let reactors = Reactors::start(config).unwrap();
    let gate = Arc::new(AtomicU64::new(0));
    let g = Arc::clone(&gate);
    // Block the reactor inside a message so the mailbox fills.
    reactors
        .send(0, move |_| {
            while g.load(Ordering::SeqCst) == 0 {
                std::hint::spin_loop();
            }
        })
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    let mut full = false;
    for _ in 0..10 {
        if let Err(ReactorError::MailboxFull { index: 0 }) = reactors.send(0, |_| {}) {
            full = true;
            break;
        }
    }
    gate.store(1, Ordering::SeqCst);
    assert!(full, "a bounded mailbox reports full instead of growing");
}

#[test]
fn bad_cpu_lists_are_errors() {
    assert!(matches!(
        Reactors::start(ReactorConfig::new(vec![])),
        Err(ReactorError::NoCpus)
    ));
    assert!(matches!(
        Reactors::start(unpinned(vec![0, 0])),
        Err(ReactorError::DuplicateCpu { cpu: 0 })
    ));
    let err = Reactors::start(ReactorConfig::new(vec![100_000])).unwrap_err();
    assert!(
        err.to_string().contains("cpu 100000 is not available"),
        "{err}"
    );
    let reactors = Reactors::start(unpinned(vec![0])).unwrap();
    assert!(matches!(
        reactors.send(3, |_| {}),
        Err(ReactorError::NoSuchReactor { index: 3, count: 1 })
    ));
}

#[test]
fn reactors_pin_to_their_cpu() {
    let cpus = available_cpus();
    if cpus.is_empty() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: cpu affinity not readable\n",
        );
        return;
    }
    let cpu = *cpus.last().unwrap();
    let reactors = Reactors::start(ReactorConfig::new(vec![cpu])).unwrap();
    let (tx, rx) = mpsc::channel();
    reactors
        .send(0, move |cx| {
            tx.send((cx.cpu(), bluepoll_base::sys::current_cpu()))
                .unwrap()
        })
        .unwrap();
    let (configured, running_on) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(configured, cpu);
    assert_eq!(running_on, Some(cpu));
}

#[test]
fn a_stalled_periodic_timer_skips_missed_periods_and_zero_delay_rearm_yields() {
    let reactors = Reactors::start(unpinned(vec![0])).unwrap();
    let (tx, rx) = mpsc::channel();
    reactors
        .send(0, move |cx| {
            // Stall the reactor for 20 ms inside a 5 ms periodic timer's first call: the next
            // call must come about one period later, not immediately.
            let mut calls: Vec<Instant> = Vec::new();
            let tx2 = tx.clone();
            cx.every(Duration::from_millis(5), move |cx| {
                calls.push(Instant::now());
                if calls.len() == 1 {
                    thread::sleep(Duration::from_millis(20));
                }
                if calls.len() == 3 {
                    tx2.send((
                        "third call after the first",
                        calls[2].duration_since(calls[0]),
                    ))
                    .unwrap();
                    return TimerAction::Cancel;
                }
                let _ = cx;
                TimerAction::Continue
            });
            // A timer that re-arms itself with zero delay forever must not starve the mailbox.
            fn rearm(cx: &mut Context<'_>) {
                cx.after(Duration::ZERO, rearm);
            }
            cx.after(Duration::ZERO, rearm);
        })
        .unwrap();
    let (_, gap) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        gap >= Duration::from_millis(2),
        "a missed period fired back to back: {gap:?}"
    );
    let (tx, rx) = mpsc::channel();
    reactors.send(0, move |_| tx.send(()).unwrap()).unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("mail is still delivered");
}
