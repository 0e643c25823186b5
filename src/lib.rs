//! snowgate: an HTTP ingestion gateway from partner JSON batches to a warehouse.
//!
//! The modules follow a record: `http` -> `pipeline` -> `ingest` (decode, validate, drift) ->
//! `buffer` (micro-batches, Parquet) -> `stage` -> `ledger` -> `loader` -> `warehouse`.
//!
//! The facade is narrow: the request path (`http`, `pipeline`, `catalog`, `app`) is private and
//! reached through [`App`], [`serve`] and [`openapi_json`]; the roles with a conformance suite
//! (stage, ledger, warehouse, loader, buffer) and the pure vocabulary (`config`, `schema`,
//! `ingest`) stay public for the tests that drive them directly.

mod app;
pub mod auth;
pub mod budget;
pub mod buffer;
mod catalog;
pub mod config;
pub mod fault;
mod http;
pub mod ingest;
pub mod ledger;
pub mod loader;
pub mod metrics;
pub mod partner;
mod pipeline;
pub mod rejects;
mod replica;
pub mod schema;
mod sql;
pub mod stage;
pub mod warehouse;

pub use app::{open_ledger, serve, App, AppState, StartError};
pub use config::Config;
pub use http::openapi_json;
pub use sql::query as sql_query;
