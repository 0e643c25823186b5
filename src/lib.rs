//! snowgate: an HTTP ingestion gateway from partner JSON batches to a warehouse.
//!
//! The modules follow a record: `http` -> `pipeline` -> `ingest` (decode, validate, drift) ->
//! `buffer` (micro-batches, Parquet) -> `stage` -> `ledger` -> `loader` -> `warehouse`.

pub mod app;
pub mod buffer;
pub mod catalog;
pub mod config;
pub mod http;
pub mod ingest;
pub mod ledger;
pub mod loader;
pub mod pipeline;
pub mod schema;
pub mod sql;
pub mod stage;
pub mod warehouse;

pub use app::{serve, App, AppState};
pub use config::Config;
