//! Snowflake warehouse over its REST API (snowflake-api), loading from an external stage.
//!
//! Three sessions, one per role, so that no statement waits behind another's: requests' DESCRIBE
//! and DDL, the loader's COPY (inside BEGIN/COMMIT, which must not share a session with DDL:
//! DDL commits an open transaction), and readiness probes. Query ids travel with each statement
//! (a task-local filled in by a response middleware), never through a shared slot.

use std::time::Duration;

use async_trait::async_trait;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use snowflake_api::{
    AuthArgs, AuthType, CertificateArgs, PasswordArgs, SnowflakeApi, SnowflakeApiBuilder, SnowflakeApiError,
};

use super::snowflake_http::{result_rows, with_query_id, BaseUrl, QueryIdRecorder, Rows};
use super::{CopyResult, CopyStatus, ErrorKind, StagedFile, TableDescription, Warehouse, WarehouseError};
use crate::config::SnowflakeConfig;
use crate::schema::{
    quote_ident, quote_literal, Column, ColumnName, ColumnType, META_BATCH_ID, META_COLUMNS, META_INGESTED_AT,
    META_RECORD_INDEX,
};

/// A Snowflake database and schema, and the external stage that points at snowgate's stage.
pub struct SnowflakeWarehouse {
    /// Requests' DESCRIBE and DDL, and tools.
    api: Sessions,
    /// The loader's COPY transactions, one at a time; `None` after a session was given up, until
    /// the next COPY opens another.
    loads: tokio::sync::Mutex<Option<SnowflakeApi>>,
    /// Readiness probes, one at a time.
    probe: tokio::sync::Mutex<SnowflakeApi>,
    stage: String,
    /// To open a fresh loads session after one was given up.
    config: SnowflakeConfig,
}

/// Sessions used by one statement at a time each. Snowflake runs concurrent statements on one
/// session, but its emulator refuses them ("connection is busy"); a few sessions cost nothing
/// until used, since each logs in on its first statement.
struct Sessions {
    sessions: Vec<tokio::sync::Mutex<SnowflakeApi>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Sessions for requests' statements: more than requests usually run DDL at once.
const API_SESSIONS: usize = 4;

impl Sessions {
    fn new(config: &SnowflakeConfig, n: usize) -> Result<Self, WarehouseError> {
        let sessions = (0..n).map(|_| session(config).map(tokio::sync::Mutex::new)).collect::<Result<_, _>>()?;
        Ok(Sessions { sessions, next: std::sync::atomic::AtomicUsize::new(0) })
    }

    /// A free session, or the next one in turn once it is free.
    async fn get(&self) -> tokio::sync::MutexGuard<'_, SnowflakeApi> {
        for session in &self.sessions {
            if let Ok(free) = session.try_lock() {
                return free;
            }
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.sessions.len();
        self.sessions[turn].lock().await
    }
}

/// A statement's rows (as text) and its query id.
struct Executed {
    rows: Rows,
    query_id: Option<String>,
}

fn auth(config: &SnowflakeConfig) -> Result<AuthType, WarehouseError> {
    if let Some(path) = &config.private_key_path {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            WarehouseError::configuration(format!("warehouse.snowflake.private_key_path {}: {e}", path.display()))
                .with_source(e)
        })?;
        return Ok(AuthType::Certificate(CertificateArgs { private_key_pem: pem }));
    }
    let password = match &config.password {
        Some(secret) => secret.expose().to_string(),
        None => std::env::var("SNOWFLAKE_PASSWORD")
            .map_err(|_| WarehouseError::configuration("no Snowflake password or private key configured"))?,
    };
    Ok(AuthType::Password(PasswordArgs { password }))
}

/// Stage names come from operator config; they are checked rather than quoted so the
/// `@stage/path` syntax stays as Snowflake documents it.
fn check_stage_name(name: &str) -> Result<(), WarehouseError> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'));
    if ok {
        Ok(())
    } else {
        Err(WarehouseError::configuration(format!("warehouse.snowflake.stage {name:?} must be a plain identifier")))
    }
}

/// A client and session (it logs in on its first statement) that records query ids.
fn session(config: &SnowflakeConfig) -> Result<SnowflakeApi, WarehouseError> {
    // No overall timeout here: each statement's deadline covers all its requests (login, query,
    // result chunks), and a stalled one is told apart from a failed one.
    let http = reqwest::Client::builder()
        .connect_timeout(config.statement_timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| WarehouseError::configuration(format!("http client: {e}")).with_source(e))?;
    let mut builder = ClientBuilder::new(http).with(QueryIdRecorder);
    if let Some(base) = &config.base_url {
        builder = builder.with(BaseUrl::parse(base)?);
    }
    let client: ClientWithMiddleware = builder.build();
    let args = AuthArgs {
        account_identifier: config.account.clone(),
        warehouse: config.warehouse.clone(),
        database: Some(config.database.clone()),
        schema: Some(config.schema.clone()),
        username: config.user.clone(),
        role: config.role.clone(),
        auth_type: auth(config)?,
    };
    SnowflakeApiBuilder::new(args).with_client(client).build().map_err(classify)
}

/// Runs one statement on `api`, with its query id, waiting at most `deadline` for its answer.
async fn exec(api: &SnowflakeApi, sql: &str, deadline: Duration) -> Result<Executed, WarehouseError> {
    let (result, query_id) = match tokio::time::timeout(deadline, with_query_id(api.exec(sql))).await {
        Ok(answered) => answered,
        Err(elapsed) => {
            let message =
                format!("no answer within {} s (warehouse.snowflake.statement_timeout_secs)", deadline.as_secs());
            return Err(WarehouseError::transient(message).with_source(elapsed));
        }
    };
    let result = result.map_err(|e| {
        let error = classify(e);
        tracing::debug!(query_id = ?query_id, error = %error, "snowflake statement failed");
        error.with_query_id(query_id.clone())
    })?;
    Ok(Executed { rows: result_rows(result)?, query_id })
}

impl SnowflakeWarehouse {
    /// Builds the clients; each session logs in on its first statement.
    pub fn connect(config: &SnowflakeConfig) -> Result<Self, WarehouseError> {
        check_stage_name(&config.stage)?;
        Ok(SnowflakeWarehouse {
            api: Sessions::new(config, API_SESSIONS)?,
            loads: tokio::sync::Mutex::new(Some(session(config)?)),
            probe: tokio::sync::Mutex::new(session(config)?),
            stage: config.stage.clone(),
            config: config.clone(),
        })
    }

    async fn exec(&self, sql: &str) -> Result<Executed, WarehouseError> {
        exec(&*self.api.get().await, sql, self.config.statement_timeout).await
    }

    /// Runs any statement and returns its rows as text, for tools and tests.
    pub async fn query(&self, sql: &str) -> Result<Rows, WarehouseError> {
        Ok(self.exec(sql).await?.rows)
    }
}

/// Snowflake error codes, by what the loader should do about them.
mod codes {
    /// Object does not exist or not authorized; object does not exist or operation cannot be
    /// performed; insufficient privileges; no active warehouse; warehouse does not exist or not
    /// authorized; failure using the stage area (the storage refused Snowflake's access); bad
    /// credentials, locked or disabled user; invalid JWT; role not granted.
    pub const CONFIGURATION: &[&str] =
        &["002003", "002043", "003001", "000606", "390201", "091003", "390100", "390101", "390102", "390144", "390189"];
    /// Session expired or gone; internal error; statement timeout or cancelled; warehouse
    /// resuming or queue full.
    pub const TRANSIENT: &[&str] = &["390111", "390112", "390114", "000603", "000604", "000625", "000630", "000629"];
    /// "Does not exist" answers to DESC TABLE.
    pub const NOT_FOUND: &str = "002003";
}

/// Classifies by Snowflake's error code: 100xxx are data errors (conversion, NOT NULL, file
/// format); the lists in [`codes`] are configuration or transient; anything else that Snowflake
/// answered is a failed statement; no answer at all (network, TLS) is transient.
fn classify(error: SnowflakeApiError) -> WarehouseError {
    let (kind, code) = match &error {
        SnowflakeApiError::ApiError(code, _) => {
            let kind = if code.starts_with("100") {
                ErrorKind::Data
            } else if codes::CONFIGURATION.contains(&code.as_str()) {
                ErrorKind::Configuration
            } else if codes::TRANSIENT.contains(&code.as_str()) {
                ErrorKind::Transient
            } else {
                ErrorKind::Statement
            };
            (kind, Some(code.clone()))
        }
        // A login Snowflake refused (its own code) or that lacked credentials carries no cause of
        // its own; one that never got an answer carries the transport's error (its variants are
        // transparent wrappers, so the chain starts below them).
        SnowflakeApiError::AuthError(auth) if std::error::Error::source(auth).is_none() => {
            (ErrorKind::Configuration, None)
        }
        _ => (ErrorKind::Transient, None),
    };
    let message = match &error {
        SnowflakeApiError::ApiError(code, message) => format!("{code}: {message}"),
        other => other.to_string(),
    };
    let classified = WarehouseError::new(kind, message).with_source(error);
    match code {
        Some(code) => classified.with_code(code),
        None => classified,
    }
}

fn snowflake_type(ty: ColumnType) -> String {
    ty.to_string()
}

/// Whether a statement got no answer from Snowflake (its deadline passed, or the connection
/// failed), as opposed to an answer that was an error: the session may still be running it.
fn gone(error: &WarehouseError) -> bool {
    error.kind == ErrorKind::Transient && error.code().is_none()
}

fn not_found(error: &WarehouseError) -> bool {
    error.code() == Some(codes::NOT_FOUND)
}

#[async_trait]
impl Warehouse for SnowflakeWarehouse {
    fn backend(&self) -> &'static str {
        "snowflake"
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        self.probe.lock().await.exec("SELECT 1").await.map(|_| ()).map_err(classify)
    }

    async fn describe(&self, table: &str) -> Result<Option<TableDescription>, WarehouseError> {
        let executed = match self.exec(&format!("DESC TABLE {}", quote_ident(table))).await {
            Ok(executed) => executed,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let rows = executed.rows;
        let (Some(name_at), Some(type_at)) = (rows.column("name"), rows.column("type")) else {
            return Err(WarehouseError::statement("DESC TABLE returned no name/type columns"));
        };
        let null_at = rows.column("null?");
        let mut columns = Vec::new();
        let mut meta_found = 0;
        for row in &rows.rows {
            let name = row.get(name_at).cloned().flatten().unwrap_or_default().to_ascii_uppercase();
            if META_COLUMNS.contains(&name.as_str()) {
                meta_found += 1;
                continue;
            }
            let ty_text = row.get(type_at).cloned().flatten().unwrap_or_default();
            let ty = ty_text.parse().unwrap_or(ColumnType::Variant);
            let nullable = null_at.and_then(|i| row.get(i).cloned().flatten()).is_none_or(|v| v.starts_with('Y'));
            columns.push(Column { name: ColumnName::from_warehouse(&name), ty, nullable });
        }
        Ok(Some(TableDescription { columns, has_metadata: meta_found == META_COLUMNS.len() }))
    }

    async fn create_table(&self, table: &str, columns: &[Column]) -> Result<(), WarehouseError> {
        let mut parts: Vec<String> = columns
            .iter()
            .map(|c| {
                let not_null = if c.nullable { "" } else { " NOT NULL" };
                format!("{} {}{not_null}", quote_ident(&c.name), snowflake_type(c.ty))
            })
            .collect();
        for (name, ty) in metadata_types() {
            parts.push(format!("{} {ty} NOT NULL", quote_ident(name)));
        }
        self.exec(&format!("CREATE TABLE IF NOT EXISTS {} ({})", quote_ident(table), parts.join(", "))).await?;
        Ok(())
    }

    async fn add_columns(&self, table: &str, columns: &[Column]) -> Result<(), WarehouseError> {
        for column in columns {
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                quote_ident(table),
                quote_ident(&column.name),
                snowflake_type(column.ty)
            );
            self.exec(&sql).await?;
        }
        Ok(())
    }

    async fn widen_column(&self, table: &str, column: &Column) -> Result<(), WarehouseError> {
        let sql = format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DATA TYPE {}",
            quote_ident(table),
            quote_ident(&column.name),
            snowflake_type(column.ty)
        );
        self.exec(&sql).await?;
        Ok(())
    }

    async fn add_metadata_columns(&self, table: &str) -> Result<(), WarehouseError> {
        for (name, ty) in metadata_types() {
            let sql = format!("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}", quote_ident(table), quote_ident(name));
            self.exec(&sql).await?;
        }
        Ok(())
    }

    async fn copy_files(&self, table: &str, files: &[StagedFile]) -> Result<Vec<CopyResult>, WarehouseError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        // One COPY per column list: each selects its files' columns by name and type.
        let mut groups: Vec<(Option<&[Column]>, Vec<String>)> = Vec::new();
        for file in files {
            let columns = file.columns.as_deref();
            match groups.iter_mut().find(|(c, _)| *c == columns) {
                Some((_, paths)) => paths.push(file.path.clone()),
                None => groups.push((columns, vec![file.path.clone()])),
            }
        }
        // An explicit transaction makes a multi-file COPY all or nothing on every engine; with
        // ON_ERROR = ABORT_STATEMENT Snowflake does that anyway, its emulator does not.
        let mut slot = self.loads.lock().await;
        if slot.is_none() {
            *slot = Some(session(&self.config)?);
        }
        let Some(session) = slot.as_ref() else { unreachable!("a session was just opened") };
        let deadline = self.config.statement_timeout;
        let mut committing = false;
        let outcome = async {
            // Whatever an earlier failure on this session left open ends first (a ROLLBACK
            // with no transaction open does nothing).
            if let Err(e) = exec(session, "ROLLBACK", deadline).await {
                if gone(&e) {
                    return Err(e);
                }
            }
            exec(session, "BEGIN", deadline).await?;
            let mut results = Vec::with_capacity(files.len());
            for (columns, paths) in &groups {
                let sql = copy_statement(table, &self.stage, *columns, paths);
                results.extend(copy_results(paths, &exec(session, &sql, deadline).await?)?);
            }
            crate::fault::crash_point(crate::fault::CrashPoint::DuringCopy);
            committing = true;
            exec(session, "COMMIT", deadline).await?;
            Ok(results)
        }
        .await;
        let error = match outcome {
            Ok(results) => return Ok(results),
            Err(error) => error,
        };
        if gone(&error) {
            // No answer, or a connection that broke: a statement may still be running in that
            // session, so it is given up, never reused, and closed in the background, which
            // rolls back whatever it left open. A COMMIT that got no answer may still be
            // committing: its files wait at least a statement's deadline, by when Snowflake's
            // load history knows them if it did.
            if let Some(mut stalled) = slot.take() {
                tokio::spawn(async move {
                    if let Ok(Err(e)) = tokio::time::timeout(deadline, stalled.close_session()).await {
                        tracing::debug!(error = %e, "could not close a given-up Snowflake session; it expires on its own");
                    }
                });
            }
            return Err(if committing { error.with_retry_after(deadline) } else { error });
        }
        // Snowflake answered: the session is sound and left with no transaction open.
        let _ = exec(session, "ROLLBACK", deadline).await;
        Err(error)
    }
}

/// The COPY of `paths` into `table`. Files with semi-structured columns are loaded through a
/// transformation that selects each column by name and casts it to the type it was validated
/// as, the semi-structured ones through `PARSE_JSON` (the file holds them as JSON text; loaded
/// by column name they would stay VARIANT strings); columns the files lack stay NULL. Other
/// files, and files staged before their columns were recorded, are matched by name, which needs
/// no cast (and so none whose Parquet reading on Snowflake is unproven: BINARY, TIME, NTZ).
fn copy_statement(table: &str, stage: &str, columns: Option<&[Column]>, paths: &[String]) -> String {
    let files: Vec<String> = paths.iter().map(|p| quote_literal(p)).collect();
    let semi_structured = |c: &Column| matches!(c.ty, ColumnType::Variant | ColumnType::Object | ColumnType::Array);
    let Some(columns) = columns.filter(|columns| columns.iter().any(semi_structured)) else {
        return format!(
            "COPY INTO {} FROM @{stage} FILES = ({}) FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
            quote_ident(table),
            files.join(", ")
        );
    };
    let typed = columns
        .iter()
        .map(|c| (c.name.as_str(), c.ty.to_string(), semi_structured(c)))
        .chain(metadata_types().into_iter().map(|(name, ty)| (name, ty.to_string(), false)));
    let (mut targets, mut selects) = (Vec::new(), Vec::new());
    for (name, ty, json) in typed {
        let field = format!("$1:{}", quote_ident(name));
        targets.push(quote_ident(name));
        selects.push(if json { format!("PARSE_JSON({field}::VARCHAR)::{ty}") } else { format!("{field}::{ty}") });
    }
    format!(
        "COPY INTO {} ({}) FROM (SELECT {} FROM @{stage}) FILES = ({}) FILE_FORMAT = (TYPE = PARQUET)",
        quote_ident(table),
        targets.join(", "),
        selects.join(", "),
        files.join(", ")
    )
}

fn metadata_types() -> [(&'static str, &'static str); 3] {
    [(META_BATCH_ID, "VARCHAR"), (META_RECORD_INDEX, "NUMBER(38,0)"), (META_INGESTED_AT, "TIMESTAMP_TZ")]
}

/// Per-file COPY rows to results. Snowflake names files by their full stage URL, so they are
/// matched on the relative path's suffix. A file missing from the result was skipped by load
/// history (Snowflake answers "0 files processed" when every file was loaded before).
fn copy_results(paths: &[String], executed: &Executed) -> Result<Vec<CopyResult>, WarehouseError> {
    let rows = &executed.rows;
    let query_id = executed.query_id.clone();
    let file_at = rows.column("file");
    let status_at = rows.column("status");
    let loaded_at = rows.column("rows_loaded");
    let error_at = rows.column("first_error");
    let line_at = rows.column("first_error_line");
    let column_at = rows.column("first_error_column_name");
    let mut results = Vec::with_capacity(paths.len());
    for path in paths {
        let row = file_at.and_then(|f| {
            rows.rows.iter().find(|r| r.get(f).cloned().flatten().is_some_and(|name| name.ends_with(path.as_str())))
        });
        let Some(row) = row else {
            results.push(CopyResult {
                path: path.clone(),
                status: CopyStatus::Skipped,
                rows_loaded: 0,
                query_id: query_id.clone(),
            });
            continue;
        };
        let cell = |at: Option<usize>| at.and_then(|i| row.get(i).cloned().flatten());
        let status = cell(status_at).unwrap_or_default().to_ascii_uppercase();
        let rows_loaded = cell(loaded_at).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let status = match status.as_str() {
            "LOADED" => CopyStatus::Loaded,
            "LOAD_SKIPPED" => CopyStatus::Skipped,
            other => {
                let error = cell(error_at).unwrap_or_else(|| format!("status {other}"));
                let line = cell(line_at).and_then(|n| n.parse().ok());
                return Err(WarehouseError::data(error)
                    .in_file(path)
                    .at(line, cell(column_at))
                    .with_query_id(query_id));
            }
        };
        results.push(CopyResult { path: path.clone(), status, rows_loaded, query_id: query_id.clone() });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact statement matters where the emulator is lenient: fakesnow parses JSON text into
    /// VARIANT whichever way it is loaded, Snowflake only through PARSE_JSON.
    #[test]
    fn copies_select_each_column_by_name_and_parse_semi_structured_ones() {
        let columns = vec![
            Column { name: ColumnName::normalize("id").unwrap(), ty: ColumnType::INTEGER, nullable: false },
            Column { name: ColumnName::normalize("doc").unwrap(), ty: ColumnType::Variant, nullable: true },
            Column { name: ColumnName::normalize("tags").unwrap(), ty: ColumnType::Array, nullable: true },
        ];
        let paths = ["T/a.parquet".to_string(), "T/it's.parquet".to_string()];
        assert_eq!(
            copy_statement("T", "STG", Some(&columns), &paths),
            "COPY INTO \"T\" (\"ID\", \"DOC\", \"TAGS\", \"_BATCH_ID\", \"_RECORD_INDEX\", \"_INGESTED_AT\") \
             FROM (SELECT $1:\"ID\"::NUMBER(38,0), PARSE_JSON($1:\"DOC\"::VARCHAR)::VARIANT, \
             PARSE_JSON($1:\"TAGS\"::VARCHAR)::ARRAY, $1:\"_BATCH_ID\"::VARCHAR, \
             $1:\"_RECORD_INDEX\"::NUMBER(38,0), $1:\"_INGESTED_AT\"::TIMESTAMP_TZ FROM @STG) \
             FILES = ('T/a.parquet', 'T/it''s.parquet') FILE_FORMAT = (TYPE = PARQUET)"
        );
        let by_name = "COPY INTO \"T\" FROM @STG FILES = ('T/a.parquet') FILE_FORMAT = (TYPE = PARQUET) \
                       MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE";
        assert_eq!(copy_statement("T", "STG", None, &paths[..1]), by_name, "columns not recorded: by name");
        assert_eq!(copy_statement("T", "STG", Some(&columns[..1]), &paths[..1]), by_name, "nothing to parse: by name");
    }

    #[test]
    fn copy_rows_match_files_by_suffix_and_status() {
        let rows = Rows {
            columns: vec!["file".into(), "status".into(), "rows_loaded".into(), "first_error".into()],
            rows: vec![
                vec![Some("s3://b/p/T/a.parquet".into()), Some("LOADED".into()), Some("3".into()), None],
                vec![Some("s3://b/p/T/b.parquet".into()), Some("LOAD_SKIPPED".into()), Some("0".into()), None],
            ],
        };
        let executed = Executed { rows, query_id: Some("q".into()) };
        let paths = ["T/a.parquet".to_string(), "T/b.parquet".to_string(), "T/c.parquet".to_string()];
        let results = copy_results(&paths, &executed).unwrap();
        assert_eq!(results[0].status, CopyStatus::Loaded);
        assert_eq!(results[0].rows_loaded, 3);
        assert_eq!(results[1].status, CopyStatus::Skipped);
        assert_eq!(results[2].status, CopyStatus::Skipped, "absent from the result: skipped by load history");
        assert_eq!(results[0].query_id.as_deref(), Some("q"));
    }

    #[test]
    fn failed_files_are_data_errors() {
        let rows = Rows {
            columns: vec!["file".into(), "status".into(), "first_error".into()],
            rows: vec![vec![Some("T/a.parquet".into()), Some("LOAD_FAILED".into()), Some("bad value".into())]],
        };
        let err = copy_results(&["T/a.parquet".into()], &Executed { rows, query_id: None }).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Data);
        assert!(err.message().contains("bad value"), "{err}");
        assert_eq!(err.file(), Some("T/a.parquet"));
    }

    #[test]
    fn error_codes_are_classified() {
        let kind = |code: &str| classify(SnowflakeApiError::ApiError(code.into(), "x".into())).kind;
        assert_eq!(kind("100038"), ErrorKind::Data);
        assert_eq!(kind("000625"), ErrorKind::Transient);
        assert_eq!(kind("390114"), ErrorKind::Transient);
        assert_eq!(kind("002003"), ErrorKind::Configuration, "missing stage or table");
        assert_eq!(kind("003001"), ErrorKind::Configuration, "missing privilege");
        assert_eq!(kind("000606"), ErrorKind::Configuration, "no warehouse");
        assert_eq!(kind("001003"), ErrorKind::Statement, "syntax error");
        assert_eq!(kind("091003"), ErrorKind::Configuration, "the stage's storage refused access");
        let error = classify(SnowflakeApiError::ApiError("002003".into(), "x".into()));
        assert_eq!(error.code(), Some("002003"));
        assert!(std::error::Error::source(&error).is_some(), "the client's error is kept as the source");
        assert_eq!(classify(SnowflakeApiError::UnexpectedResponse).kind, ErrorKind::Transient);
        // Only an error Snowflake did not answer with gives its session up.
        assert!(gone(&classify(SnowflakeApiError::UnexpectedResponse)));
        assert!(!gone(&classify(SnowflakeApiError::ApiError("000625".into(), "x".into()))), "answered: transient");
        assert!(!gone(&classify(SnowflakeApiError::ApiError("100038".into(), "x".into()))));
        assert!(check_stage_name("SNOWGATE_STAGE").is_ok());
        assert!(check_stage_name("x'; DROP").is_err());
    }
}
