//! (owned by the evidence helper)
