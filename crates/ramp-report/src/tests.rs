//! Reports of rollouts driven through the pure core.

use super::*;
use ramp_core::evidence::Signal;
use ramp_core::plan::parse_plan;
use ramp_core::rollout::{self, Effect, Status, step};
use ramp_core::time::{HOUR, MINUTE};
use std::sync::OnceLock;

const SEED: &str = include_str!("../../../examples/payments-backend.toml");
const T0: u64 = 1_700_000_000_000;

/// A finished (or stopped) run: everything a report is built from.
struct Run {
    plan: Plan,
    state: State,
    events: Vec<(u64, ramp_wire::v1::Event)>,
    windows: Vec<(u64, MetricWindow)>,
    notices: Vec<NoticeRow>,
    now: u64,
}

impl Run {
    fn start(plan: Plan) -> Self {
        let state = State::new(&plan);
        let mut run = Run {
            plan,
            state,
            events: Vec::new(),
            windows: Vec::new(),
            notices: Vec::new(),
            now: T0,
        };
        run.input(rollout::Input::Start);
        run
    }

    fn input(&mut self, input: rollout::Input) {
        let state = std::mem::replace(&mut self.state, State::new(&self.plan));
        let (s, fx) = step(&self.plan, state, input, self.now);
        self.state = s;
        for e in fx {
            match e {
                Effect::Journal(ev) => {
                    let seq = self.events.len() as u64 + 1;
                    self.events.push((seq, ramp_wire::v1::Event::from(&ev)));
                }
                Effect::Notify(n) => self.notice(&n),
                _ => {}
            }
        }
    }

    fn notice(&mut self, n: &rollout::Notice) {
        let wire = ramp_wire::v1::Notice::at(&self.plan, &self.state, n);
        self.notices.push(NoticeRow {
            id: self.notices.len() as u64 + 1,
            at: self.now,
            kind: format!("{:?}", wire.kind).to_lowercase(),
            about: wire.about,
            headline: wire.headline,
            groups: wire.groups,
            deliveries: vec![("log".into(), "delivered".into(), 1, None)],
        });
    }

    /// One window a minute for `minutes`, stopping early once the rollout settles.
    fn run_minutes(&mut self, minutes: u64, canary_error_rate: f64) {
        for _ in 0..minutes {
            self.now += MINUTE;
            let w = window(&self.plan, &self.state, canary_error_rate);
            self.windows.push((self.now, w.clone()));
            self.input(rollout::Input::Window(w));
            if self.state.status.is_settled() {
                return;
            }
        }
    }

    fn feedback(&mut self, n: usize) {
        for _ in 0..n {
            self.input(rollout::Input::Signal(Signal::Feedback {
                score: 0.9,
                note: String::new(),
            }));
        }
    }

    fn input_of(&self) -> Input<'_> {
        Input {
            plan: &self.plan,
            state: &self.state,
            events: &self.events,
            windows: &self.windows,
            notices: &self.notices,
            now: self.now,
        }
    }
}

/// 200 rps in total, the canary gets its share; 1% of requests slower than 200ms.
fn window(plan: &Plan, s: &State, canary_error_rate: f64) -> MetricWindow {
    let total = 12_000u64;
    let c = total * u64::from(s.share.bp()) / 10_000;
    let mut w = MetricWindow::new(plan.latency_thresholds_us().len());
    let errors = (c as f64 * canary_error_rate).round() as u64;
    fill(&mut w.canary, c, errors, 0);
    fill(&mut w.stable, total - c, 0, 1 << 40);
    w
}

fn fill(v: &mut ramp_core::evidence::VariantStats, n: u64, errors: u64, salt: u64) {
    v.requests = n;
    v.errors = errors;
    v.successes = n - errors;
    for s in v.slow.iter_mut() {
        *s = n / 100;
    }
    v.latency.record_n(40_000, n - n / 100);
    v.latency.record_n(250_000, n / 100);
    for u in 0..n.min(200) {
        v.users
            .insert_hash((u + salt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

fn seed() -> Plan {
    parse_plan(SEED, "p.toml").unwrap()
}

/// The seed plan run healthy through its three phases (shared: it takes 4,320 windows).
fn healthy() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let mut run = Run::start(seed());
        run.run_minutes(24 * 60, 0.0);
        run.feedback(60);
        run.run_minutes(24 * 60, 0.0);
        run.run_minutes(24 * 60 + 1, 0.0);
        run
    })
}

/// The seed plan: an hour healthy, then 10% canary errors until a trigger rolls it back.
fn rolled_back() -> Run {
    let mut run = Run::start(seed());
    run.run_minutes(60, 0.0);
    run.run_minutes(30, 0.1);
    run
}

fn all_formats(report: &Report) -> [String; 3] {
    [Format::Md, Format::Html, Format::Json].map(|f| render(report, f))
}

#[test]
fn a_healthy_run_meets_every_success_metric() {
    let run = healthy();
    assert_eq!(run.state.status, Status::Completed);
    let r = build(Kind::Final, &run.input_of());
    let s = r
        .success
        .as_ref()
        .expect("a final report has success metrics");
    let texts: Vec<&str> = s.overall.iter().map(|m| m.metric.as_str()).collect();
    assert_eq!(texts.len(), 9, "every distinct criterion once: {texts:?}");
    for m in &s.overall {
        assert_eq!(m.verdict, "met", "{}: {}", m.metric, m.detail.explanation);
    }
    assert_eq!(s.per_phase.len(), 3);
    for p in &s.per_phase {
        assert!(!p.rows.is_empty(), "{}", p.phase);
        // The rollout's own criteria need not be proven before the last phase.
        for m in p.rows.iter().filter(|m| m.detail.scope.is_none()) {
            assert_eq!(m.verdict, "met", "{}: {}", p.phase, m.metric);
        }
    }
    assert_eq!(r.phases.len(), 3);
    let [md, html, json] = all_formats(&r);
    assert!(md.contains("## Success metrics"));
    assert!(md.contains("| metric | target | measured | confidence bound | n | verdict |"));
    assert!(md.contains("see the HTML report for charts") || md.contains("See the HTML report"));
    assert!(html.contains("Success metrics"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "final");
    assert_eq!(v["success"]["overall"][0]["verdict"], "met");
}

#[test]
fn a_rollback_gives_an_incident_review_with_its_blast_radius() {
    let run = rolled_back();
    assert_eq!(run.state.status, Status::RolledBack);
    let r = build(Kind::Incident, &run.input_of());
    let i = r
        .incident
        .as_ref()
        .expect("an incident review has its section");
    let trigger = i.trigger.as_deref().unwrap();
    assert!(trigger.contains("error_rate > 1%"), "{trigger}");
    assert!(trigger.contains("lower bound"), "{trigger}");
    assert_eq!(i.cause.as_deref(), Some("trigger"));
    assert!(i.why.is_some());
    let b = &i.blast_radius;
    assert_eq!(b.canary_requests, run.state.totals.canary.requests);
    assert!(b.failed_requests > 0);
    assert_eq!(b.share_before, 500);
    assert_eq!(i.share_before, "5%");
    assert!(b.exposure_ms > HOUR);
    assert_eq!(i.traffic_now, "all traffic on stable (canary share 0%)");
    assert_eq!(i.follow_ups.len(), 3);
    assert!(!i.notices.is_empty(), "the critical notice is listed");
    let [md, html, _] = all_formats(&r);
    for section in [
        "What triggered it",
        "Blast radius",
        "Last known good state",
        "Notices sent",
        "Follow-ups",
    ] {
        assert!(md.contains(section), "markdown lacks {section}");
        assert!(html.contains(section), "html lacks {section}");
    }
    assert!(md.contains("| owner | action | due |"));
    assert!(
        md.contains("ROLLED BACK"),
        "the timeline shows the rollback"
    );
    assert!(html.contains("rolled back"), "the charts mark the rollback");
}

#[test]
fn html_is_self_contained_and_escapes_the_description() {
    let text = SEED.replace(
        "description = \"Switch",
        "description = \"<script>alert('x')</script> & Switch",
    );
    let mut run = Run::start(parse_plan(&text, "p.toml").unwrap());
    run.run_minutes(90, 0.0);
    let r = build(Kind::Status, &run.input_of());
    let html = render(&r, Format::Html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg"));
    assert!(html.contains("@media print"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(
        !html.contains("<script"),
        "no script, and the description escaped"
    );
    assert!(html.contains("&lt;script&gt;alert('x')&lt;/script&gt; &amp; Switch"));
    assert!(!html.contains("<link") && !html.contains("@import") && !html.contains("src="));
    let md = render(&r, Format::Md);
    assert!(md.contains("\\<script\\>"), "markdown escapes raw HTML");
}

#[test]
fn empty_windows_and_a_rollout_that_never_started_render() {
    let plan = seed();
    let state = State::new(&plan);
    let input = Input {
        plan: &plan,
        state: &state,
        events: &[],
        windows: &[],
        notices: &[],
        now: T0,
    };
    for kind in [Kind::Status, Kind::Daily, Kind::Final, Kind::Incident] {
        let r = build(kind, &input);
        assert_eq!(r.status, "pending");
        assert!(r.gates.is_empty());
        assert!(r.charts.error_rate.canary.is_empty());
        let [md, html, json] = all_formats(&r);
        assert!(md.contains("Nothing happened yet."));
        assert!(html.contains("no data yet"));
        assert!(!html.contains("NaN") && !json.contains("NaN"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["kind"], kind.name());
    }
    let r = build(Kind::Incident, &input);
    let i = r.incident.unwrap();
    assert_eq!(i.blast_radius.exposure_ms, 0);
    assert!(i.trigger.is_none());
}

#[test]
fn windows_without_requests_draw_no_points_and_no_nan() {
    let mut run = Run::start(seed());
    let empty = MetricWindow::new(run.plan.latency_thresholds_us().len());
    for k in 1..=50 {
        run.windows.push((T0 + k * MINUTE, empty.clone()));
    }
    // A window from before the start and one at the same instant as another.
    run.windows.insert(0, (T0 - HOUR, empty.clone()));
    run.windows.push((T0 + 50 * MINUTE, empty));
    run.now = T0 + HOUR;
    let r = build(Kind::Daily, &run.input_of());
    assert!(r.charts.error_rate.stable.is_empty());
    assert!(r.charts.p95_ms.canary.is_empty());
    for out in all_formats(&r) {
        assert!(!out.contains("NaN") && !out.contains("inf"));
    }
}

#[test]
fn charts_bucket_thousands_of_windows_and_show_thresholds_and_decisions() {
    let run = healthy();
    let r = build(Kind::Final, &run.input_of());
    let c = &r.charts;
    assert!(run.windows.len() > 4_000);
    for s in [
        &c.error_rate.stable,
        &c.error_rate.canary,
        &c.p95_ms.stable,
        &c.p95_ms.canary,
    ] {
        assert!(!s.is_empty() && s.len() <= 201, "{}", s.len());
        assert!(s.windows(2).all(|p| p[0].0 <= p[1].0), "oldest first");
    }
    assert!(c.p95_ms.canary.iter().all(|p| p.1 > 30.0 && p.1 < 300.0));
    let errors: Vec<f64> = c.error_thresholds.iter().map(|t| t.value).collect();
    assert!(
        errors.contains(&0.001) && errors.contains(&0.01),
        "{errors:?}"
    );
    assert_eq!(
        c.p95_thresholds.iter().map(|t| t.value).collect::<Vec<_>>(),
        vec![200.0]
    );
    let shares: Vec<f64> = c.share.iter().map(|p| p.1).collect();
    assert!(shares.contains(&5.0) && shares.contains(&20.0) && shares.contains(&100.0));
    let labels: Vec<&str> = c.decisions.iter().map(|m| m.label.as_str()).collect();
    assert!(labels.contains(&"promoted → expanded"), "{labels:?}");
    assert!(labels.contains(&"completed"), "{labels:?}");
    assert!((c.span_hours - 72.0).abs() < 0.1, "{}", c.span_hours);
    let html = render(&r, Format::Html);
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(
        html.contains("stroke-dasharray=\"6 4\""),
        "dashed thresholds"
    );
    assert!(html.contains(svg::STABLE) && html.contains(svg::CANARY));
}

#[test]
fn the_daily_summary_shows_the_last_24_hours_of_the_timeline() {
    let run = healthy();
    let all = build(Kind::Status, &run.input_of());
    let daily = build(Kind::Daily, &run.input_of());
    assert_eq!(all.timeline.len(), {
        let input = run.input_of();
        input
            .events
            .iter()
            .filter(|(_, e)| {
                !ramp_wire::text::event_lines(e, run.state.started_at.unwrap()).is_empty()
            })
            .count()
    });
    assert!(daily.timeline.len() < all.timeline.len());
    assert!(daily.timeline.iter().all(|e| e.at + 24 * HOUR >= run.now));
    assert_eq!(daily.timeline_scope, "the last 24 h");
    assert!(all.timeline.iter().any(|e| e.kind == "started"));
}

#[test]
fn reports_carry_the_current_numbers() {
    let run = healthy();
    let r = build(Kind::Status, &run.input_of());
    assert_eq!(r.status, "completed");
    assert_eq!(r.phase.name, "full");
    assert_eq!(r.phase.share, "100%");
    assert_eq!(r.started_at.as_ref().unwrap().utc, "2023-11-14 22:13:20Z");
    assert_eq!(r.totals.canary.requests, run.state.totals.canary.requests);
    assert_eq!(r.signals.feedback, 60);
    assert_eq!(
        r.gates.len(),
        rollout::current_verdicts(&run.plan, &run.state).len()
    );
    assert!(r.title.contains("payments-backend") && r.title.contains("status report"));
    let md = render(&r, Format::Md);
    assert!(md.starts_with("# payments-backend — status report"));
    assert!(md.contains("Generated "));
    assert!(
        !md.contains("## Success metrics"),
        "only the final report has them"
    );
}

#[test]
fn kinds_and_formats_parse_their_names() {
    for k in [Kind::Status, Kind::Daily, Kind::Final, Kind::Incident] {
        assert_eq!(Kind::parse(k.name()), Some(k));
        assert_eq!(
            serde_json::to_value(k).unwrap(),
            serde_json::Value::String(k.name().into())
        );
    }
    assert_eq!(Kind::parse("incident_review"), Some(Kind::Incident));
    assert_eq!(Kind::parse("weekly"), None);
    for f in [Format::Md, Format::Html, Format::Json] {
        assert_eq!(Format::parse(f.extension()), Some(f));
    }
    assert_eq!(Format::parse("Markdown"), Some(Format::Md));
    assert_eq!(Format::parse("pdf"), None);
}

#[test]
fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
    assert_eq!(svg::nice_step(72.0, 8.0), 10.0);
    assert_eq!(svg::nice_step(1.0, 5.0), 0.2);
    assert_eq!(svg::nice_step(0.011, 5.0), 0.005);
    assert_eq!(svg::nice_step(0.0, 5.0), 1.0);
    assert_eq!(svg::nice_step(f64::NAN, 5.0), 1.0);
}
