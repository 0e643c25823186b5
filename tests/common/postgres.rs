//! A fresh Postgres schema per test, in the `test` database (or `SGTEST_PG_URL`).

use std::sync::Arc;

use snowgate::ledger::Ledger;
use uuid::Uuid;

/// A fresh schema in the test database, dropped when the test ends (pass or fail).
pub struct PgSchema {
    pub base: String,
    pub name: String,
    /// The base URL with the schema as the connection's search_path (and application_name, so
    /// that the sessions can be found again at the end).
    pub url: String,
}

impl PgSchema {
    pub async fn create() -> PgSchema {
        use sqlx::Connection;
        let base =
            std::env::var("SGTEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let name = format!("sg_test_{}", Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&base).await.expect("postgres reachable at SGTEST_PG_URL");
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut conn).await.unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}&application_name={name}");
        PgSchema { base, name, url }
    }

    pub async fn ledger(&self) -> Arc<dyn Ledger> {
        Arc::new(
            snowgate::ledger::postgres::PostgresLedger::connect(&self.url, 5, std::time::Duration::from_secs(10))
                .await
                .unwrap(),
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which is blocked meanwhile: a thread with its own
        // runtime does the work. The ledger's pooled sessions are ended first, since a session
        // whose rollback was queued on the blocked runtime still holds locks in the schema; the
        // lock timeout is a last resort that leaves the schema behind rather than hang the test.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&base).await?;
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                    .bind(&name)
                    .execute(&mut conn)
                    .await?;
                sqlx::query("SET lock_timeout = '10s'").execute(&mut conn).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(&mut conn).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("test schema {} left behind: {dropped:?}", self.name);
        }
    }
}
