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

/// A `python-sci` session, started in the sandbox that has it loaded.
async fn sci_session() -> RunHandle {
    let mut req = session();
    req.runtime = Some(crate::sci::SCI.into());
    crate::sci::sandbox()
        .await
        .start(req)
        .await
        .expect("starts")
}

/// A session from `snapshot` in the sandbox that has `python-sci` loaded.
async fn sci_restored(snapshot: &Snapshot) -> RunHandle {
    let mut req = RunRequest::script("");
    req.restore = Some(Arc::new(snapshot.clone()));
    crate::sci::sandbox()
        .await
        .start(req)
        .await
        .expect("restores")
}

#[tokio::test]
async fn a_restored_python_sci_session_has_its_dataframe_array_functions_and_files() {
    let mut handle = sci_session().await;
    value(
        &mut handle,
        "import numpy as np, pandas as pd\n\
         df = pd.DataFrame({'region': ['north', 'south', 'north'], 'amount': [10.0, 5.0, 2.5]})\n\
         a = np.arange(12).reshape(3, 4)\n\
         def total(n):\n    return float(df.amount.sum()) * n + int(a.sum())\n\
         df.to_csv('sales.csv', index=False)",
    )
    .await;
    // A figure with text: matplotlib keeps the fonts it drew with open, and lets them go for
    // the snapshot.
    value(
        &mut handle,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.title('kept')\nplt.show()",
    )
    .await;
    let snapshot = handle.control().snapshot().await.expect("a snapshot");
    assert_eq!(snapshot.runtime(), crate::sci::SCI);
    let bytes = snapshot.to_bytes().unwrap();
    let snapshot = Snapshot::from_bytes(&bytes).unwrap();
    let mut again = sci_restored(&snapshot).await;
    assert_eq!(
        value(&mut again, "total(2)").await.as_deref(),
        Some("101.0")
    );
    assert_eq!(
        value(&mut again, "df.groupby('region').amount.sum().to_dict()")
            .await
            .as_deref(),
        Some("{'north': 12.5, 'south': 5.0}")
    );
    assert_eq!(
        value(&mut again, "a.T.shape, int(a[2, 3])")
            .await
            .as_deref(),
        Some("((4, 3), 11)")
    );
    assert_eq!(
        value(&mut again, "pd.read_csv('sales.csv').shape")
            .await
            .as_deref(),
        Some("(3, 2)")
    );
    let (out, _, _) = cell(&mut again, "print(df.amount.max())").await;
    assert_eq!(out, "10.0\n");
    // It draws again, text included.
    let (_, err, end) = cell(
        &mut again,
        "plt.plot([0, 1]); plt.xlabel('again'); plt.show()",
    )
    .await;
    assert!(end.exception.is_none(), "{err}");
    // The original goes on too.
    assert_eq!(
        value(&mut handle, "total(0)").await.as_deref(),
        Some("66.0")
    );
}

#[tokio::test]
async fn two_restores_of_a_python_sci_snapshot_diverge() {
    let mut handle = sci_session().await;
    value(
        &mut handle,
        "import numpy as np\nv = np.zeros(3)\nitems = ['root']",
    )
    .await;
    let snapshot = handle.control().snapshot().await.unwrap();
    let mut a = sci_restored(&snapshot).await;
    let mut b = sci_restored(&snapshot).await;
    value(&mut a, "v[0] = 1\nitems.append('a')").await;
    value(&mut b, "v[2] = 2\nitems.append('b')").await;
    value(&mut handle, "v += 5").await;
    assert_eq!(
        value(&mut a, "v.tolist(), items").await.as_deref(),
        Some("([1.0, 0.0, 0.0], ['root', 'a'])")
    );
    assert_eq!(
        value(&mut b, "v.tolist(), items").await.as_deref(),
        Some("([0.0, 0.0, 2.0], ['root', 'b'])")
    );
    assert_eq!(
        value(&mut handle, "v.tolist(), items").await.as_deref(),
        Some("([5.0, 5.0, 5.0], ['root'])")
    );
    // A snapshot of a restored session restores too.
    let again = a.control().snapshot().await.unwrap();
    let mut c = sci_restored(&again).await;
    assert_eq!(
        value(&mut c, "v.tolist(), items").await.as_deref(),
        Some("([1.0, 0.0, 0.0], ['root', 'a'])")
    );
}

#[tokio::test]
async fn a_python_sci_session_holding_a_file_open_is_not_snapshotted() {
    let mut handle = sci_session().await;
    value(&mut handle, "f = open('held.txt', 'w')").await;
    match handle.control().snapshot().await {
        Err(Error::Unsaved(why)) => assert!(why.contains("open"), "{why}"),
        other => panic!("{other:?}"),
    }
    value(
        &mut handle,
        "f.close()\nimport os\nlisting = os.scandir('.')",
    )
    .await;
    match handle.control().snapshot().await {
        Err(Error::Unsaved(why)) => assert!(why.contains("directory open"), "{why}"),
        other => panic!("{other:?}"),
    }
    value(&mut handle, "listing.close()").await;
    handle.control().snapshot().await.expect("closed: saved");
    assert_eq!(
        value(&mut handle, "f.closed").await.as_deref(),
        Some("True")
    );
}

#[tokio::test]
async fn a_snapshot_of_one_runtime_is_refused_by_the_other() {
    let sandbox = crate::sci::sandbox().await;
    let mut lean = sandbox.start(session()).await.expect("starts");
    value(&mut lean, "x = 1").await;
    let lean = lean.control().snapshot().await.unwrap();
    let mut sci = sci_session().await;
    value(&mut sci, "x = 2").await;
    let sci = sci.control().snapshot().await.unwrap();
    for (snapshot, other) in [(lean, crate::sci::SCI), (sci, "python")] {
        let mut req = RunRequest::script("");
        req.runtime = Some(other.into());
        req.restore = Some(Arc::new(snapshot));
        match sandbox.start(req).await {
            Err(Error::SnapshotBuild { runtime, .. }) => assert_ne!(runtime, other),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{other} restored another runtime's snapshot"),
        }
    }
}
