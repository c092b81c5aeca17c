//! The ramp shell: everything that does IO around the pure core (`ramp-core`).
#![forbid(unsafe_code)]

/// `println!` that never panics: a closed stdout (`ramp simulate ... | head`, a server whose
/// terminal went away) drops the output instead of aborting the command.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

pub mod api;
pub mod client;
pub mod clock;
pub mod control;
pub mod demo;
pub mod plancheck;
pub mod proxy;
pub mod registry;
pub mod render;
pub mod scenario;
pub mod serve;
pub mod simulate;
pub mod store;
