//! Session snapshots as a library user meets them: a session saved between cells, its bytes
//! read back, and started again — in the same process (a fork) or after a restart — where it was.

use crate::common::*;
use crate::interrupt::{cell, session};
use std::sync::Arc;
use weir_sandbox::{Error, RunHandle, RunRequest, Snapshot};

/// A session from `snapshot`.
async fn restored(snapshot: &Snapshot) -> RunHandle {
    let mut req = RunRequest::script("");
    req.restore = Some(Arc::new(snapshot.clone()));
    start(req).await
}

async fn value(handle: &mut RunHandle, code: &str) -> Option<String> {
    let (_, err, end) = cell(handle, code).await;
    assert!(end.exception.is_none(), "{code}: {err}");
    end.value
}

#[tokio::test]
async fn a_restored_session_has_its_variables_functions_imports_and_files() {
    let mut handle = start(session()).await;
    value(
        &mut handle,
        "import json, collections\nx = [1, 2, 3]\ndef f(n):\n    return sum(x) * n\n\
         open('notes.txt', 'w').write('kept')\ncounter = collections.Counter('hello')",
    )
    .await;
    let snapshot = handle.control().snapshot().await.expect("a snapshot");
    let bytes = snapshot.to_bytes().unwrap();
    // Read back from bytes: what a restart of the process would do.
    let snapshot = Snapshot::from_bytes(&bytes).unwrap();
    let mut again = restored(&snapshot).await;
    assert_eq!(value(&mut again, "f(2)").await.as_deref(), Some("12"));
    assert_eq!(
        value(&mut again, "json.dumps(counter.most_common(1))")
            .await
            .as_deref(),
        Some("'[[\"l\", 2]]'")
    );
    assert_eq!(
        value(&mut again, "open('notes.txt').read()")
            .await
            .as_deref(),
        Some("'kept'")
    );
    let (out, _, _) = cell(&mut again, "print('still', 'printing')").await;
    assert_eq!(out, "still printing\n");
    // The original goes on too.
    assert_eq!(value(&mut handle, "f(1)").await.as_deref(), Some("6"));
}

#[tokio::test]
async fn two_restores_of_one_snapshot_diverge() {
    let mut handle = start(session()).await;
    value(&mut handle, "items = ['root']").await;
    let snapshot = handle.control().snapshot().await.unwrap();
    let mut a = restored(&snapshot).await;
    let mut b = restored(&snapshot).await;
    value(&mut a, "items.append('a')").await;
    value(&mut b, "items.append('b')").await;
    value(&mut handle, "items.append('parent')").await;
    assert_eq!(
        value(&mut a, "items").await.as_deref(),
        Some("['root', 'a']")
    );
    assert_eq!(
        value(&mut b, "items").await.as_deref(),
        Some("['root', 'b']")
    );
    assert_eq!(
        value(&mut handle, "items").await.as_deref(),
        Some("['root', 'parent']")
    );
    // A snapshot of a restored session restores too.
    let again = a.control().snapshot().await.unwrap();
    let mut c = restored(&again).await;
    assert_eq!(
        value(&mut c, "items").await.as_deref(),
        Some("['root', 'a']")
    );
}

#[tokio::test]
async fn a_session_holding_a_file_open_is_not_snapshotted() {
    let mut handle = start(session()).await;
    value(&mut handle, "f = open('held.txt', 'w')").await;
    match handle.control().snapshot().await {
        Err(Error::Unsaved(why)) => assert!(why.contains("open"), "{why}"),
        other => panic!("{other:?}"),
    }
    value(&mut handle, "f.close()").await;
    handle.control().snapshot().await.expect("closed: saved");
}

#[tokio::test]
async fn a_damaged_snapshot_or_one_that_cannot_fit_is_refused() {
    let mut handle = start(session()).await;
    value(&mut handle, "x = 1").await;
    let bytes = handle
        .control()
        .snapshot()
        .await
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() / 2);
    assert!(matches!(
        Snapshot::from_bytes(&cut),
        Err(Error::SnapshotCorrupted(_))
    ));
    let not_a_session = start(RunRequest::script("")).await;
    assert!(matches!(
        not_a_session.control().snapshot().await,
        Err(Error::NotASession)
    ));
    let mut req = RunRequest::script("");
    req.restore = Some(Arc::new(Snapshot::from_bytes(&bytes).unwrap()));
    req.limits.memory_bytes = 1 << 20;
    assert!(matches!(sandbox().start(req).await, Err(Error::Unsaved(_))));
}
