//! The proxy's per-request hot path: route a cohort key against the current share and record
//! the outcome into the lock-free per-variant counters (target: well under 100 ns).

// Benches measure time; that is their job.
#![allow(clippy::disallowed_methods)]

use criterion::{Criterion, criterion_group, criterion_main};
use ramp_core::cohort::ShareBp;
use ramp_core::evidence::Answer;
use ramp_proxy::{Recorder, Routing, user_hash};
use std::hint::black_box;

fn route_record(c: &mut Criterion) {
    let routing = Routing::new("backend-integration-2024", ShareBp::new(2_000).unwrap());
    // Three latency thresholds, like a plan with p95/p99 gates and a latency trigger.
    let recorder = Recorder::new(&[200_000, 500_000, 1_000_000]);
    let keys: Vec<String> = (0..4_096).map(|i| format!("user-{i:08}")).collect();
    let latencies: Vec<u64> = (0..4_096u64)
        .map(|i| 2_000 + (i * 7_919) % 400_000)
        .collect();
    let mut i = 0usize;
    c.bench_function("route_record", |b| {
        b.iter(|| {
            let key = keys[i & 4_095].as_bytes();
            let latency = latencies[i & 4_095];
            i = i.wrapping_add(1);
            let variant = routing.route(black_box(key));
            recorder.record(variant, Answer::Status(200), latency, Some(user_hash(key)));
            variant
        })
    });
    c.bench_function("route_only", |b| {
        b.iter(|| {
            let key = keys[i & 4_095].as_bytes();
            i = i.wrapping_add(1);
            routing.route(black_box(key))
        })
    });
    // Two threads recording into the same counters at once (cache lines bounce between
    // cores): the time reported is per request on each thread.
    c.bench_function("route_record_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::sync::Barrier::new(2);
            let work = |offset: usize| {
                start.wait();
                let t = std::time::Instant::now();
                for n in 0..iters as usize {
                    let j = (n + offset) & 4_095;
                    let key = keys[j].as_bytes();
                    let variant = routing.route(black_box(key));
                    recorder.record(
                        variant,
                        Answer::Status(200),
                        latencies[j],
                        Some(user_hash(key)),
                    );
                }
                t.elapsed()
            };
            std::thread::scope(|scope| {
                let other = scope.spawn(|| work(2_048));
                let mine = work(0);
                mine.max(other.join().unwrap())
            })
        })
    });
    black_box(recorder.take_window());
}

criterion_group!(benches, route_record);
criterion_main!(benches);
