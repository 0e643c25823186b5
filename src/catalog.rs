//! Table schemas, cached: discovered from the warehouse, refined by the ledger, changed by DDL.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::Utc;
use uuid::Uuid;

use crate::buffer::encode::arrow_type;
use crate::ingest::drift::DriftPolicy;
use crate::ledger::{Ledger, LedgerError, TableRecord};
use crate::schema::{normalize_column_name, normalize_identifier, Column, TableSchema};
use crate::warehouse::{Warehouse, WarehouseError};

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid table name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("table {0} does not exist; declare it with PUT /v1/tables/{0}")]
    NotFound(String),
    #[error("invalid table definition: {0}")]
    InvalidDefinition(String),
    #[error("table {table} conflicts with the warehouse: {reason}")]
    Conflict { table: String, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// One cached table.
pub struct TableEntry {
    pub name: String,
    schema: RwLock<Arc<TableSchema>>,
    drift: RwLock<DriftPolicy>,
}

impl TableEntry {
    pub fn schema(&self) -> Arc<TableSchema> {
        self.schema.read().expect("schema lock").clone()
    }

    pub fn drift(&self) -> DriftPolicy {
        *self.drift.read().expect("drift lock")
    }
}

/// The table cache. DDL on one table is serialised through a per-table lock.
pub struct Catalog {
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    default_drift: DriftPolicy,
    tables: RwLock<HashMap<String, Arc<TableEntry>>>,
    ddl_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Normalises a table name from a URL path.
pub fn table_name(raw: &str) -> Result<String, CatalogError> {
    normalize_identifier(raw)
        .map_err(|e| CatalogError::InvalidName { name: raw.to_string(), reason: e.to_string() })
        .and_then(|name| {
            if name.starts_with("_SNOWGATE") {
                Err(CatalogError::InvalidName { name: raw.to_string(), reason: "reserved for snowgate".into() })
            } else {
                Ok(name)
            }
        })
}

/// Keeps the ledger's type where it only refines the warehouse's (VARCHAR(n) for VARCHAR, VARIANT
/// for JSON text): both write the same Arrow type. Otherwise the warehouse is the truth.
fn refine(warehouse: &Column, known: Option<&Column>) -> Column {
    match known {
        Some(k) if arrow_type(k.ty) == arrow_type(warehouse.ty) => {
            Column { name: warehouse.name.clone(), ty: k.ty, nullable: warehouse.nullable && k.nullable }
        }
        _ => warehouse.clone(),
    }
}

fn merge(warehouse: &[Column], known: &[Column]) -> Vec<Column> {
    warehouse.iter().map(|w| refine(w, known.iter().find(|k| k.name == w.name))).collect()
}

impl Catalog {
    pub fn new(ledger: Arc<dyn Ledger>, warehouse: Arc<dyn Warehouse>, default_drift: DriftPolicy) -> Self {
        Catalog {
            ledger,
            warehouse,
            default_drift,
            tables: RwLock::new(HashMap::new()),
            ddl_locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn ddl_lock(&self, table: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.ddl_locks.lock().expect("ddl locks").entry(table.to_string()).or_default().clone()
    }

    fn cache(&self, record: &TableRecord) -> Arc<TableEntry> {
        let entry = Arc::new(TableEntry {
            name: record.name.clone(),
            schema: RwLock::new(Arc::new(TableSchema { name: record.name.clone(), columns: record.columns.clone() })),
            drift: RwLock::new(record.drift),
        });
        self.tables.write().expect("tables lock").insert(record.name.clone(), entry.clone());
        entry
    }

    /// The table, from cache or loaded from the ledger and the warehouse.
    pub async fn get(&self, name: &str) -> Result<Arc<TableEntry>, CatalogError> {
        if let Some(entry) = self.tables.read().expect("tables lock").get(name) {
            return Ok(entry.clone());
        }
        let lock = self.ddl_lock(name);
        let _guard = lock.lock().await;
        if let Some(entry) = self.tables.read().expect("tables lock").get(name) {
            return Ok(entry.clone());
        }
        let _replicas = self.ledger.lock_ddl(name).await?;
        let known = self.ledger.get_table(name).await?;
        let described = self.warehouse.describe(name).await?;
        let now = Utc::now();
        let record = match (known, described) {
            (None, None) => return Err(CatalogError::NotFound(name.to_string())),
            (Some(known), None) => {
                // The warehouse lost the table (a new DuckDB file, say): recreate it as recorded.
                self.warehouse.create_table(name, &known.columns).await?;
                known
            }
            (known, Some(desc)) => {
                if !desc.has_metadata {
                    self.warehouse.add_metadata_columns(name).await?;
                }
                let (drift, created_at, known_columns) = match known {
                    Some(k) => (k.drift, k.created_at, k.columns),
                    None => (self.default_drift, now, Vec::new()),
                };
                let record = TableRecord {
                    name: name.to_string(),
                    drift,
                    columns: merge(&desc.columns, &known_columns),
                    created_at,
                    updated_at: now,
                };
                self.ledger.put_table(&record).await?;
                record
            }
        };
        Ok(self.cache(&record))
    }

    /// Declares a table: creates it, or checks an existing one and adds the missing nullable columns.
    /// Returns the table and whether it was created.
    pub async fn declare(
        &self,
        name: &str,
        columns: Vec<Column>,
        drift: Option<DriftPolicy>,
    ) -> Result<(TableRecord, bool), CatalogError> {
        let mut declared: Vec<Column> = Vec::with_capacity(columns.len());
        for column in columns {
            let normalized = normalize_column_name(&column.name)
                .map_err(|e| CatalogError::InvalidDefinition(format!("column {:?}: {e}", column.name)))?;
            if declared.iter().any(|c| c.name == normalized) {
                return Err(CatalogError::InvalidDefinition(format!("column {normalized} is declared twice")));
            }
            declared.push(Column { name: normalized, ..column });
        }
        let lock = self.ddl_lock(name);
        let _guard = lock.lock().await;
        let _replicas = self.ledger.lock_ddl(name).await?;
        let known = self.ledger.get_table(name).await?;
        let drift = drift.or(known.as_ref().map(|k| k.drift)).unwrap_or(self.default_drift);
        let now = Utc::now();
        let created_at = known.as_ref().map(|k| k.created_at).unwrap_or(now);
        let Some(desc) = self.warehouse.describe(name).await? else {
            if declared.is_empty() {
                return Err(CatalogError::InvalidDefinition("a new table needs at least one column".into()));
            }
            self.warehouse.create_table(name, &declared).await?;
            let record = TableRecord { name: name.to_string(), drift, columns: declared, created_at, updated_at: now };
            self.ledger.put_table(&record).await?;
            self.cache(&record);
            return Ok((record, true));
        };
        if !desc.has_metadata {
            self.warehouse.add_metadata_columns(name).await?;
        }
        let mut missing = Vec::new();
        for column in &declared {
            match desc.columns.iter().find(|c| c.name == column.name) {
                Some(existing) if arrow_type(existing.ty) != arrow_type(column.ty) => {
                    return Err(CatalogError::Conflict {
                        table: name.to_string(),
                        reason: format!(
                            "column {} is {} in the warehouse, declared {}",
                            column.name, existing.ty, column.ty
                        ),
                    });
                }
                Some(_) => {}
                None if !column.nullable => {
                    return Err(CatalogError::Conflict {
                        table: name.to_string(),
                        reason: format!("cannot add NOT NULL column {} to an existing table", column.name),
                    });
                }
                None => missing.push(column.clone()),
            }
        }
        if !missing.is_empty() {
            self.warehouse.add_columns(name, &missing).await?;
        }
        let mut columns = merge(&desc.columns, &declared);
        columns.extend(missing.iter().cloned());
        // Declared NOT NULL is enforced by the gateway even where the warehouse column is nullable.
        for column in &mut columns {
            if let Some(d) = declared.iter().find(|d| d.name == column.name) {
                column.nullable = column.nullable && d.nullable;
            }
        }
        let record = TableRecord { name: name.to_string(), drift, columns, created_at, updated_at: now };
        self.ledger.put_table(&record).await?;
        if !missing.is_empty() {
            self.ledger.add_columns(name, &missing, None).await?;
        }
        self.cache(&record);
        Ok((record, false))
    }

    /// Adds nullable columns for new fields (the `evolve` policy) and returns the schema to
    /// validate against: the warehouse's real type wins when another writer added a column first.
    pub async fn evolve(
        &self,
        entry: &TableEntry,
        planned: &[Column],
        batch_id: Uuid,
    ) -> Result<Arc<TableSchema>, CatalogError> {
        let lock = self.ddl_lock(&entry.name);
        let _guard = lock.lock().await;
        let _replicas = self.ledger.lock_ddl(&entry.name).await?;
        let current = entry.schema();
        let missing: Vec<Column> = planned.iter().filter(|p| current.position(&p.name).is_none()).cloned().collect();
        if missing.is_empty() {
            return Ok(current);
        }
        self.warehouse.add_columns(&entry.name, &missing).await?;
        let desc =
            self.warehouse.describe(&entry.name).await?.ok_or_else(|| CatalogError::NotFound(entry.name.clone()))?;
        let mut columns = current.columns.clone();
        let mut added = Vec::new();
        for column in &missing {
            let Some(real) = desc.columns.iter().find(|c| c.name == column.name) else {
                return Err(CatalogError::Warehouse(WarehouseError::Statement(format!(
                    "column {} is missing after ALTER TABLE",
                    column.name
                ))));
            };
            let column = refine(real, Some(column));
            columns.push(column.clone());
            added.push(column);
        }
        self.ledger.add_columns(&entry.name, &added, Some(batch_id)).await?;
        for column in &added {
            tracing::info!(table = %entry.name, column = %column.name, ty = %column.ty, batch_id = %batch_id, "added column");
        }
        let schema = Arc::new(TableSchema { name: entry.name.clone(), columns });
        *entry.schema.write().expect("schema lock") = schema.clone();
        Ok(schema)
    }

    /// All tables the ledger knows.
    pub async fn list(&self) -> Result<Vec<TableRecord>, CatalogError> {
        Ok(self.ledger.list_tables().await?)
    }

    /// One table's record, discovering it from the warehouse if needed.
    pub async fn record(&self, name: &str) -> Result<TableRecord, CatalogError> {
        self.get(name).await?;
        self.ledger.get_table(name).await?.ok_or_else(|| CatalogError::NotFound(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;

    #[test]
    fn ledger_refines_but_never_contradicts_the_warehouse() {
        let warehouse = Column { name: "NOTE".into(), ty: ColumnType::VARCHAR, nullable: true };
        let known = Column { name: "NOTE".into(), ty: ColumnType::Varchar { max_len: 10 }, nullable: true };
        assert_eq!(refine(&warehouse, Some(&known)).ty, ColumnType::Varchar { max_len: 10 });
        let variant = Column { name: "NOTE".into(), ty: ColumnType::Variant, nullable: true };
        assert_eq!(refine(&warehouse, Some(&variant)).ty, ColumnType::Variant);
        let number = Column { name: "NOTE".into(), ty: ColumnType::INTEGER, nullable: true };
        assert_eq!(refine(&warehouse, Some(&number)).ty, ColumnType::VARCHAR);
    }

    #[test]
    fn table_names_are_case_insensitive_and_guarded() {
        assert_eq!(table_name("loans").unwrap(), "LOANS");
        assert!(table_name("_snowgate_load_history").is_err());
        assert!(table_name("").is_err());
    }
}
