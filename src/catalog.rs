//! Table schemas, cached: discovered from the warehouse, refined by the ledger, changed by DDL.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use crate::buffer::encode::arrow_type;
use crate::config::Config;
use crate::ingest::drift::DriftPolicy;
use crate::ledger::{ChangeCause, ColumnChange, Ledger, LedgerError, Partner, TableRecord};
use crate::schema::{Column, ColumnName, TableName, TableSchema, RESCUED_DATA};
use crate::warehouse::{Warehouse, WarehouseError};

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("table {0} does not exist; declare it with PUT /v1/tables/{0}")]
    NotFound(TableName),
    #[error("invalid table definition: {0}")]
    InvalidDefinition(String),
    #[error("table {table} conflicts with the warehouse: {reason}")]
    Conflict { table: TableName, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// One cached table.
pub struct TableEntry {
    pub name: TableName,
    schema: RwLock<Arc<TableSchema>>,
    drift: RwLock<DriftPolicy>,
    aliases: RwLock<Arc<BTreeMap<String, String>>>,
    /// The ledger's version of the table the entry reflects, and when that was last compared.
    version: Mutex<(u64, Instant)>,
}

impl TableEntry {
    fn new(name: &TableName, record: &TableRecord) -> Self {
        TableEntry {
            name: name.clone(),
            schema: RwLock::new(Arc::new(TableSchema { name: name.to_string(), columns: record.columns.clone() })),
            drift: RwLock::new(record.drift),
            aliases: RwLock::new(Arc::new(record.aliases.clone())),
            version: Mutex::new((record.version, Instant::now())),
        }
    }

    pub fn schema(&self) -> Arc<TableSchema> {
        self.schema.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn drift(&self) -> DriftPolicy {
        *self.drift.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Renamed fields: normalised field name to the column it loads into.
    pub fn aliases(&self) -> Arc<BTreeMap<String, String>> {
        self.aliases.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when the entry was compared with the ledger less than `max_age` ago.
    fn fresh(&self, max_age: Duration) -> bool {
        self.version.lock().unwrap_or_else(|p| p.into_inner()).1.elapsed() < max_age
    }

    /// Takes another replica's changes (a re-declaration, a new column, a new policy). Only a
    /// newer record is applied: a read that raced this replica's own change never undoes it.
    fn refresh(&self, record: &TableRecord) {
        let mut version = self.version.lock().unwrap_or_else(|p| p.into_inner());
        if record.version > version.0 {
            version.0 = record.version;
            let schema = TableSchema { name: self.name.to_string(), columns: record.columns.clone() };
            *self.schema.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(schema);
            *self.drift.write().unwrap_or_else(|p| p.into_inner()) = record.drift;
            *self.aliases.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(record.aliases.clone());
        }
        version.1 = Instant::now();
    }
}

/// The table cache. DDL on one table is serialised through a per-table lock; a cached table is
/// compared with the ledger again once it is older than `refresh`, so that a change made through
/// another replica takes effect here.
pub struct Catalog {
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    /// Policy of a table declared without one: its `[tables.X].drift`, else `[defaults].drift`.
    default_drift: DriftPolicy,
    configured_drift: BTreeMap<TableName, DriftPolicy>,
    refresh: Duration,
    tables: RwLock<HashMap<TableName, Arc<TableEntry>>>,
    ddl_locks: Mutex<HashMap<TableName, Arc<tokio::sync::Mutex<()>>>>,
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
    pub fn new(ledger: Arc<dyn Ledger>, warehouse: Arc<dyn Warehouse>, config: &Config) -> Self {
        let configured_drift =
            config.tables.iter().filter_map(|(name, o)| o.drift.map(|drift| (name.clone(), drift))).collect();
        Catalog {
            ledger,
            warehouse,
            default_drift: config.defaults.drift,
            configured_drift,
            refresh: config.server.schema_refresh,
            tables: RwLock::new(HashMap::new()),
            ddl_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The policy a table gets when its declaration names none.
    pub fn configured_drift(&self, table: &TableName) -> DriftPolicy {
        self.configured_drift.get(table).copied().unwrap_or(self.default_drift)
    }

    fn ddl_lock(&self, table: &TableName) -> Arc<tokio::sync::Mutex<()>> {
        self.ddl_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(table.clone()).or_default().clone()
    }

    fn cached(&self, name: &TableName) -> Option<Arc<TableEntry>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn cache(&self, name: &TableName, record: &TableRecord) -> Arc<TableEntry> {
        let entry = Arc::new(TableEntry::new(name, record));
        self.tables.write().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), entry.clone());
        entry
    }

    /// The table to ingest into: cached (and compared with the ledger once stale), or loaded from
    /// the ledger and the warehouse, creating or completing the warehouse table as recorded.
    pub async fn get(&self, name: &TableName) -> Result<Arc<TableEntry>, CatalogError> {
        if let Some(entry) = self.cached(name) {
            if entry.fresh(self.refresh) {
                return Ok(entry);
            }
            match self.ledger.get_table(name).await {
                Ok(Some(record)) => {
                    entry.refresh(&record);
                    return Ok(entry);
                }
                Ok(None) => {}
                // The cached definition is still the best there is; the commit will say whether
                // the ledger is really away.
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "could not refresh a cached table");
                    return Ok(entry);
                }
            }
        }
        let lock = self.ddl_lock(name);
        let _guard = lock.lock().await;
        if let Some(entry) = self.cached(name).filter(|e| e.fresh(self.refresh)) {
            return Ok(entry);
        }
        let _replicas = self.ledger.lock_ddl(name).await?;
        let known = self.ledger.get_table(name).await?;
        let described = self.warehouse.describe(name).await?;
        let now = Utc::now();
        let record = match (known, described) {
            (None, None) => return Err(CatalogError::NotFound(name.clone())),
            (Some(known), None) => {
                // The warehouse lost the table (a new DuckDB file, say): recreate it as recorded.
                self.warehouse.create_table(name, &known.columns).await?;
                known
            }
            (known, Some(desc)) => {
                if !desc.has_metadata {
                    self.warehouse.add_metadata_columns(name).await?;
                }
                let (drift, created_at, known_columns, aliases) = match known {
                    Some(k) => (k.drift, k.created_at, k.columns, k.aliases),
                    None => (self.configured_drift(name), now, Vec::new(), BTreeMap::new()),
                };
                let record = TableRecord {
                    name: name.to_string(),
                    drift,
                    columns: merge(&desc.columns, &known_columns),
                    aliases,
                    created_at,
                    updated_at: now,
                    version: 0,
                };
                self.ledger.put_table(&record).await?;
                record
            }
        };
        Ok(self.cache(name, &record))
    }

    /// Declares a table: creates it, or checks an existing one and adds the missing nullable columns.
    /// Returns the table and whether it was created.
    pub async fn declare(
        &self,
        name: &TableName,
        columns: Vec<Column>,
        drift: Option<DriftPolicy>,
        aliases: Option<BTreeMap<String, String>>,
        by: &Partner,
    ) -> Result<(TableRecord, bool), CatalogError> {
        let mut declared: Vec<Column> = Vec::with_capacity(columns.len());
        for column in columns {
            if declared.iter().any(|c| c.name == column.name) {
                return Err(CatalogError::InvalidDefinition(format!("column {} is declared twice", column.name)));
            }
            declared.push(column);
        }
        let lock = self.ddl_lock(name);
        let _guard = lock.lock().await;
        let _replicas = self.ledger.lock_ddl(name).await?;
        let known = self.ledger.get_table(name).await?;
        let drift = drift.or(known.as_ref().map(|k| k.drift)).unwrap_or_else(|| self.configured_drift(name));
        let aliases = match aliases {
            Some(aliases) => normalize_aliases(aliases)?,
            None => known.as_ref().map(|k| k.aliases.clone()).unwrap_or_default(),
        };
        if let Some(known) = &known {
            unchanged_columns(name, &known.columns, &declared)?;
        }
        let now = Utc::now();
        let created_at = known.as_ref().map(|k| k.created_at).unwrap_or(now);
        let Some(desc) = self.warehouse.describe(name).await? else {
            if declared.is_empty() {
                return Err(CatalogError::InvalidDefinition("a new table needs at least one column".into()));
            }
            check_aliases(&aliases, &declared)?;
            self.warehouse.create_table(name, &declared).await?;
            let record = TableRecord {
                name: name.to_string(),
                drift,
                columns: declared,
                aliases,
                created_at,
                updated_at: now,
                version: 0,
            };
            self.ledger.put_table(&record).await?;
            return Ok((self.recorded(name, record).await, true));
        };
        if !desc.has_metadata {
            self.warehouse.add_metadata_columns(name).await?;
        }
        let known_columns = known.as_ref().map(|k| k.columns.as_slice()).unwrap_or(&[]);
        let (mut missing, mut widened, mut altered) = (Vec::new(), Vec::new(), Vec::new());
        for column in &declared {
            match desc.columns.iter().find(|c| c.name == column.name) {
                // The warehouse's own type is narrower: widened there, then here.
                Some(existing) if existing.ty.widens_to(column.ty) => {
                    altered.push(column.clone());
                    widened.push(column.clone());
                }
                Some(existing) if arrow_type(existing.ty) != arrow_type(column.ty) => {
                    return Err(CatalogError::Conflict {
                        table: name.clone(),
                        reason: format!(
                            "column {} is {} in the warehouse, declared {}",
                            column.name, existing.ty, column.ty
                        ),
                    });
                }
                // Only the gateway's check is narrower (a VARCHAR(n) over an unbounded column).
                Some(_) => {
                    let known = known_columns.iter().find(|k| k.name == column.name);
                    if known.is_some_and(|k| k.ty.widens_to(column.ty)) {
                        widened.push(column.clone());
                    }
                }
                None if !column.nullable => {
                    return Err(CatalogError::Conflict {
                        table: name.clone(),
                        reason: format!("cannot add NOT NULL column {} to an existing table", column.name),
                    });
                }
                None => missing.push(column.clone()),
            }
        }
        // Checked before any DDL, so that a refused declaration changes nothing.
        let all: Vec<Column> = desc.columns.iter().chain(missing.iter()).cloned().collect();
        check_aliases(&aliases, &all)?;
        for column in &altered {
            self.warehouse.widen_column(name, column).await?;
        }
        if !missing.is_empty() {
            self.warehouse.add_columns(name, &missing).await?;
        }
        // Each warehouse column refined by its declaration, else by what the ledger already
        // enforces: a re-declaration that leaves a column out keeps its type (VARIANT or
        // VARCHAR(n) where DuckDB says VARCHAR) and its NOT NULL. Widened and added columns are
        // left as they were here: the ledger applies and audits them next.
        let mut columns: Vec<Column> = desc
            .columns
            .iter()
            .map(|w| {
                let known = known_columns.iter().find(|k| k.name == w.name);
                let declared = declared.iter().find(|d| d.name == w.name && !widened.contains(d));
                refine(w, declared.or(known))
            })
            .collect();
        // Declared NOT NULL is enforced by the gateway even where the warehouse column is nullable.
        for column in &mut columns {
            if let Some(d) = declared.iter().find(|d| d.name == column.name) {
                column.nullable = column.nullable && d.nullable;
            }
        }
        let record =
            TableRecord { name: name.to_string(), drift, columns, aliases, created_at, updated_at: now, version: 0 };
        self.ledger.put_table(&record).await?;
        let changes: Vec<ColumnChange> =
            widened.drain(..).map(ColumnChange::Widened).chain(missing.drain(..).map(ColumnChange::Added)).collect();
        if !changes.is_empty() {
            let cause = ChangeCause { batch_id: None, partner: by.clone() };
            self.ledger.change_columns(name, &changes, &cause).await?;
        }
        Ok((self.recorded(name, record).await, false))
    }

    /// Caches and returns the ledger's copy of a record just written (with the version the
    /// ledger gave it), or the written record itself if it cannot be read back now.
    async fn recorded(&self, name: &TableName, written: TableRecord) -> TableRecord {
        let record = match self.ledger.get_table(name).await {
            Ok(Some(record)) => record,
            Ok(None) => written,
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "could not re-read a declared table");
                written
            }
        };
        self.cache(name, &record);
        record
    }

    /// Adds nullable columns for new fields (the `evolve` policy) and returns the schema to
    /// validate against: the warehouse's real type wins when another writer added a column first.
    pub async fn evolve(
        &self,
        entry: &TableEntry,
        planned: &[Column],
        batch_id: Uuid,
        partner: &Partner,
    ) -> Result<Arc<TableSchema>, CatalogError> {
        let lock = self.ddl_lock(&entry.name);
        let _guard = lock.lock().await;
        let _replicas = self.ledger.lock_ddl(&entry.name).await?;
        // Another replica may have changed the table since this one read it (a column, an
        // alias): what it holds now, under the lock, decides what is still missing. A planned
        // column that is now an alias key is not added, or it would shadow the alias for good.
        if let Some(record) = self.ledger.get_table(&entry.name).await? {
            entry.refresh(&record);
        }
        let current = entry.schema();
        let aliases = entry.aliases();
        // And the policy as of now: a table frozen (or set to discard) meanwhile gets no column.
        let policy = entry.drift();
        let allowed = |column: &Column| match policy {
            DriftPolicy::Evolve => true,
            DriftPolicy::Rescue => column.name.as_str() == RESCUED_DATA,
            DriftPolicy::DiscardValue | DriftPolicy::DiscardRow | DriftPolicy::Freeze => false,
        };
        let missing: Vec<Column> = planned
            .iter()
            .filter(|p| current.position(&p.name).is_none() && !aliases.contains_key(p.name.as_str()) && allowed(p))
            .cloned()
            .collect();
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
                return Err(CatalogError::Warehouse(WarehouseError::statement(format!(
                    "column {} is missing after ALTER TABLE",
                    column.name
                ))));
            };
            let column = refine(real, Some(column));
            columns.push(column.clone());
            added.push(column);
        }
        let cause = ChangeCause { batch_id: Some(batch_id), partner: partner.clone() };
        self.ledger.add_columns(&entry.name, &added, &cause).await?;
        for column in &added {
            tracing::info!(table = %entry.name, column = %column.name, ty = %column.ty, batch_id = %batch_id, "added column");
        }
        let schema = Arc::new(TableSchema { name: entry.name.to_string(), columns });
        *entry.schema.write().unwrap_or_else(|p| p.into_inner()) = schema.clone();
        // Take the ledger's own version of the change, so that a later refresh sees nothing
        // newer than what this entry already holds. The change is made either way: a failed
        // read only leaves the entry to its next refresh.
        match self.ledger.get_table(&entry.name).await {
            Ok(Some(record)) => entry.refresh(&record),
            Ok(None) => {}
            Err(e) => tracing::warn!(table = %entry.name, error = %e, "could not re-read a table after ALTER"),
        }
        Ok(schema)
    }

    /// All tables the ledger knows.
    pub async fn list(&self) -> Result<Vec<TableRecord>, CatalogError> {
        Ok(self.ledger.list_tables().await?)
    }

    /// One table's record, for reading: the ledger's, or else what the warehouse describes.
    /// Never runs DDL and never writes the ledger.
    pub async fn record(&self, name: &TableName) -> Result<TableRecord, CatalogError> {
        if let Some(record) = self.ledger.get_table(name).await? {
            return Ok(record);
        }
        let desc = self.warehouse.describe(name).await?.ok_or_else(|| CatalogError::NotFound(name.clone()))?;
        let now = Utc::now();
        Ok(TableRecord {
            name: name.to_string(),
            drift: self.configured_drift(name),
            columns: desc.columns,
            aliases: BTreeMap::new(),
            created_at: now,
            updated_at: now,
            version: 0,
        })
    }
}

/// A re-declaration never narrows a column the gateway already enforces: another type (other
/// than a widening: a longer VARCHAR, a NUMBER with more digits and the same scale), or a
/// nullability either way (tightening it would refuse rows the table took; loosening it would
/// drop a constraint) is a conflict naming the column.
fn unchanged_columns(table: &TableName, known: &[Column], declared: &[Column]) -> Result<(), CatalogError> {
    for column in declared {
        let Some(existing) = known.iter().find(|k| k.name == column.name) else { continue };
        let change = if existing.ty != column.ty && !existing.ty.widens_to(column.ty) {
            format!("is {} and cannot be re-declared {}", existing.ty, column.ty)
        } else if existing.nullable != column.nullable {
            let (was, now) = if existing.nullable { ("nullable", "NOT NULL") } else { ("NOT NULL", "nullable") };
            format!("is {was} and cannot be re-declared {now}")
        } else {
            continue;
        };
        return Err(CatalogError::Conflict {
            table: table.clone(),
            reason: format!("column {} {change}", column.name),
        });
    }
    Ok(())
}

/// Declared aliases with both sides normalised as field names are: `{"loanAmount": "amount"}`
/// becomes `LOANAMOUNT -> AMOUNT`.
fn normalize_aliases(aliases: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, CatalogError> {
    let mut normalized = BTreeMap::new();
    for (field, column) in aliases {
        let invalid = |e: crate::schema::IdentifierError| {
            CatalogError::InvalidDefinition(format!("alias {field:?} -> {column:?}: {e}"))
        };
        let (from, to) =
            (ColumnName::normalize(&field).map_err(invalid)?, ColumnName::normalize(&column).map_err(invalid)?);
        if normalized.insert(from.to_string(), to.to_string()).is_some() {
            return Err(CatalogError::InvalidDefinition(format!("alias {field:?} is declared twice")));
        }
    }
    Ok(normalized)
}

/// Every alias names a column of the table and is not itself a column's name.
fn check_aliases(aliases: &BTreeMap<String, String>, columns: &[Column]) -> Result<(), CatalogError> {
    let has = |name: &str| columns.iter().any(|c| c.name.as_str() == name);
    for (field, column) in aliases {
        if has(field) {
            return Err(CatalogError::InvalidDefinition(format!("alias {field} is the name of a column")));
        }
        if !has(column) {
            return Err(CatalogError::InvalidDefinition(format!("alias {field} names no column {column}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnName;
    use crate::schema::ColumnType;

    #[test]
    fn ledger_refines_but_never_contradicts_the_warehouse() {
        let warehouse =
            Column { name: ColumnName::normalize("NOTE").unwrap(), ty: ColumnType::VARCHAR, nullable: true };
        let known = Column {
            name: ColumnName::normalize("NOTE").unwrap(),
            ty: ColumnType::Varchar { max_len: 10 },
            nullable: true,
        };
        assert_eq!(refine(&warehouse, Some(&known)).ty, ColumnType::Varchar { max_len: 10 });
        let variant = Column { name: ColumnName::normalize("NOTE").unwrap(), ty: ColumnType::Variant, nullable: true };
        assert_eq!(refine(&warehouse, Some(&variant)).ty, ColumnType::Variant);
        let number = Column { name: ColumnName::normalize("NOTE").unwrap(), ty: ColumnType::INTEGER, nullable: true };
        assert_eq!(refine(&warehouse, Some(&number)).ty, ColumnType::VARCHAR);
    }
}
