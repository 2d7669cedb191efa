//! Jupyter's display model: what a program displays (`display(x)`, `IPython.display`'s objects,
//! a session cell's value) arrives as MIME bundles over every entry point — `/ws` notifications
//! in order with the output, `POST /v1/runs` and `/v1/sessions` lists, the cell's
//! `result_bundle` — bounded by the output limit, with bad bundles refused and the run going on.

use crate::common;
use crate::ws;

use serde_json::{json, Value};
use weir_sandbox::{Event, Outcome, RunRequest};
use ws::*;

/// A program using IPython's display API as a notebook user writes it.
const RICH: &str = "from IPython.display import display, HTML, Markdown, JSON, SVG, clear_output\n\
    class Card:\n\
    \x20   def _repr_html_(self):\n\
    \x20       return '<b>ace</b>'\n\
    \x20   def _repr_mimebundle_(self, include=None, exclude=None):\n\
    \x20       return {'application/vnd.card+json': {'rank': 1}}\n\
    \x20   def __repr__(self):\n\
    \x20       return 'Card()'\n\
    print('one')\n\
    display(Card(), Markdown('# M'))\n\
    h = display(HTML('<i>wait</i>'), display_id='job')\n\
    print('two')\n\
    h.update(HTML('<i>done</i>'))\n\
    display(JSON({'k': [1, 2]}), SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'))\n";

#[tokio::test]
async fn displays_arrive_as_bundles_in_order_with_the_output() {
    let mut handle = common::start(RunRequest::script(RICH)).await;
    let mut seen = Vec::new();
    let result = loop {
        match common::next(&mut handle, 30).await {
            Event::Output { data, .. } => seen.push(String::from_utf8_lossy(&data).into_owned()),
            Event::Display(d) => {
                let mut formats: Vec<_> = d.bundle.data.keys().cloned().collect();
                formats.sort();
                seen.push(format!(
                    "[{}{}{}]",
                    formats.join(" "),
                    d.display_id
                        .map(|id| format!(" id={id}"))
                        .unwrap_or_default(),
                    if d.update { " update" } else { "" }
                ));
            }
            Event::Exit(r) => break r,
            _ => {}
        }
    };
    assert_eq!(result.outcome, Outcome::Exited { code: 0 }, "{seen:?}");
    assert_eq!(
        seen.concat(),
        "one\n\
         [application/vnd.card+json text/html text/plain]\
         [text/markdown text/plain]\
         [text/html text/plain id=job]\
         two\n\
         [text/html text/plain id=job update]\
         [application/json text/plain][image/svg+xml text/plain]"
    );
    // The values, as Jupyter carries them: JSON as JSON, text as text, metadata beside them.
    let collected = common::run(RICH).await;
    let bundles: Vec<_> = collected.displays.iter().map(|d| &d.bundle).collect();
    assert_eq!(
        bundles[0].data["application/vnd.card+json"],
        json!({"rank": 1})
    );
    assert_eq!(bundles[0].data["text/html"], "<b>ace</b>");
    assert_eq!(bundles[0].plain(), "Card()");
    assert_eq!(bundles[1].plain(), "<IPython.core.display.Markdown object>");
    // The update replaced what was shown under its id.
    assert_eq!(bundles[2].data["text/html"], "<i>done</i>");
    assert_eq!(bundles[3].data["application/json"], json!({"k": [1, 2]}));
    assert_eq!(
        bundles[3].metadata["application/json"],
        json!({"expanded": false, "root": "root"})
    );
    assert_eq!(collected.displays.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_sends_display_and_clear_output_notifications() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let source = "from IPython.display import display, HTML, clear_output\n\
                  display(HTML('<p>1</p>'), display_id='d')\n\
                  clear_output(wait=True)\n\
                  display(HTML('<p>2</p>'), display_id='d', update=True)\n";
    let run_id = run(&mut ws, 1, json!({"source": source})).await;
    let mut notes = Vec::new();
    loop {
        let m = recv(&mut ws).await;
        if m["params"]["run_id"] != json!(run_id) {
            continue;
        }
        match m["method"].as_str() {
            Some("display") | Some("clear_output") => notes.push(m),
            Some("exit") => break,
            _ => {}
        }
    }
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert_eq!(notes[0]["method"], "display");
    assert_eq!(
        notes[0]["params"]["data"],
        json!({"text/html": "<p>1</p>", "text/plain": "<IPython.core.display.HTML object>"})
    );
    assert_eq!(notes[0]["params"]["metadata"], json!({}));
    assert_eq!(notes[0]["params"]["display_id"], "d");
    assert_eq!(notes[1]["method"], "clear_output");
    assert_eq!(notes[1]["params"]["wait"], true);
    assert_eq!(notes[2]["params"]["update"], true);
    assert_eq!(notes[2]["params"]["data"]["text/html"], "<p>2</p>");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_runs_and_session_cells_return_bundles() {
    let server = server(|_| {}).await;
    let r = post_json(&server, "/v1/runs", &json!({"source": RICH})).await;
    let body = r.json();
    assert_eq!(body["outcome"], "exited", "{body}");
    let display = body["display"].as_array().expect("a display list");
    assert_eq!(display.len(), 5);
    assert_eq!(display[2]["data"]["text/html"], "<i>done</i>");
    assert_eq!(display[2]["display_id"], "job");

    let created = post_json(&server, "/v1/sessions", &json!({})).await;
    let id = created.json()["session_id"].as_str().unwrap().to_string();
    let exec = |code: &'static str| {
        let (server, id) = (&server, &id);
        async move {
            let r = post_json(
                server,
                &format!("/v1/sessions/{id}/exec"),
                &json!({"code": code}),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }
    };
    // A value with rich formats: its bundle beside its repr.
    let r = exec(
        "class Table:\n    def _repr_html_(self):\n        return '<table><tr><td>1</td></tr></table>'\n    def __repr__(self):\n        return 'Table(1)'\nTable()",
    )
    .await;
    assert_eq!(r["result"], "Table(1)");
    assert_eq!(
        r["result_bundle"],
        json!({"data": {"text/html": "<table><tr><td>1</td></tr></table>", "text/plain": "Table(1)"}, "metadata": {}})
    );
    // A plain value's bundle is its text; no value, no bundle.
    let r = exec("1 + 1").await;
    assert_eq!(
        r["result_bundle"],
        json!({"data": {"text/plain": "2"}, "metadata": {}})
    );
    let r = exec("x = 1").await;
    assert_eq!(r["result_bundle"], Value::Null);
    // `display` is a builtin, as in a notebook; what a cell displays is listed with it.
    let r = exec("display(Table(), Table())\nprint('after')").await;
    assert_eq!(r["stdout"], "after\n");
    let shown = r["display"].as_array().unwrap();
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[1]["data"]["text/plain"], "Table(1)");
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_bundle_is_refused_with_a_reason_and_the_run_goes_on() {
    let out = common::run(
        "from IPython.display import display, publish_display_data\n\
         display({'text/plain': 'x', 'not a mime': 'y'}, raw=True)\n\
         display({'text/html': '<b>no text</b>'}, raw=True)\n\
         display({'text/plain': 'x', 'image/png': '%%%'}, raw=True)\n\
         publish_display_data({'text/plain': 'ok'})\n\
         print('still here')\n",
    )
    .await;
    let stderr = out.stderr_text();
    assert_eq!(out.stdout_text(), "still here\n", "{stderr}");
    assert_eq!(
        stderr.matches("weir: display not shown: ").count(),
        3,
        "{stderr}"
    );
    for reason in [
        "is not a MIME type",
        "no text/plain format",
        "image/png is not base64",
    ] {
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
    assert_eq!(out.displays.len(), 1);
    assert_eq!(out.displays[0].bundle.plain(), "ok");
}

#[tokio::test]
async fn a_display_flood_ends_at_the_output_limit() {
    let out = common::run_with(
        "from IPython.display import display, HTML\nwhile True:\n    display(HTML('<p>flood</p>'))\n",
        |req| req.limits.output_bytes = 200_000,
    )
    .await;
    let result = out.result.expect("a result");
    assert_eq!(result.outcome, Outcome::OutputLimit);
    assert!(result.output_truncated);
    // Each display counted its bytes and an event's: far fewer than 200,000 of them.
    assert!(
        out.displays.len() > 100 && out.displays.len() < 2_000,
        "{}",
        out.displays.len()
    );
    // A bundle larger than a display may be is refused; with an output limit that large, the
    // run goes on.
    let out = common::run_with(
        "from IPython.display import display, HTML\ndisplay(HTML('x' * (17 << 20)))\nprint('on')\n",
        |req| {
            req.limits.output_bytes = 64 << 20;
            req.limits.memory_bytes = 512 << 20;
        },
    )
    .await;
    assert_eq!(out.stdout_text(), "on\n", "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("more than a display may be"),
        "{}",
        out.stderr_text()
    );
}
