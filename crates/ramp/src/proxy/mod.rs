//! The built-in reverse proxy (in progress).
