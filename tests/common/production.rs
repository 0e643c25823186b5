//! Every production peer of one test, each a real server on loopback: a Postgres schema, an
//! s3s-fs stage, fakesnow behind its response shim; and the config or environment that points a
//! gateway at them.

use std::path::Path;
use std::process::Command;

use snowgate::config::{Config, SnowflakeConfig, WarehouseKind};
use snowgate::warehouse::snowflake::SnowflakeWarehouse;

use super::fakesnow::Fakesnow;
use super::peers::S3Server;
use super::postgres::PgSchema;
use super::test_config;

const STAGE: &str = "SNOWGATE_STAGE";

/// Every peer of one test, plus the config that points a gateway at them.
pub struct Peers {
    pub pg: PgSchema,
    pub s3: S3Server,
    pub fakesnow: Fakesnow,
    pub snowflake: SnowflakeConfig,
    pub dir: tempfile::TempDir,
}

impl Peers {
    pub async fn start() -> Peers {
        let dir = tempfile::tempdir().unwrap();
        let pg = PgSchema::create().await;
        let s3 = S3Server::start();
        // The gateway finds S3 credentials where production does: in AWS_* variables. Every test
        // uses the same constant credentials, so concurrent tests cannot disagree about them.
        for (key, value) in s3.credentials_env() {
            std::env::set_var(key, value);
        }
        let fakesnow = Fakesnow::start(dir.path()).await;
        let snowflake = fakesnow.config(STAGE);
        // The external stage reads the very objects s3s-fs stored (fakesnow reads file:// URLs only).
        let folder = s3.root.join(&s3.bucket).join(&s3.prefix);
        std::fs::create_dir_all(&folder).unwrap();
        fakesnow.prepare(&snowflake, &folder.canonicalize().unwrap()).await;
        Peers { pg, s3, fakesnow, snowflake, dir }
    }

    pub fn config(&self, data_dir: &Path) -> Config {
        let mut config = test_config(data_dir);
        config.stage = self.s3.stage_config();
        config.ledger.url = Some(snowgate::config::Secret::new(self.pg.url.clone()));
        config.warehouse.kind = WarehouseKind::Snowflake;
        config.warehouse.snowflake = Some(self.snowflake.clone());
        config
    }

    /// Points a gateway process at the S3 stage: `[stage]` and the AWS_* credentials, by env.
    pub fn s3_env(&self, command: &mut Command) {
        command.envs(self.s3.gateway_env());
    }

    /// Points a gateway process at every peer, through the environment only.
    pub fn process_env(&self, command: &mut Command) {
        let sf = &self.snowflake;
        self.s3_env(command);
        command
            .env("SNOWGATE_LEDGER__URL", &self.pg.url)
            .env("SNOWGATE_WAREHOUSE__KIND", "snowflake")
            .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__ACCOUNT", &sf.account)
            .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__USER", &sf.user)
            .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__DATABASE", &sf.database)
            .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__SCHEMA", &sf.schema)
            .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__STAGE", &sf.stage)
            .env("SNOWGATE_WAREHOUSE__SNOWFLAKE__BASE_URL", sf.base_url.as_ref().unwrap())
            .env("SNOWFLAKE_PASSWORD", "not-checked");
    }

    /// A separate client for checking what landed in the warehouse.
    pub fn warehouse(&self) -> SnowflakeWarehouse {
        SnowflakeWarehouse::connect(&self.snowflake).unwrap()
    }
}

/// The first value of a one-row query, as text.
pub async fn one_number(warehouse: &SnowflakeWarehouse, sql: &str) -> String {
    let rows = warehouse.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.rows[0][0].clone().unwrap_or_default()
}
