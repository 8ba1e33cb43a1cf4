//! Tandem's benchmark suite. Every figure is a median of repetitions with its spread, compared
//! with a baseline measured in the same run by the same generator; see bench/README.md.

#![forbid(unsafe_code)]

pub mod app;
pub mod generator_check;
pub mod loadgen;
pub mod machine;
pub mod processes;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod schedule;
pub mod stats;
