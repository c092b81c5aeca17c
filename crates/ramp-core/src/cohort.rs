//! Sticky cohorts: the versioned bucketing formula. (owned by the cohort helper)
