//! HTTP plumbing for the Snowflake client: base-URL override, query-id capture, result rows.

use std::cell::RefCell;
use std::future::Future;

use arrow_array57::cast::AsArray;
use arrow_array57::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array57::Array;
use async_trait::async_trait;
use reqwest_middleware::{Middleware, Next};
use snowflake_api::QueryResult;

use super::WarehouseError;

/// Sends requests for `https://<account>.snowflakecomputing.com/...` to another base URL
/// (a proxy, or an emulator), keeping path and query.
pub struct BaseUrl {
    base: url::Url,
}

impl BaseUrl {
    pub fn parse(base: &str) -> Result<Self, WarehouseError> {
        let base = url::Url::parse(base).map_err(|e| {
            WarehouseError::configuration(format!("warehouse.snowflake.base_url {base:?}: {e}")).with_source(e)
        })?;
        Ok(BaseUrl { base })
    }
}

#[async_trait]
impl Middleware for BaseUrl {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let url = req.url_mut();
        let prefix = self.base.path().trim_end_matches('/');
        let path = format!("{prefix}{}", url.path());
        let rewritten = url.set_scheme(self.base.scheme()).is_ok()
            && url.set_host(self.base.host_str()).is_ok()
            && url.set_port(self.base.port()).is_ok();
        if !rewritten {
            return Err(reqwest_middleware::Error::Middleware(anyhow::anyhow!("cannot rewrite url to {}", self.base)));
        }
        url.set_path(&path);
        next.run(req, extensions).await
    }
}

tokio::task_local! {
    /// The query id of the statement the current task is running, filled in by [`QueryIdRecorder`].
    static QUERY_ID: RefCell<Option<String>>;
}

/// Runs `statement` and returns its output with the `data.queryId` of its last query response.
/// The id travels in a task-local, so concurrent statements never see each other's ids.
pub async fn with_query_id<T>(statement: impl Future<Output = T>) -> (T, Option<String>) {
    QUERY_ID
        .scope(RefCell::new(None), async move {
            let output = statement.await;
            (output, QUERY_ID.with(|slot| slot.borrow_mut().take()))
        })
        .await
}

/// Records the `data.queryId` of query responses for [`with_query_id`].
pub struct QueryIdRecorder;

#[async_trait]
impl Middleware for QueryIdRecorder {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let is_query = req.url().path().ends_with("/queries/v1/query-request");
        let response = next.run(req, extensions).await?;
        // Outside `with_query_id` (a readiness probe, say) nobody wants the id.
        if !is_query || QUERY_ID.try_with(|_| ()).is_err() {
            return Ok(response);
        }
        let (response, body) = buffer(response).await?;
        let query_id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/data/queryId").and_then(|q| q.as_str()).map(str::to_string))
            .filter(|id| !id.is_empty());
        let _ = QUERY_ID.try_with(|slot| *slot.borrow_mut() = query_id);
        Ok(rebuild(response, body))
    }
}

/// Reads a response body, keeping status and headers to rebuild it.
pub async fn buffer(response: reqwest::Response) -> reqwest_middleware::Result<(http::response::Parts, bytes::Bytes)> {
    let mut builder = http::Response::builder().status(response.status()).version(response.version());
    for (name, value) in response.headers() {
        // The body is decoded already; its length may change when rebuilt.
        if name != http::header::CONTENT_LENGTH && name != http::header::CONTENT_ENCODING {
            builder = builder.header(name, value);
        }
    }
    let body = response.bytes().await?;
    let (parts, ()) = builder.body(()).map_err(|e| reqwest_middleware::Error::Middleware(e.into()))?.into_parts();
    Ok((parts, body))
}

/// The inverse of [`buffer`].
pub fn rebuild(parts: http::response::Parts, body: bytes::Bytes) -> reqwest::Response {
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

/// Rows of a statement as text, with column names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// Position of a column, case-insensitively.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.eq_ignore_ascii_case(name))
    }
}

/// Turns any query result (JSON rowset or Arrow batches) into text rows.
pub fn result_rows(result: QueryResult) -> Result<Rows, WarehouseError> {
    match result {
        QueryResult::Empty => Ok(Rows::default()),
        QueryResult::Json(json) => {
            let columns = json.schema.iter().map(|f| f.name.clone()).collect();
            let rows = json
                .value
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|row| {
                            row.as_array().map(|cells| cells.iter().map(json_text).collect()).unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Rows { columns, rows })
        }
        QueryResult::Arrow(batches) => {
            let mut out = Rows::default();
            for batch in batches {
                if out.columns.is_empty() {
                    out.columns = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
                }
                for row in 0..batch.num_rows() {
                    out.rows.push(batch.columns().iter().map(|array| arrow_text(array.as_ref(), row)).collect());
                }
            }
            Ok(out)
        }
    }
}

fn json_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Text of one Arrow cell for the types Snowflake sends for metadata and counts.
fn arrow_text(array: &dyn Array, row: usize) -> Option<String> {
    use arrow_schema57::DataType;
    if array.is_null(row) {
        return None;
    }
    let text = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_string(),
        DataType::Utf8View => array.as_string_view().value(row).to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).to_string(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        DataType::Float32 => array.as_primitive::<Float32Type>().value(row).to_string(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).to_string(),
        DataType::Decimal128(_, _) => {
            let decimals = array.as_primitive::<arrow_array57::types::Decimal128Type>();
            decimals.value_as_string(row)
        }
        other => format!("<{other}>"),
    };
    Some(text)
}
