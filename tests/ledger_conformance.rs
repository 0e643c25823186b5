//! One conformance suite for every ledger backend: the same tests, each against a real database.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::postgres::PgSchema;
use serde_json::json;
use snowgate::ingest::drift::DriftPolicy;
use snowgate::ingest::reject::{FieldError, Reject, RejectCode, RejectStage};
use snowgate::ledger::*;
use snowgate::schema::{Column, ColumnName, ColumnType};
use uuid::Uuid;

fn new_batch(table: &str, accepted: u64, rejects: Vec<Reject>) -> NewBatch {
    let rejected = rejects.len() as u64;
    let mut by_code = BTreeMap::new();
    for reject in &rejects {
        *by_code.entry(reject.errors[0].code.as_str().to_string()).or_insert(0) += 1;
    }
    NewBatch {
        id: Uuid::now_v7(),
        table: table.into(),
        partner: "acme".parse().unwrap(),
        counts: Counts { received: accepted + rejected, accepted, rejected, loaded: 0 },
        rejects_by_code: by_code,
        drift: Default::default(),
        received_at: Utc::now(),
        rejects: NewRejects::Whole(rejects),
        replay_of: None,
    }
}

/// Rejects listed whole (none of these tests stages them).
fn whole(entries: Vec<RejectEntry>) -> Vec<Reject> {
    entries
        .into_iter()
        .map(|entry| match entry {
            RejectEntry::Whole(reject) => reject,
            staged => panic!("expected a whole reject, got {staged:?}"),
        })
        .collect()
}

fn reject(index: u64) -> Reject {
    Reject {
        index,
        record: json!({"id": null, "n": index}),
        errors: vec![FieldError {
            path: "/id".into(),
            column: Some("ID".into()),
            code: RejectCode::NullInNotNull,
            message: "m".into(),
        }],
        stage: RejectStage::Gateway,
    }
}

fn file(table: &str, rows: u64) -> NewFile {
    let id = Uuid::now_v7();
    let columns = vec![Column { name: ColumnName::normalize("ID").unwrap(), ty: ColumnType::INTEGER, nullable: false }];
    NewFile { id, table: table.into(), path: format!("{table}/{id}.parquet"), rows, bytes: 100, columns }
}

fn commit(file: NewFile, parts: Vec<(Uuid, u64)>, completed: Vec<NewBatch>, pending: bool) -> StageCommit {
    StageCommit { file: Some(file), parts, completed, pending }
}

const LEASE: Duration = Duration::from_secs(60);

pub async fn tables_and_schema_changes(ledger: Arc<dyn Ledger>) {
    let now = Utc::now();
    let columns = vec![Column { name: ColumnName::normalize("ID").unwrap(), ty: ColumnType::INTEGER, nullable: false }];
    let record = TableRecord {
        name: "LOANS".into(),
        drift: DriftPolicy::Evolve,
        columns,
        aliases: [("LOANAMOUNT".to_string(), "ID".to_string())].into(),
        created_at: now,
        updated_at: now,
        version: 0,
    };
    ledger.put_table(&record).await.unwrap();
    let got = ledger.get_table("LOANS").await.unwrap().unwrap();
    assert_eq!(got.columns, record.columns);
    assert_eq!(got.aliases, record.aliases);
    assert_eq!(got.created_at.timestamp_micros(), now.timestamp_micros());
    assert_eq!(got.version, 1, "the ledger numbers versions");
    assert!(ledger.get_table("OTHER").await.unwrap().is_none());

    let batch = Uuid::now_v7();
    let added = vec![
        Column {
            name: ColumnName::normalize("NOTE").unwrap(),
            ty: ColumnType::Varchar { max_len: 20 },
            nullable: true,
        },
        Column { name: ColumnName::normalize("ID").unwrap(), ty: ColumnType::INTEGER, nullable: true },
    ];
    let cause = ChangeCause { batch_id: Some(batch), partner: "acme".parse().unwrap() };
    ledger.add_columns("LOANS", &added, &cause).await.unwrap();
    let got = ledger.get_table("LOANS").await.unwrap().unwrap();
    let names: Vec<_> = got.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ID", "NOTE"], "existing columns are not added twice");
    assert_eq!(got.columns[1].ty, ColumnType::Varchar { max_len: 20 });
    assert_eq!(got.version, 2, "every change adds one");
    ledger.put_table(&record).await.unwrap();
    assert_eq!(ledger.get_table("LOANS").await.unwrap().unwrap().version, 3);
    ledger.put_table(&got).await.unwrap();
    let changes = ledger.schema_changes("LOANS").await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].column.as_str(), changes[0].ty.as_str(), changes[0].batch_id),
        ("NOTE", "VARCHAR(20)", Some(batch))
    );
    assert_eq!(changes[0].partner.as_ref().map(|p| p.as_str()), Some("acme"), "the audit log names the partner");
    assert_eq!(ledger.list_tables().await.unwrap().len(), 1);
    assert!(ledger.add_columns("MISSING", &added, &cause).await.is_err());
}

pub async fn group_commit_then_load_reconciles(ledger: Arc<dyn Ledger>) {
    let a = new_batch("T", 3, vec![reject(1)]);
    let b = new_batch("T", 2, vec![]);
    // A batch whose every record was rejected, in the same commit (the ledger takes one anywhere;
    // the buffer commits such a batch on its own).
    let c = new_batch("T", 0, vec![reject(0), reject(1)]);
    let (a_id, b_id, c_id) = (a.id, b.id, c.id);
    let f = file("T", 5);
    let path = f.path.clone();
    ledger.commit_stage(&commit(f, vec![(a_id, 3), (b_id, 2)], vec![a, b, c], false)).await.unwrap();
    let rejected = ledger.get_batch(c_id).await.unwrap().unwrap();
    assert_eq!(rejected.status, BatchStatus::Rejected);
    assert_eq!(rejected.counts, Counts { received: 2, accepted: 0, rejected: 2, loaded: 0 });
    assert!(rejected.staged_at.is_none() && rejected.files.is_empty());
    assert_eq!(ledger.get_batch(b_id).await.unwrap().unwrap().counts.received, 2);

    let staged = ledger.get_batch(a_id).await.unwrap().unwrap();
    assert_eq!(staged.status, BatchStatus::Staged);
    assert_eq!(staged.counts, Counts { received: 4, accepted: 3, rejected: 1, loaded: 0 });
    assert_eq!(staged.rejects_by_code, BTreeMap::from([("null_in_not_null".to_string(), 1)]));
    assert_eq!(staged.files.len(), 1);
    assert_eq!((staged.files[0].path.as_str(), staged.files[0].rows), (path.as_str(), 3));
    let known = ledger.known_paths(&[path.clone(), "T/never/committed.parquet".into()]).await.unwrap();
    assert_eq!(known, std::collections::BTreeSet::from([path.clone()]), "the sweeper's question");
    assert_eq!(staged.files[0].attempts, 0);
    assert!(staged.staged_at.is_some());

    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].rows, claimed[0].attempts), (5, 1));
    assert!(ledger.claim_files("two", LEASE, 10).await.unwrap().is_empty(), "a live claim is exclusive");
    assert_eq!(ledger.get_batch(b_id).await.unwrap().unwrap().status, BatchStatus::Loading);

    let outcome = FileOutcome::Loaded { id: claimed[0].id, rows: 5, query_id: Some("q-1".into()) };
    ledger.complete_files("one", &[outcome]).await.unwrap();
    let loaded = ledger.get_batch(a_id).await.unwrap().unwrap();
    assert_eq!(loaded.status, BatchStatus::Loaded);
    assert_eq!(loaded.counts.loaded, 3);
    assert_eq!(loaded.counts.received, loaded.counts.loaded + loaded.counts.rejected);
    assert_eq!(loaded.files[0].query_id.as_deref(), Some("q-1"));
    assert_eq!(loaded.files[0].status, FileStatus::Loaded);
    assert!(loaded.loaded_at.is_some());
    assert_eq!(ledger.get_batch(b_id).await.unwrap().unwrap().counts.loaded, 2);
    assert!(ledger.claim_files("one", LEASE, 10).await.unwrap().is_empty());
}

/// A commit completing more batches than one statement inserts, and more than one statement of
/// SQLite could take (13 parameters a batch, 32,766 a statement): every batch is stored with its
/// own counts and rejects, and the one among them with an earlier pending part frees it.
pub async fn a_commit_completes_batches_over_several_statements(ledger: Arc<dyn Ledger>) {
    let split = new_batch("M", 2, vec![]);
    ledger.commit_stage(&commit(file("M", 1), vec![(split.id, 1)], vec![], true)).await.unwrap();
    // 2,600 batches: one row each, every seventh with a reject, every hundredth all rejected.
    let mut batches: Vec<NewBatch> = (0..2_600u64)
        .map(|i| match i {
            _ if i % 100 == 99 => new_batch("M", 0, vec![reject(0)]),
            _ if i % 7 == 3 => new_batch("M", 1, vec![reject(i)]),
            _ => new_batch("M", 1, vec![]),
        })
        .collect();
    batches.insert(2_500, split);
    let parts: Vec<(Uuid, u64)> =
        batches.iter().filter(|b| b.counts.accepted > 0).map(|b| (b.id, b.counts.accepted.min(1))).collect();
    let rows = parts.iter().map(|(_, rows)| rows).sum();
    let expected: Vec<(Uuid, Counts)> = batches.iter().map(|b| (b.id, b.counts)).collect();
    ledger.commit_stage(&commit(file("M", rows), parts, batches, false)).await.unwrap();
    for (id, counts) in expected {
        let stored = ledger.get_batch(id).await.unwrap().unwrap_or_else(|| panic!("batch {id} stored"));
        assert_eq!(stored.counts, counts);
        let status = if counts.accepted == 0 { BatchStatus::Rejected } else { BatchStatus::Staged };
        assert_eq!(stored.status, status);
        assert_eq!(stored.staged_at.is_some(), status == BatchStatus::Staged);
        let rejects = ledger.list_rejects(id, &RejectFilter::default(), None, 10).await.unwrap();
        assert_eq!(rejects.len() as u64, counts.rejected);
    }
    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 2, "the split batch's earlier part became loadable with the rest");
}

pub async fn pending_parts_wait_for_the_last_commit(ledger: Arc<dyn Ledger>) {
    let batch = new_batch("T", 30, vec![]);
    let id = batch.id;
    ledger.commit_stage(&commit(file("T", 10), vec![(id, 10)], vec![], true)).await.unwrap();
    ledger.commit_stage(&commit(file("T", 10), vec![(id, 10)], vec![], true)).await.unwrap();
    assert!(ledger.claim_files("one", LEASE, 10).await.unwrap().is_empty(), "pending parts are not loadable");
    assert!(ledger.get_batch(id).await.unwrap().is_none(), "no batch before its last part");
    ledger.commit_stage(&commit(file("T", 10), vec![(id, 10)], vec![batch], false)).await.unwrap();
    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let outcomes: Vec<_> = claimed.iter().map(|f| FileOutcome::Loaded { id: f.id, rows: 10, query_id: None }).collect();
    ledger.complete_files("one", &outcomes[..2]).await.unwrap();
    let partial = ledger.get_batch(id).await.unwrap().unwrap();
    assert_eq!((partial.status, partial.counts.loaded), (BatchStatus::Loading, 20));
    ledger.complete_files("one", &outcomes[2..]).await.unwrap();
    let done = ledger.get_batch(id).await.unwrap().unwrap();
    assert_eq!((done.status, done.counts.loaded), (BatchStatus::Loaded, 30));

    // A pending part whose batch never completed is swept.
    let orphan = new_batch("T", 1, vec![]);
    ledger.commit_stage(&commit(file("T", 1), vec![(orphan.id, 1)], vec![], true)).await.unwrap();
    assert_eq!(ledger.abandon_pending(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(ledger.abandon_pending(Duration::from_millis(1)).await.unwrap(), 1);
}

pub async fn leases_expire_and_releases_delay(ledger: Arc<dyn Ledger>) {
    let batch = new_batch("T", 1, vec![]);
    let id = batch.id;
    ledger.commit_stage(&commit(file("T", 1), vec![(id, 1)], vec![batch], false)).await.unwrap();
    let first = ledger.claim_files("crashed", Duration::from_millis(200), 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(ledger.claim_files("other", LEASE, 10).await.unwrap().is_empty());
    // The same replica, restarted, releases what its previous life held without waiting for the lease.
    assert_eq!(ledger.release_claims_of("someone else").await.unwrap(), 0);
    assert_eq!(ledger.release_claims_of("crashed").await.unwrap(), 1);
    let again = ledger.claim_files("crashed", Duration::from_millis(200), 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 2), "claimable at once after the release");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = ledger.claim_files("other", LEASE, 10).await.unwrap();
    assert_eq!(second.len(), 1, "an expired lease is claimable");
    assert_eq!(second[0].attempts, 3);

    ledger.release_files("other", &[second[0].id], "warehouse down", Duration::from_millis(300), true).await.unwrap();
    assert!(ledger.claim_files("other", LEASE, 10).await.unwrap().is_empty(), "released files wait for their delay");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = ledger.claim_files("other", LEASE, 10).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(
        (third[0].attempts, third[0].statement_failures),
        (4, 1),
        "claims and unclassified failures counted apart"
    );

    let failure = FileOutcome::Failed { id: third[0].id, error: "bad data".into(), query_id: None };
    ledger.complete_files("other", &[failure]).await.unwrap();
    let failed = ledger.get_batch(id).await.unwrap().unwrap();
    assert_eq!(failed.status, BatchStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("bad data"));
}

pub async fn rejects_and_batch_lists(ledger: Arc<dyn Ledger>) {
    let rejected = new_batch("T", 0, (0..25).map(reject).collect());
    let rejected_id = rejected.id;
    ledger
        .commit_stage(&StageCommit { file: None, parts: vec![], completed: vec![rejected], pending: false })
        .await
        .unwrap();
    let record = ledger.get_batch(rejected_id).await.unwrap().unwrap();
    assert_eq!(record.status, BatchStatus::Rejected);
    assert!(record.staged_at.is_none());

    let page = whole(ledger.list_rejects(rejected_id, &RejectFilter::default(), None, 10).await.unwrap());
    assert_eq!(page.iter().map(|r| r.index).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!(page[3].record, json!({"id": null, "n": 3}));
    assert_eq!(page[3].errors[0].code, RejectCode::NullInNotNull);
    let rest = whole(ledger.list_rejects(rejected_id, &RejectFilter::default(), Some(9), 100).await.unwrap());
    assert_eq!(rest.len(), 15);
    assert_eq!(rest[0].index, 10);
    // The drift report's source: rejects of a table's batches in a window, by partner.
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    let errors = ledger.reject_errors("T", hour_ago, None, 1000).await.unwrap();
    assert_eq!(errors.len(), 25);
    assert_eq!((errors[0].0.as_str(), errors[0].1[0].column.as_deref()), ("acme", Some("ID")));
    assert_eq!(ledger.reject_errors("T", hour_ago, None, 10).await.unwrap().len(), 10, "bounded");
    let globex = "globex".parse().unwrap();
    assert!(ledger.reject_errors("T", hour_ago, Some(&globex), 1000).await.unwrap().is_empty());
    assert!(ledger.reject_errors("T", Utc::now() + chrono::Duration::hours(1), None, 1000).await.unwrap().is_empty());

    let mut other = new_batch("U", 1, vec![]);
    other.partner = "globex".parse().unwrap();
    let other_id = other.id;
    ledger.commit_stage(&commit(file("U", 1), vec![(other_id, 1)], vec![other], false)).await.unwrap();
    let all = ledger.list_batches(&BatchFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), vec![other_id, rejected_id], "newest first");
    let by_table = ledger.list_batches(&BatchFilter { table: Some("T".into()), ..Default::default() }).await.unwrap();
    assert_eq!(by_table.len(), 1);
    let by_partner = ledger
        .list_batches(&BatchFilter { partner: Some("globex".parse().unwrap()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(by_partner[0].id, other_id);
    let by_status =
        ledger.list_batches(&BatchFilter { status: Some(BatchStatus::Rejected), ..Default::default() }).await.unwrap();
    assert_eq!(by_status[0].id, rejected_id);
    let after = ledger.list_batches(&BatchFilter { after: Some(other_id), ..Default::default() }).await.unwrap();
    assert_eq!(after[0].id, rejected_id);
    let future = ledger
        .list_batches(&BatchFilter { since: Some(Utc::now() + chrono::Duration::hours(1)), ..Default::default() })
        .await
        .unwrap();
    assert!(future.is_empty());
    assert!(ledger.get_batch(Uuid::now_v7()).await.unwrap().is_none());
    ledger.ping().await.unwrap();
}

pub async fn renewed_claims_outlast_their_first_lease(ledger: Arc<dyn Ledger>) {
    let batch = new_batch("T", 1, vec![]);
    let id = batch.id;
    ledger.commit_stage(&commit(file("T", 1), vec![(id, 1)], vec![batch], false)).await.unwrap();
    let claimed = ledger.claim_files("live", Duration::from_millis(300), 10).await.unwrap();
    let ids = [claimed[0].id];
    assert_eq!(ledger.renew_claims("someone else", &ids, LEASE).await.unwrap(), 0, "only the owner renews");
    assert_eq!(ledger.renew_claims("live", &ids, LEASE).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ledger.claim_files("other", LEASE, 10).await.unwrap().is_empty(), "the renewed lease still holds");
    ledger.complete_files("live", &[FileOutcome::Loaded { id: ids[0], rows: 1, query_id: None }]).await.unwrap();
    assert_eq!(ledger.renew_claims("live", &ids, LEASE).await.unwrap(), 0, "a finished file is no longer held");
}

pub async fn unique_keys_are_conflicts_and_roll_back(ledger: Arc<dyn Ledger>) {
    let first = new_batch("T", 1, vec![]);
    let staged = file("T", 1);
    ledger.commit_stage(&commit(staged.clone(), vec![(first.id, 1)], vec![first], false)).await.unwrap();
    // A second commit that reuses the file's path: the unique key says no, and nothing of it stays.
    let second = new_batch("T", 1, vec![]);
    let second_id = second.id;
    let again = NewFile { id: Uuid::now_v7(), ..staged };
    let err = ledger.commit_stage(&commit(again, vec![(second_id, 1)], vec![second], false)).await.unwrap_err();
    assert!(matches!(err, LedgerError::Conflict(_)), "{err:?}");
    assert!(!err.is_unavailable());
    assert!(ledger.get_batch(second_id).await.unwrap().is_none(), "the failed commit left nothing behind");
    assert_eq!(ledger.claim_files("me", LEASE, 10).await.unwrap().len(), 1);
}

pub async fn keys_are_stored_as_digests_and_revoked(ledger: Arc<dyn Ledger>) {
    assert!(!ledger.any_keys().await.unwrap());
    let key = ApiKey {
        id: "00112233445566aa".into(),
        partner: "acme".parse().unwrap(),
        tables: vec!["LOANS".into()],
        operator: false,
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
        secret_hash: "ab".repeat(32),
    };
    ledger.insert_key(&key).await.unwrap();
    let err = ledger.insert_key(&key).await.unwrap_err();
    assert!(matches!(err, LedgerError::Conflict(_)), "an id is never reused: {err:?}");
    assert!(ledger.any_keys().await.unwrap());
    let read = ledger.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!((read.partner.as_str(), read.tables.clone(), read.operator), ("acme", vec!["LOANS".into()], false));
    assert_eq!(read.secret_hash, key.secret_hash);
    ledger.touch_key(&key.id).await.unwrap();
    assert!(ledger.get_key(&key.id).await.unwrap().unwrap().last_used_at.is_some());
    let revoked = ledger.revoke_key(&key.id).await.unwrap().unwrap();
    let first = revoked.revoked_at.expect("revoked");
    let again = ledger.revoke_key(&key.id).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(first), "revoking twice keeps the first time");
    assert!(ledger.revoke_key("ffffffffffffffff").await.unwrap().is_none());
    assert_eq!(ledger.list_keys().await.unwrap().len(), 1);
    assert!(ledger.any_keys().await.unwrap(), "a revoked key still closes the gateway");
}

fn claim(key: &str, body: &str, owner: &str, lease: Duration) -> IdempotencyClaim {
    IdempotencyClaim {
        partner: "acme".parse().unwrap(),
        key: key.into(),
        body_hash: body.into(),
        batch_id: Uuid::now_v7(),
        owner: owner.into(),
        lease,
        window: Duration::from_secs(86_400),
    }
}

pub async fn idempotency_keys_make_one_batch(ledger: Arc<dyn Ledger>) {
    let first = claim("k1", "h1", "replica-a", LEASE);
    assert_eq!(ledger.claim_idempotency(&first).await.unwrap(), IdempotencyState::Claimed);
    let duplicate = claim("k1", "h1", "replica-b", LEASE);
    assert_eq!(
        ledger.claim_idempotency(&duplicate).await.unwrap(),
        IdempotencyState::InProgress { batch_id: first.batch_id, body_hash: "h1".into() }
    );
    // Another partner's key of the same name is its own.
    let other = IdempotencyClaim { partner: "beta".parse().unwrap(), ..claim("k1", "h9", "replica-b", LEASE) };
    assert_eq!(ledger.claim_idempotency(&other).await.unwrap(), IdempotencyState::Claimed);
    // Committed: the key answers its batch.
    let batch = NewBatch { id: first.batch_id, ..new_batch("T", 1, vec![]) };
    ledger.commit_stage(&commit(file("T", 1), vec![(batch.id, 1)], vec![batch], false)).await.unwrap();
    assert_eq!(
        ledger.claim_idempotency(&duplicate).await.unwrap(),
        IdempotencyState::Committed { batch_id: first.batch_id, body_hash: "h1".into() }
    );
    ledger.release_idempotency(&first.partner, "k1", first.batch_id).await.unwrap();
    assert!(
        matches!(ledger.claim_idempotency(&duplicate).await.unwrap(), IdempotencyState::Committed { .. }),
        "a committed key is never released"
    );

    // A request that failed before committing lets go; the retry takes the key.
    let failed = claim("k2", "h2", "replica-a", LEASE);
    assert_eq!(ledger.claim_idempotency(&failed).await.unwrap(), IdempotencyState::Claimed);
    ledger.release_idempotency(&failed.partner, "k2", failed.batch_id).await.unwrap();
    assert_eq!(
        ledger.claim_idempotency(&claim("k2", "h2", "replica-b", LEASE)).await.unwrap(),
        IdempotencyState::Claimed
    );

    // A holder whose lease ran out without committing is taken over; so are keys of a replica
    // that restarts.
    let dead = claim("k3", "h3", "replica-a", Duration::ZERO);
    assert_eq!(ledger.claim_idempotency(&dead).await.unwrap(), IdempotencyState::Claimed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        ledger.claim_idempotency(&claim("k3", "h3", "replica-b", LEASE)).await.unwrap(),
        IdempotencyState::Claimed
    );
    let held = claim("k4", "h4", "replica-c", LEASE);
    assert_eq!(ledger.claim_idempotency(&held).await.unwrap(), IdempotencyState::Claimed);
    assert_eq!(ledger.release_idempotency_of("replica-c").await.unwrap(), 1);
    assert_eq!(
        ledger.claim_idempotency(&claim("k4", "h4", "replica-d", LEASE)).await.unwrap(),
        IdempotencyState::Claimed
    );
    // Nothing is older than the window yet; the committed key stays.
    assert_eq!(ledger.sweep_idempotency(Duration::from_secs(3600)).await.unwrap(), 0);
}

/// Runs every suite test against one backend; `$make` builds a fresh, empty ledger.
/// A claimed file split in two, one part loaded and the other's row rejected by the warehouse:
/// the batches reconcile from the parts, the split needs the claim, and a warehouse reject
/// recorded twice counts once.
pub async fn split_files_reconcile_through_their_parts(ledger: Arc<dyn Ledger>) {
    let a = new_batch("T", 3, vec![reject(0)]);
    let b = new_batch("T", 1, vec![]);
    let (a_id, b_id) = (a.id, b.id);
    ledger.commit_stage(&commit(file("T", 4), vec![(a_id, 3), (b_id, 1)], vec![a, b], false)).await.unwrap();
    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    let parent = claimed[0].id;
    let part = |rows: u64, batches: Vec<(Uuid, u64)>| {
        let id = Uuid::now_v7();
        FilePart { id, path: format!("T/{id}.parquet"), rows, bytes: 10, batches }
    };
    let parts = [part(3, vec![(a_id, 2), (b_id, 1)]), part(1, vec![(a_id, 1)])];
    let split = FileSplit { files: &[parent], error: Some("refused"), query_id: Some("q-parent"), parts: &parts };
    assert!(!ledger.split_file(&split, "another", LEASE).await.unwrap(), "only the holder splits");
    assert!(ledger.split_file(&split, "one", LEASE).await.unwrap());
    assert!(!ledger.split_file(&split, "one", LEASE).await.unwrap(), "a file is split once");
    assert!(ledger.claim_files("two", LEASE, 10).await.unwrap().is_empty(), "the parts are the splitter's");
    assert_eq!(ledger.renew_claims("one", &[parts[0].id, parts[1].id], LEASE).await.unwrap(), 2);

    let batch = ledger.get_batch(a_id).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Loading);
    let statuses: Vec<_> = batch.files.iter().map(|f| f.status).collect();
    assert_eq!(statuses, [FileStatus::Split, FileStatus::Loading, FileStatus::Loading]);
    assert_eq!(batch.files[0].query_id.as_deref(), Some("q-parent"));

    // Files not tried yet are cut and merged again into groups, all or none.
    let halves = [part(2, vec![(a_id, 1), (b_id, 1)]), part(1, vec![(a_id, 1)])];
    let cut = FileSplit { files: &[parts[0].id], error: None, query_id: None, parts: &halves };
    assert!(ledger.split_file(&cut, "one", LEASE).await.unwrap());
    let merged = [part(3, vec![(a_id, 2), (b_id, 1)])];
    let stale = FileSplit { files: &[halves[0].id, parent], error: None, query_id: None, parts: &merged };
    assert!(!ledger.split_file(&stale, "one", LEASE).await.unwrap(), "one of the files is not held");
    assert_eq!(ledger.renew_claims("one", &[halves[0].id, halves[1].id], LEASE).await.unwrap(), 2, "none ended");
    let merge = FileSplit { files: &[halves[0].id, halves[1].id], error: None, query_id: None, parts: &merged };
    assert!(ledger.split_file(&merge, "one", LEASE).await.unwrap());
    let batch = ledger.get_batch(b_id).await.unwrap().unwrap();
    let statuses: Vec<_> = batch.files.iter().map(|f| f.status).collect();
    assert_eq!(statuses, [FileStatus::Split, FileStatus::Split, FileStatus::Split, FileStatus::Loading], "{batch:?}");
    let parts = [merged[0].clone(), parts[1].clone()];

    let loaded = [FileOutcome::Loaded { id: parts[0].id, rows: 3, query_id: None }];
    assert_eq!(ledger.complete_files("another", &loaded).await.unwrap(), 0, "only the holder records an outcome");
    ledger.release_files("another", &[parts[0].id], "not mine", Duration::ZERO, false).await.unwrap();
    assert_eq!(ledger.complete_files("one", &loaded).await.unwrap(), 1, "nor releases it");
    let refused = Reject {
        index: 2,
        record: json!({"ID": 2}),
        errors: vec![FieldError {
            path: "/ID".into(),
            column: Some("ID".into()),
            code: RejectCode::WarehouseRejected,
            message: "Constraint Error: refused".into(),
        }],
        stage: RejectStage::Warehouse,
    };
    let outcome = FileOutcome::Rejected { id: parts[1].id, batch: a_id, reject: refused, query_id: Some("q".into()) };
    assert_eq!(ledger.complete_files("one", std::slice::from_ref(&outcome)).await.unwrap(), 1);
    assert_eq!(ledger.complete_files("one", &[outcome]).await.unwrap(), 0, "recorded once");

    let a = ledger.get_batch(a_id).await.unwrap().unwrap();
    assert_eq!(a.status, BatchStatus::Loaded);
    assert_eq!(a.counts, Counts { received: 4, accepted: 3, rejected: 2, loaded: 2 });
    assert_eq!(a.rejects_by_code.get("warehouse_rejected"), Some(&1), "{:?}", a.rejects_by_code);
    let rejected_part = a.files.iter().find(|f| f.path == parts[1].path).unwrap();
    assert_eq!(rejected_part.status, FileStatus::Rejected);
    let rejects = whole(ledger.list_rejects(a_id, &RejectFilter::default(), None, 10).await.unwrap());
    let stages: Vec<_> = rejects.iter().map(|r| (r.index, r.stage)).collect();
    assert_eq!(stages, [(0, RejectStage::Gateway), (2, RejectStage::Warehouse)]);
    // Filtered by code, by column, by both.
    let indexes = |filter: RejectFilter| {
        let ledger = ledger.clone();
        async move {
            let rejects = ledger.list_rejects(a_id, &filter, None, 10).await.unwrap();
            rejects.iter().map(RejectEntry::index).collect::<Vec<_>>()
        }
    };
    let code = |code| RejectFilter { code: Some(code), column: None };
    assert_eq!(indexes(code(RejectCode::WarehouseRejected)).await, [2]);
    assert_eq!(indexes(code(RejectCode::NullInNotNull)).await, [0]);
    assert_eq!(indexes(code(RejectCode::TooLong)).await, Vec::<u64>::new());
    let column = RejectFilter { code: None, column: Some("ID".into()) };
    assert_eq!(indexes(column).await, [0, 2]);
    let both = RejectFilter { code: Some(RejectCode::NullInNotNull), column: Some("NOTE".into()) };
    assert_eq!(indexes(both).await, Vec::<u64>::new());
    // Both conditions hold on one error, not on two: index 0 has no NOT NULL error about NOTE.
    let field = |code, column: &str| FieldError {
        path: format!("/{column}"),
        column: Some(column.into()),
        code,
        message: "m".into(),
    };
    let two = Reject {
        index: 9,
        record: json!({}),
        errors: vec![field(RejectCode::TooLong, "CODE"), field(RejectCode::NullInNotNull, "ID")],
        stage: RejectStage::Gateway,
    };
    let batch = new_batch("T", 0, vec![two]);
    let id = batch.id;
    ledger
        .commit_stage(&StageCommit { file: None, parts: vec![], completed: vec![batch], pending: false })
        .await
        .unwrap();
    let filtered = |code, column: &str| {
        let ledger = ledger.clone();
        let filter = RejectFilter { code: Some(code), column: Some(column.to_string()) };
        async move { ledger.list_rejects(id, &filter, None, 10).await.unwrap().len() }
    };
    assert_eq!(filtered(RejectCode::TooLong, "CODE").await, 1);
    assert_eq!(filtered(RejectCode::TooLong, "ID").await, 0, "the too_long error is about CODE");
    let b = ledger.get_batch(b_id).await.unwrap().unwrap();
    assert_eq!((b.status, b.counts.loaded), (BatchStatus::Loaded, 1));
}

/// Retention removes final batches past their age with their rejects, and files no batch needs;
/// never a batch that is not final, nor a file an open batch still needs.
pub async fn retention_removes_only_what_is_final_and_old(ledger: Arc<dyn Ledger>) {
    let old = |accepted, rejects| {
        let mut batch = new_batch("T", accepted, rejects);
        batch.received_at = Utc::now() - chrono::Duration::days(2);
        batch
    };
    // A: old, loaded, with a reject. B: young, loaded. C: old, still loading. D: old, loaded, its
    // file shared with E, young and still loading another file.
    let (a, b, c, d) = (old(1, vec![reject(5)]), new_batch("T", 1, vec![]), old(1, vec![]), old(1, vec![]));
    let e = new_batch("T", 2, vec![]);
    let ids = [a.id, b.id, c.id, d.id, e.id];
    let files = [file("T", 1), file("T", 1), file("T", 1), file("T", 2), file("T", 1)];
    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let [f1, f2, f3, f4, f5] = files;
    ledger.commit_stage(&commit(f1, vec![(ids[0], 1)], vec![a], false)).await.unwrap();
    ledger.commit_stage(&commit(f2, vec![(ids[1], 1)], vec![b], false)).await.unwrap();
    ledger.commit_stage(&commit(f3, vec![(ids[2], 1)], vec![c], false)).await.unwrap();
    ledger.commit_stage(&commit(f5, vec![(ids[4], 1)], vec![], true)).await.unwrap();
    ledger.commit_stage(&commit(f4, vec![(ids[3], 1), (ids[4], 1)], vec![d, e], false)).await.unwrap();
    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    let loaded: Vec<FileOutcome> = claimed
        .iter()
        .filter(|f| [&paths[0], &paths[1], &paths[3]].contains(&&f.path))
        .map(|f| FileOutcome::Loaded { id: f.id, rows: 1, query_id: None })
        .collect();
    assert_eq!(ledger.complete_files("one", &loaded).await.unwrap(), 3);
    let exists = |id: Uuid| {
        let ledger = ledger.clone();
        async move { ledger.get_batch(id).await.unwrap().is_some() }
    };
    assert_eq!(ledger.get_batch(ids[3]).await.unwrap().unwrap().status, BatchStatus::Loaded);
    assert_eq!(ledger.get_batch(ids[4]).await.unwrap().unwrap().status, BatchStatus::Loading);

    assert_eq!(ledger.purge_batches(Duration::from_secs(86_400), 100).await.unwrap(), 2, "A and D");
    assert!(!exists(ids[0]).await && !exists(ids[3]).await);
    assert!(ledger.list_rejects(ids[0], &RejectFilter::default(), None, 10).await.unwrap().is_empty());
    for id in [ids[1], ids[2], ids[4]] {
        assert!(exists(id).await, "young, or not final");
    }
    let e = ledger.get_batch(ids[4]).await.unwrap().unwrap();
    assert_eq!(e.files.len(), 2, "E keeps the file it shared with D");
    assert_eq!(ledger.known_paths(&paths).await.unwrap().len(), 5, "files are younger than the day kept");

    // Keeping nothing: B goes too; C and E are not final, and their files stay.
    assert_eq!(ledger.purge_batches(Duration::ZERO, 100).await.unwrap(), 1);
    assert!(!exists(ids[1]).await);
    let known = ledger.known_paths(&paths).await.unwrap();
    let expected: std::collections::BTreeSet<String> = [&paths[2], &paths[3], &paths[4]].map(|p| p.clone()).into();
    assert_eq!(known, expected, "the loaded files no batch needs are gone; the open ones stay");
}

/// A widened column takes its new type and is audited with the type it had.
pub async fn widened_columns_are_audited_with_their_previous_type(ledger: Arc<dyn Ledger>) {
    let now = Utc::now();
    let code = |max_len| Column {
        name: ColumnName::normalize("CODE").unwrap(),
        ty: ColumnType::Varchar { max_len },
        nullable: true,
    };
    let record = TableRecord {
        name: "W".into(),
        drift: DriftPolicy::Evolve,
        columns: vec![code(3)],
        aliases: BTreeMap::new(),
        created_at: now,
        updated_at: now,
        version: 0,
    };
    ledger.put_table(&record).await.unwrap();
    let cause = ChangeCause { batch_id: None, partner: "operator".parse().unwrap() };
    ledger.change_columns("W", &[ColumnChange::Widened(code(10))], &cause).await.unwrap();
    ledger.change_columns("W", &[ColumnChange::Widened(code(10))], &cause).await.unwrap();
    assert_eq!(ledger.get_table("W").await.unwrap().unwrap().columns, [code(10)]);
    let changes = ledger.schema_changes("W").await.unwrap();
    assert_eq!(changes.len(), 1, "an unchanged type is not audited again");
    assert_eq!((changes[0].ty.as_str(), changes[0].previous_type.as_deref()), ("VARCHAR(10)", Some("VARCHAR(3)")));
    let missing = Column { name: ColumnName::normalize("NOPE").unwrap(), ty: ColumnType::INTEGER, nullable: true };
    assert!(ledger.change_columns("W", &[ColumnChange::Widened(missing)], &cause).await.is_err());
}

pub async fn replays_correct_each_reject_once(ledger: Arc<dyn Ledger>) {
    let original = new_batch("R", 2, vec![reject(1), reject(3), reject(4)]);
    let original_id = original.id;
    ledger.commit_stage(&commit(file("R", 2), vec![(original_id, 2)], vec![original], false)).await.unwrap();
    let claim = |indexes: Vec<u64>, lease: Duration| ReplayClaim {
        original: original_id,
        replay: Uuid::now_v7(),
        indexes,
        lease,
    };
    let refused = ledger.claim_replay(&claim(vec![0, 1, 2], LEASE), false).await.unwrap();
    assert_eq!(refused, Err(ReplayRefusal::NotRejected(vec![0, 2])), "only rejects may be replayed");
    assert_eq!(ledger.claim_replay(&claim(vec![1], LEASE), true).await.unwrap(), Ok(()));

    let first = claim(vec![1, 3], LEASE);
    assert_eq!(ledger.claim_replay(&first, true).await.unwrap(), Ok(()), "a dry run kept nothing");
    assert_eq!(ledger.claim_replay(&first, false).await.unwrap(), Ok(()));
    assert_eq!(
        ledger.claim_replay(&claim(vec![4, 3], LEASE), false).await.unwrap(),
        Err(ReplayRefusal::AlreadyReplayed { index: 3, by: first.replay }),
        "a record held by a replay on its way"
    );
    // All or none: 4 was not kept by the refused claim; a released claim frees it too.
    let four = claim(vec![4], LEASE);
    assert_eq!(ledger.claim_replay(&four, false).await.unwrap(), Ok(()));
    ledger.release_replay(four.replay).await.unwrap();
    // A claim whose batch was never stored is taken over once its lease is over.
    assert_eq!(ledger.claim_replay(&claim(vec![4], Duration::ZERO), false).await.unwrap(), Ok(()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = claim(vec![4], Duration::ZERO);
    assert_eq!(ledger.claim_replay(&late, false).await.unwrap(), Ok(()), "taken over");
    // Once its replay is stored, a hold is settled: its lease no longer ends it.
    let stored = NewBatch { id: late.replay, replay_of: Some(original_id), ..new_batch("R", 1, vec![]) };
    ledger.commit_stage(&commit(file("R", 1), vec![(late.replay, 1)], vec![stored], false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        ledger.claim_replay(&claim(vec![4], LEASE), false).await.unwrap(),
        Err(ReplayRefusal::AlreadyReplayed { index: 4, by: late.replay })
    );

    // The first replay is stored: record 1 accepted, record 3 rejected again.
    let replay = NewBatch { id: first.replay, replay_of: Some(original_id), ..new_batch("R", 1, vec![reject(3)]) };
    ledger.commit_stage(&commit(file("R", 1), vec![(first.replay, 1)], vec![replay], false)).await.unwrap();
    let stored = ledger.get_batch(first.replay).await.unwrap().unwrap();
    assert_eq!(stored.replay_of, Some(original_id));
    let batch = ledger.get_batch(original_id).await.unwrap().unwrap();
    assert_eq!((batch.fixed, batch.fixing), (0, 2), "records 1 and 4 are on their way; 3 was rejected again");
    assert_eq!(ledger.claim_replay(&claim(vec![3], LEASE), false).await.unwrap(), Ok(()), "3 is free again");
    assert_eq!(
        ledger.claim_replay(&claim(vec![1], LEASE), false).await.unwrap(),
        Err(ReplayRefusal::AlreadyReplayed { index: 1, by: first.replay })
    );

    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let outcomes: Vec<FileOutcome> =
        claimed.iter().map(|f| FileOutcome::Loaded { id: f.id, rows: f.rows, query_id: None }).collect();
    ledger.complete_files("one", &outcomes).await.unwrap();
    let batch = ledger.get_batch(original_id).await.unwrap().unwrap();
    assert_eq!((batch.fixed, batch.fixing), (2, 0));
    let listed = ledger.list_batches(&BatchFilter::default()).await.unwrap();
    let listed = listed.iter().find(|b| b.id == original_id).unwrap();
    assert_eq!((listed.fixed, listed.fixing), (2, 0), "lists count the same");
    assert_eq!(
        ledger.claim_replay(&claim(vec![1], LEASE), false).await.unwrap(),
        Err(ReplayRefusal::AlreadyReplayed { index: 1, by: first.replay }),
        "a loaded correction is never loaded again"
    );

    // Retention takes the replays with their batches.
    assert_eq!(ledger.purge_batches(Duration::ZERO, 100).await.unwrap(), 3);
    assert!(ledger.get_batch(original_id).await.unwrap().is_none());
    let again = NewBatch { id: original_id, ..new_batch("R", 2, vec![reject(1)]) };
    ledger.commit_stage(&commit(file("R", 2), vec![(original_id, 2)], vec![again], false)).await.unwrap();
    assert_eq!(ledger.claim_replay(&claim(vec![1], LEASE), false).await.unwrap(), Ok(()), "no replay row outlived it");
}

/// Rejects kept in the stage: the ledger lists where each line is, filters by the keys it kept,
/// knows the object (so the sweeper leaves it), lets a replay take them, and forgets them with
/// their batch.
pub async fn staged_rejects_are_an_index(ledger: Arc<dyn Ledger>) {
    let mut batch = new_batch("S", 1, vec![]);
    let id = batch.id;
    let path = format!("S/2026/11/30/{id}.rejects.ndjson");
    let key = |code, column: Option<&str>| ErrorKey { code, column: column.map(str::to_string) };
    let entries = vec![
        StagedReject { index: 1, at: 0, len: 120, keys: vec![key(RejectCode::TypeMismatch, Some("AMOUNT"))] },
        StagedReject { index: 4, at: 121, len: 80, keys: vec![key(RejectCode::InvalidJson, None)] },
        StagedReject {
            index: 7,
            at: 202,
            len: 99,
            keys: vec![key(RejectCode::TooLong, Some("CITY")), key(RejectCode::TypeMismatch, Some("ID"))],
        },
    ];
    batch.counts = Counts { received: 4, accepted: 1, rejected: 3, loaded: 0 };
    batch.rejects = NewRejects::Staged(StagedRejects { path: path.clone(), entries });
    ledger.commit_stage(&commit(file("S", 1), vec![(id, 1)], vec![batch], false)).await.unwrap();

    let listed = ledger.list_rejects(id, &RejectFilter::default(), None, 10).await.unwrap();
    assert_eq!(
        listed,
        vec![
            RejectEntry::Staged { index: 1, path: path.clone(), at: 0, len: 120 },
            RejectEntry::Staged { index: 4, path: path.clone(), at: 121, len: 80 },
            RejectEntry::Staged { index: 7, path: path.clone(), at: 202, len: 99 },
        ]
    );
    let indexes = |filter: RejectFilter, after: Option<u64>| {
        let ledger = ledger.clone();
        async move {
            ledger
                .list_rejects(id, &filter, after, 10)
                .await
                .unwrap()
                .iter()
                .map(RejectEntry::index)
                .collect::<Vec<_>>()
        }
    };
    let by = |code: Option<RejectCode>, column: Option<&str>| RejectFilter { code, column: column.map(str::to_string) };
    assert_eq!(indexes(by(Some(RejectCode::TypeMismatch), None), None).await, [1, 7]);
    assert_eq!(indexes(by(Some(RejectCode::TypeMismatch), None), Some(1)).await, [7]);
    assert_eq!(indexes(by(None, Some("CITY")), None).await, [7]);
    assert_eq!(indexes(by(Some(RejectCode::TypeMismatch), Some("CITY")), None).await, Vec::<u64>::new());
    assert_eq!(indexes(by(Some(RejectCode::InvalidJson), None), None).await, [4]);

    let known = ledger.known_paths(&[path.clone(), "S/2026/11/30/other.rejects.ndjson".into()]).await.unwrap();
    assert_eq!(known.into_iter().collect::<Vec<_>>(), vec![path.clone()]);
    let errors = ledger.reject_errors("S", Utc::now() - chrono::Duration::hours(1), None, 100).await.unwrap();
    let mut keys: Vec<ErrorKey> = errors.into_iter().flat_map(|(_, keys)| keys).collect();
    keys.sort_by_key(|k| (k.code, k.column.clone()));
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], key(RejectCode::InvalidJson, None));

    let claim = |indexes: Vec<u64>| ReplayClaim { original: id, replay: Uuid::now_v7(), indexes, lease: LEASE };
    assert_eq!(ledger.claim_replay(&claim(vec![2, 4]), true).await.unwrap(), Err(ReplayRefusal::NotRejected(vec![2])));
    assert_eq!(ledger.claim_replay(&claim(vec![1, 4, 7]), true).await.unwrap(), Ok(()));

    // Whole rejects keep their stage and a record that is JSON null (not a missing one).
    let mut null = reject(0);
    null.record = serde_json::Value::Null;
    null.stage = RejectStage::Warehouse;
    let other = new_batch("S2", 0, vec![null.clone()]);
    let other_id = other.id;
    ledger
        .commit_stage(&StageCommit { file: None, parts: vec![], completed: vec![other], pending: false })
        .await
        .unwrap();
    assert_eq!(whole(ledger.list_rejects(other_id, &RejectFilter::default(), None, 10).await.unwrap()), vec![null]);

    let claimed = ledger.claim_files("one", LEASE, 10).await.unwrap();
    let loaded = FileOutcome::Loaded { id: claimed[0].id, rows: 1, query_id: None };
    ledger.complete_files("one", &[loaded]).await.unwrap();
    let record = ledger.get_batch(id).await.unwrap().unwrap();
    assert_eq!((record.status, record.counts.loaded + record.counts.rejected), (BatchStatus::Loaded, 4));
    assert_eq!(ledger.purge_batches(Duration::ZERO, 100).await.unwrap(), 2);
    assert!(ledger.known_paths(std::slice::from_ref(&path)).await.unwrap().is_empty(), "the object is an orphan now");
    assert!(ledger.list_rejects(id, &RejectFilter::default(), None, 10).await.unwrap().is_empty());
}

macro_rules! ledger_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn tables_and_schema_changes() {
                let (_guard, ledger) = $make.await;
                super::tables_and_schema_changes(ledger).await;
            }

            #[tokio::test]
            async fn group_commit_then_load_reconciles() {
                let (_guard, ledger) = $make.await;
                super::group_commit_then_load_reconciles(ledger).await;
            }

            #[tokio::test]
            async fn a_commit_completes_batches_over_several_statements() {
                let (_guard, ledger) = $make.await;
                super::a_commit_completes_batches_over_several_statements(ledger).await;
            }

            #[tokio::test]
            async fn pending_parts_wait_for_the_last_commit() {
                let (_guard, ledger) = $make.await;
                super::pending_parts_wait_for_the_last_commit(ledger).await;
            }

            #[tokio::test]
            async fn leases_expire_and_releases_delay() {
                let (_guard, ledger) = $make.await;
                super::leases_expire_and_releases_delay(ledger).await;
            }

            #[tokio::test]
            async fn renewed_claims_outlast_their_first_lease() {
                let (_guard, ledger) = $make.await;
                super::renewed_claims_outlast_their_first_lease(ledger).await;
            }

            #[tokio::test]
            async fn unique_keys_are_conflicts_and_roll_back() {
                let (_guard, ledger) = $make.await;
                super::unique_keys_are_conflicts_and_roll_back(ledger).await;
            }

            #[tokio::test]
            async fn rejects_and_batch_lists() {
                let (_guard, ledger) = $make.await;
                super::rejects_and_batch_lists(ledger).await;
            }

            #[tokio::test]
            async fn staged_rejects_are_an_index() {
                let (_guard, ledger) = $make.await;
                super::staged_rejects_are_an_index(ledger).await;
            }

            #[tokio::test]
            async fn keys_are_stored_as_digests_and_revoked() {
                let (_guard, ledger) = $make.await;
                super::keys_are_stored_as_digests_and_revoked(ledger).await;
            }

            #[tokio::test]
            async fn idempotency_keys_make_one_batch() {
                let (_guard, ledger) = $make.await;
                super::idempotency_keys_make_one_batch(ledger).await;
            }

            #[tokio::test]
            async fn split_files_reconcile_through_their_parts() {
                let (_guard, ledger) = $make.await;
                super::split_files_reconcile_through_their_parts(ledger).await;
            }

            #[tokio::test]
            async fn retention_removes_only_what_is_final_and_old() {
                let (_guard, ledger) = $make.await;
                super::retention_removes_only_what_is_final_and_old(ledger).await;
            }

            #[tokio::test]
            async fn replays_correct_each_reject_once() {
                let (_guard, ledger) = $make.await;
                super::replays_correct_each_reject_once(ledger).await;
            }

            #[tokio::test]
            async fn widened_columns_are_audited_with_their_previous_type() {
                let (_guard, ledger) = $make.await;
                super::widened_columns_are_audited_with_their_previous_type(ledger).await;
            }
        }
    };
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Ledger>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let ledger = snowgate::ledger::sqlite::SqliteLedger::connect(&url).await.unwrap();
    (dir, Arc::new(ledger))
}

ledger_suite!(on_sqlite, sqlite());

async fn postgres() -> (PgSchema, Arc<dyn Ledger>) {
    let schema = PgSchema::create().await;
    let ledger = schema.ledger().await;
    // The search_path must really have put the ledger in the fresh schema, not in `public`.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.base).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
            .bind(&schema.name)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(tables.iter().any(|t| t == "batches") && tables.iter().any(|t| t == "_sqlx_migrations"), "{tables:?}");
    (schema, ledger)
}

ledger_suite!(on_postgres, postgres());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_never_claim_the_same_file() {
    let (schema, first) = postgres().await;
    let second = schema.ledger().await;
    for _ in 0..50 {
        let batch = new_batch("T", 1, vec![]);
        let parts = vec![(batch.id, 1)];
        first.commit_stage(&commit(file("T", 1), parts, vec![batch], false)).await.unwrap();
    }
    let mut claimers = tokio::task::JoinSet::new();
    for (n, ledger) in [first.clone(), second.clone(), first, second].into_iter().enumerate() {
        claimers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let claimed = ledger.claim_files(&format!("replica-{n}"), LEASE, 3).await.unwrap();
                if claimed.is_empty() {
                    return ids;
                }
                assert!(claimed.iter().all(|f| f.attempts == 1), "a file was claimed twice: {claimed:?}");
                ids.extend(claimed.into_iter().map(|f| f.id));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(ids) = claimers.join_next().await {
        all.extend(ids.unwrap());
    }
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "the same file was claimed twice");
    assert_eq!(all.len(), 50, "every staged file is claimed");
}

#[tokio::test]
async fn postgres_ddl_lock_serialises_replicas_and_releases_on_drop() {
    let (schema, first) = postgres().await;
    let second = schema.ledger().await;
    let held = first.lock_ddl("LOANS").await.unwrap();
    let other = second.clone();
    let waiting = tokio::spawn(async move { other.lock_ddl("LOANS").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a second replica must wait for the table's ddl lock");
    let unrelated = tokio::time::timeout(Duration::from_secs(5), second.lock_ddl("OTHER")).await;
    assert!(matches!(unrelated, Ok(Ok(_))), "other tables are not blocked");
    drop(held);
    let acquired = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert!(matches!(acquired, Ok(Ok(Ok(())))), "dropping the guard releases the lock");
}

/// Applies only the first migration (the ledger as the first release created it) to `pool`.
async fn first_release_schema<DB: sqlx::Database>(dir: &std::path::Path, sql: &str, pool: &sqlx::Pool<DB>)
where
    DB::Connection: sqlx::migrate::Migrate,
{
    std::fs::write(dir.join("0001_init.sql"), sql).unwrap();
    sqlx::migrate::Migrator::new(dir).await.unwrap().run(pool).await.unwrap();
}

/// Rows as the first release wrote them: a table, a batch being loaded, its file and a reject.
const FIRST_RELEASE_ROWS: [&str; 5] = [
    "INSERT INTO tables (name, drift, columns, created_at, updated_at)
     VALUES ('T', 'evolve', '[]', '2026-11-01T10:00:00.000000Z', '2026-11-01T10:00:00.000000Z')",
    "INSERT INTO batches (id, table_name, partner, status, received, accepted, rejected, rejects_by_code, received_at, staged_at)
     VALUES ('0193a000-0000-7000-8000-000000000001', 'T', 'anonymous', 'loading', 3, 2, 1,
             '{\"type_mismatch\":1}', '2026-11-01T10:00:00.000000Z', '2026-11-01T10:00:01.000000Z')",
    "INSERT INTO files (id, table_name, path, rows, bytes, status, attempts, claimed_by, lease_until, created_at)
     VALUES ('0193a000-0000-7000-8000-000000000002', 'T', 'T/old.parquet', 2, 100, 'loading', 1, 'gone',
             '2026-11-01T10:05:00.000000Z', '2026-11-01T10:00:01.000000Z')",
    "INSERT INTO file_batches (file_id, batch_id, rows)
     VALUES ('0193a000-0000-7000-8000-000000000002', '0193a000-0000-7000-8000-000000000001', 2)",
    "INSERT INTO rejects (batch_id, idx, record, errors, stage)
     VALUES ('0193a000-0000-7000-8000-000000000001', 1, '{\"amount\":\"x\"}', '[]', 'gateway')",
];

/// After the upgrade the old rows read back, the old claim is taken over and completes the
/// batch, and the new CHECK constraints refuse a status no code knows.
async fn first_release_rows_survive_the_upgrade(ledger: Arc<dyn Ledger>) -> Uuid {
    let batch_id: Uuid = "0193a000-0000-7000-8000-000000000001".parse().unwrap();
    let batch = ledger.get_batch(batch_id).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Loading);
    assert_eq!(batch.counts, Counts { received: 3, accepted: 2, rejected: 1, loaded: 0 });
    assert_eq!(batch.files[0].path, "T/old.parquet");
    assert_eq!(ledger.list_rejects(batch_id, &RejectFilter::default(), None, 10).await.unwrap()[0].index(), 1);
    let claimed = ledger.claim_files("new", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "the expired claim of the old process is taken over");
    ledger.complete_files("new", &[FileOutcome::Loaded { id: claimed[0].id, rows: 2, query_id: None }]).await.unwrap();
    let batch = ledger.get_batch(batch_id).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Loaded);
    assert_eq!(batch.counts.loaded + batch.counts.rejected, batch.counts.received);
    batch_id
}

#[tokio::test]
async fn sqlite_ledger_of_the_first_release_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ledger.db").display());
    let old = sqlx::SqlitePool::connect(&url).await.unwrap();
    let migrations = tempfile::tempdir().unwrap();
    first_release_schema(migrations.path(), include_str!("../migrations/sqlite/0001_init.sql"), &old).await;
    for sql in FIRST_RELEASE_ROWS {
        sqlx::query(sql).execute(&old).await.unwrap();
    }
    old.close().await;

    let ledger = Arc::new(snowgate::ledger::sqlite::SqliteLedger::connect(&url).await.unwrap());
    first_release_rows_survive_the_upgrade(ledger).await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let refused = sqlx::query("UPDATE batches SET status = 'done'").execute(&pool).await.unwrap_err();
    assert!(refused.to_string().contains("CHECK"), "{refused}");
    // The CHECK lists and the Rust enums name the same statuses.
    for status in BatchStatus::ALL {
        sqlx::query("UPDATE batches SET status = $1").bind(status.as_str()).execute(&pool).await.unwrap();
    }
    for status in FileStatus::ALL {
        sqlx::query("UPDATE files SET status = $1").bind(status.as_str()).execute(&pool).await.unwrap();
    }
}

#[tokio::test]
async fn postgres_ledger_of_the_first_release_upgrades_in_place() {
    let schema = PgSchema::create().await;
    let old = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let migrations = tempfile::tempdir().unwrap();
    first_release_schema(migrations.path(), include_str!("../migrations/postgres/0001_init.sql"), &old).await;
    for sql in FIRST_RELEASE_ROWS {
        sqlx::query(sql).execute(&old).await.unwrap();
    }
    first_release_rows_survive_the_upgrade(schema.ledger().await).await;
    let refused = sqlx::query("UPDATE batches SET status = 'done'").execute(&old).await.unwrap_err();
    let code = refused.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("23514"), "check_violation: {refused}");
    for status in BatchStatus::ALL {
        sqlx::query("UPDATE batches SET status = $1").bind(status.as_str()).execute(&old).await.unwrap();
    }
    for status in FileStatus::ALL {
        sqlx::query("UPDATE files SET status = $1").bind(status.as_str()).execute(&old).await.unwrap();
    }
    old.close().await;
}
