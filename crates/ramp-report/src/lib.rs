//! ramp's documents about one rollout: the status report, the daily summary, the final report
//! with its success metrics, and the incident review with its blast radius.
//!
//! [`build`] turns what the caller knows (plan, latest state, journal, metric windows,
//! notices, the time) into a [`Report`]; [`render`] writes it as Markdown, self-contained HTML
//! with inline SVG charts, or JSON. Nothing here does IO or reads a clock, and odd input (no
//! windows, no requests, a rollout that never started) gives a document, never a panic.
#![forbid(unsafe_code)]

mod build;
mod charts;
mod format;
mod html;
mod markdown;
mod model;
mod svg;

pub use build::build;
pub use model::*;

use ramp_core::evidence::MetricWindow;
use ramp_core::plan::Plan;
use ramp_core::rollout::State;
use serde::Serialize;

/// Which document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Where the rollout is now, with the whole timeline.
    Status,
    /// The daily summary: the numbers now and the last 24 hours of the timeline.
    Daily,
    /// The final report, with the success metrics table.
    Final,
    /// The incident review of a rollback.
    Incident,
}

impl Kind {
    /// Parses `status`, `daily`, `final` or `incident` (also `incident_review`,
    /// `incident-review`, `summary`), case-insensitive.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "status" => Kind::Status,
            "daily" | "summary" => Kind::Daily,
            "final" => Kind::Final,
            "incident" | "incident_review" | "incident-review" => Kind::Incident,
            _ => return None,
        })
    }

    /// The kind's name, as [`Kind::parse`] reads it and JSON writes it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Daily => "daily",
            Kind::Final => "final",
            Kind::Incident => "incident",
        }
    }

    /// The kind as a title says it.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Status => "status report",
            Kind::Daily => "daily summary",
            Kind::Final => "final report",
            Kind::Incident => "incident review",
        }
    }
}

/// How a report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// GitHub-flavoured Markdown (no charts).
    Md,
    /// One self-contained HTML page with inline SVG charts.
    Html,
    /// The [`Report`] as pretty-printed JSON.
    Json,
}

impl Format {
    /// Parses `md` (`markdown`), `html` or `json`, case-insensitive.
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "md" | "markdown" => Format::Md,
            "html" | "htm" => Format::Html,
            "json" => Format::Json,
            _ => return None,
        })
    }

    /// The file extension: `md`, `html` or `json`.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Md => "md",
            Format::Html => "html",
            Format::Json => "json",
        }
    }
}

/// A notice as the report lists it (the caller converts from its store type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoticeRow {
    /// The outbox id.
    pub id: u64,
    /// When it was queued (ms since the Unix epoch).
    pub at: u64,
    /// `status`, `summary` or `critical`.
    pub kind: String,
    /// What it is about (`rolled_back`, `status_update`, ...).
    pub about: String,
    /// Its headline.
    pub headline: String,
    /// The stakeholder groups it went to.
    pub groups: Vec<String>,
    /// Per channel: (channel, `pending`/`delivered`/`failed`, attempts, last error).
    pub deliveries: Vec<(String, String, u32, Option<String>)>,
}

/// Everything a report is built from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The rollout's plan.
    pub plan: &'a Plan,
    /// The latest state.
    pub state: &'a State,
    /// The journal, oldest first: (seq, event).
    pub events: &'a [(u64, ramp_wire::v1::Event)],
    /// (controller time ms, per-variant aggregates since the previous window), oldest first.
    pub windows: &'a [(u64, MetricWindow)],
    /// The notices sent about the rollout.
    pub notices: &'a [NoticeRow],
    /// Controller time of the report (ms since the Unix epoch).
    pub now: u64,
}

/// Writes a report in a format.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Md => markdown::render(report),
        Format::Html => html::render(report),
        Format::Json => serde_json::to_string_pretty(report)
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string())),
    }
}

#[cfg(test)]
mod tests;
