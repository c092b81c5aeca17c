//! Reports from the journal: what a rollout's plan, state, events, windows and notices say,
//! handed to `ramp_report` to build and render. Used by the API (`GET .../report`) and, when
//! the core asks for a report (a rollback's incident review, the final report), to write it
//! to the server's report directory.

use ramp_core::plan::parse_plan;
use ramp_core::time::Millis;
use ramp_report::{Format, Input, Kind, NoticeRow};
use ramp_store::{OutboxEntry, Store, StoreError};
use ramp_wire::v1;
use std::path::{Path, PathBuf};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No such rollout.
    #[error("no rollout named {0:?}")]
    NotFound(String),
    /// The report does not exist (yet): an incident review of a rollout that never rolled back.
    #[error("{0}")]
    NotYet(String),
    /// The journal could not be read.
    #[error("reading the journal: {0}")]
    Store(StoreError),
    /// The report could not be written.
    #[error("writing {path}: {error}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
}

/// The wire kind's report kind.
pub fn kind(k: v1::ReportDoc) -> Kind {
    match k {
        v1::ReportDoc::Status => Kind::Status,
        v1::ReportDoc::Daily => Kind::Daily,
        v1::ReportDoc::Final => Kind::Final,
        v1::ReportDoc::Incident => Kind::Incident,
    }
}

/// The wire format's report format.
pub fn format(f: v1::ReportFormat) -> Format {
    match f {
        v1::ReportFormat::Md => Format::Md,
        v1::ReportFormat::Html => Format::Html,
        v1::ReportFormat::Json => Format::Json,
    }
}

/// How the report lists a notice.
pub fn notice_row(e: &OutboxEntry) -> NoticeRow {
    NoticeRow {
        id: e.id,
        at: e.at,
        kind: match e.notice.kind {
            v1::NotifyKind::Status => "status",
            v1::NotifyKind::Summary => "summary",
            v1::NotifyKind::Critical => "critical",
        }
        .to_string(),
        about: e.notice.about.clone(),
        headline: e.notice.headline.clone(),
        groups: e.notice.groups.clone(),
        deliveries: e
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.channel.clone(),
                    d.state.as_str().to_string(),
                    d.attempts,
                    d.error.clone(),
                )
            })
            .collect(),
    }
}

fn store_error(name: &str, e: StoreError) -> ReportError {
    match e {
        StoreError::NotFound(_) => ReportError::NotFound(name.to_string()),
        other => ReportError::Store(other),
    }
}

/// Builds and renders a report on `name` from the journal, at controller time `now` (the
/// state's own time if later).
pub async fn render(
    store: &dyn Store,
    name: &str,
    k: Kind,
    f: Format,
    now: Millis,
) -> Result<String, ReportError> {
    const PAGE: usize = 1000;
    let stored = store.load(name).await.map_err(|e| store_error(name, e))?;
    let plan = parse_plan(&stored.plan_toml, &format!("stored plan of {name}")).map_err(|e| {
        ReportError::NotYet(format!("the stored plan of {name} no longer parses: {e}"))
    })?;
    if k == Kind::Incident && stored.state.status != ramp_core::rollout::Status::RolledBack {
        return Err(ReportError::NotYet(format!(
            "rollout {name} has not rolled back ({}): there is no incident to review",
            stored.state.status.name()
        )));
    }
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |(seq, _)| *seq);
        let page = store
            .events(name, after, PAGE)
            .await
            .map_err(|e| store_error(name, e))?;
        let done = page.len() < PAGE;
        events.extend(page);
        if done {
            break;
        }
    }
    let mut windows = Vec::new();
    loop {
        let after = windows.last().map_or(0, |(at, _)| *at);
        let page = store
            .windows(name, after, PAGE)
            .await
            .map_err(|e| store_error(name, e))?;
        let done = page.len() < PAGE;
        windows.extend(page);
        if done {
            break;
        }
    }
    let mut notices = Vec::new();
    loop {
        let after = notices.last().map_or(0, |n: &NoticeRow| n.id);
        let page = store
            .notices(name, after, PAGE)
            .await
            .map_err(|e| store_error(name, e))?;
        let done = page.len() < PAGE;
        notices.extend(page.iter().map(notice_row));
        if done {
            break;
        }
    }
    let input = Input {
        plan: &plan,
        state: &stored.state,
        events: &events,
        windows: &windows,
        notices: &notices,
        now: now.max(stored.state.now),
    };
    Ok(ramp_report::render(&ramp_report::build(k, &input), f))
}

/// The files a report of `kind` on `rollout` is written to in `dir`: Markdown and HTML.
pub fn files(dir: &Path, rollout: &str, k: Kind) -> [PathBuf; 2] {
    let stem = match k {
        Kind::Incident => "incident-review",
        Kind::Final => "final-report",
        Kind::Daily => "daily-summary",
        Kind::Status => "status-report",
    };
    [
        dir.join(format!("{rollout}-{stem}.md")),
        dir.join(format!("{rollout}-{stem}.html")),
    ]
}

/// Writes a report on `name` to `dir` as Markdown and HTML; answers with the files.
pub async fn write(
    store: &dyn Store,
    dir: &Path,
    name: &str,
    k: Kind,
    now: Millis,
) -> Result<Vec<PathBuf>, ReportError> {
    let paths = files(dir, name, k);
    let werr = |p: &Path, e: std::io::Error| ReportError::Write {
        path: p.display().to_string(),
        error: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, e))?;
    for (path, f) in paths.iter().zip([Format::Md, Format::Html]) {
        let text = render(store, name, k, f, now).await?;
        // Whole or not at all: written beside, then renamed over.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| werr(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| werr(path, e))?;
    }
    Ok(paths.to_vec())
}
