//! Request-path cost of sticky bucketing: `bucket()` + `in_canary()` for a typical 12-byte
//! user id with a precomputed `Salt`. Target: < 20 ns.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ramp_core::cohort::{Salt, ShareBp, assign, bucket, in_canary};

fn bench_cohort(c: &mut Criterion) {
    let salt = Salt::new("backend-integration-2024");
    let share = ShareBp::new(500).expect("5% is a valid share");
    let key: &[u8] = b"u_0123456789"; // 12 bytes
    assert_eq!(key.len(), 12);

    c.bench_function("cohort/bucket+in_canary/12B", |b| {
        b.iter(|| in_canary(bucket(black_box(salt), black_box(key)), black_box(share)))
    });

    c.bench_function("cohort/assign/12B", |b| {
        b.iter(|| assign(black_box(salt), black_box(key), black_box(share)))
    });

    // 1,024 distinct 12-byte ids per iteration, so nothing can be hoisted out of the loop;
    // criterion reports the time per id.
    let keys: Vec<[u8; 12]> = (0..1024u32)
        .map(|i| {
            let mut k = *b"u_0000000000";
            k[2..].copy_from_slice(format!("{:010}", i.wrapping_mul(2_654_435_761)).as_bytes());
            k
        })
        .collect();
    let mut group = c.benchmark_group("cohort/varied-keys");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("bucket+in_canary/12B", |b| {
        b.iter(|| {
            let salt = black_box(salt);
            let share = black_box(share);
            black_box(&keys)
                .iter()
                .filter(|k| in_canary(bucket(salt, k.as_slice()), share))
                .count()
        })
    });
    group.finish();

    c.bench_function("cohort/Salt::new", |b| {
        b.iter(|| Salt::new(black_box("backend-integration-2024")))
    });
}

criterion_group!(benches, bench_cohort);
criterion_main!(benches);
