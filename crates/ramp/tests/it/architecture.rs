//! The architecture as a gate: what each crate may depend on (ARCHITECTURE.md, "Who may
//! depend on what"). A dependency that breaks a rule fails here, with the rule it breaks.

use std::collections::BTreeSet;
use std::path::Path;

/// A crate's normal (not dev) dependencies, from its Cargo.toml.
fn deps(krate: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    doc.get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

const CRATES: &[&str] = &[
    "ramp-core",
    "ramp-wire",
    "ramp-store",
    "ramp-proxy",
    "ramp-notify",
    "ramp-report",
    "ramp-api",
    "ramp-control",
    "ramp-sim",
    "ramp-demo",
    "ramp-harness",
    "ramp",
];

#[test]
fn the_core_depends_on_nothing_that_does_io() {
    let allowed: BTreeSet<String> = [
        "serde",
        "toml",
        "thiserror",
        "strsim",
        "xxhash-rust",
        "sha2",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let core = deps("ramp-core");
    assert!(
        core.is_subset(&allowed),
        "ramp-core may depend only on {allowed:?}: it decides and never does IO (no tokio, no \
         sockets, no SQL, no clock); found {core:?}"
    );
}

#[test]
fn each_kind_of_io_lives_in_one_crate() {
    let rules: &[(&str, &[&str], &str)] = &[
        ("rusqlite", &["ramp-store"], "only the store knows SQL"),
        (
            "serde_json",
            &[
                "ramp-store",
                "ramp-api",
                "ramp-sim",
                "ramp-notify",
                "ramp-report",
                "ramp",
            ],
            "JSON is encoded only where it crosses a boundary: the journal, the API, simulate --json, notices as they leave, reports as JSON, the CLI",
        ),
        (
            "lettre",
            &["ramp-notify"],
            "only the e-mail channel speaks SMTP",
        ),
        ("maud", &["ramp-report"], "only reports write HTML"),
        ("axum", &["ramp-api"], "only the API routes HTTP requests"),
        (
            "utoipa",
            &["ramp-wire", "ramp-api"],
            "the OpenAPI schemas are derived from the wire types",
        ),
        (
            "socket2",
            &["ramp-proxy"],
            "only the proxy binds its own sockets",
        ),
        (
            "anyhow",
            &["ramp"],
            "anyhow only in the binary; libraries have thiserror enums",
        ),
        ("clap", &["ramp"], "only the binary parses the command line"),
        (
            "tracing-subscriber",
            &["ramp"],
            "the binary decides how diagnostics are written",
        ),
        (
            "prometheus-client",
            &["ramp-api"],
            "only the API exposes /metrics",
        ),
    ];
    for (dep, allowed, why) in rules {
        for krate in CRATES {
            if deps(krate).contains(*dep) {
                assert!(
                    allowed.contains(krate),
                    "{krate} depends on {dep}, but {why} ({allowed:?})"
                );
            }
        }
    }
}

#[test]
fn the_layers_point_one_way() {
    // Lower crates never depend on higher ones (the proxy and the store know nothing of the
    // controller; the API knows the control plane only as the trait it defines).
    let never: &[(&str, &[&str])] = &[
        (
            "ramp-wire",
            &["ramp-store", "ramp-proxy", "ramp-api", "ramp-control"],
        ),
        (
            "ramp-store",
            &["ramp-proxy", "ramp-api", "ramp-control", "ramp-notify"],
        ),
        (
            "ramp-proxy",
            &["ramp-store", "ramp-api", "ramp-control", "ramp-wire"],
        ),
        ("ramp-api", &["ramp-store", "ramp-control", "ramp-notify"]),
        ("ramp-notify", &["ramp-control", "ramp-api", "ramp-proxy"]),
        (
            "ramp-sim",
            &[
                "ramp-store",
                "ramp-proxy",
                "ramp-api",
                "ramp-control",
                "tokio",
            ],
        ),
        ("ramp-control", &["axum", "rusqlite", "hyper"]),
        (
            "ramp-report",
            &[
                "ramp-store",
                "ramp-proxy",
                "ramp-api",
                "ramp-control",
                "ramp-notify",
                "tokio",
            ],
        ),
    ];
    for (krate, forbidden) in never {
        let d = deps(krate);
        for f in *forbidden {
            assert!(!d.contains(*f), "{krate} must not depend on {f}");
        }
    }
}

#[test]
fn every_crate_inherits_the_workspace_lints() {
    for krate in CRATES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(krate)
            .join("Cargo.toml");
        let doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let inherits = doc
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool());
        assert_eq!(
            inherits,
            Some(true),
            "{krate} has no `[lints] workspace = true`"
        );
    }
}
