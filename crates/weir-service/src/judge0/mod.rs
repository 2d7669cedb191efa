//! Judge0's API (CE 1.13.1), so judging platforms built on Judge0 switch to weir by changing a
//! URL: submissions judged against their expected output (`POST /submissions`, `?wait=true`,
//! batches, `GET /submissions/{token}`, `base64_encoded`, `fields`, signed callbacks), and the
//! listings Judge0's clients read first (`/languages`, `/statuses`, `/about`, `/config_info`).
//! [`submission`] reads a submission and judges its run; [`store`] keeps them by token for
//! their owners. docs/judge0.md.

pub mod store;
pub mod submission;

use crate::lifecycle::admission::{Admitted, Identified};
use crate::lifecycle::body::Raw;
use crate::lifecycle::error::WeirJson;
use crate::lifecycle::oneshot::{self, Reach};
use crate::registry::Slot;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use submission::{Params, Spec, State as Stage, Verdict, View, LANGUAGES, STATUSES};

/// The most submissions in one batch, as Judge0's.
pub const MAX_BATCH: usize = 20;

/// Judge0's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/submissions", post(create))
        .route("/submissions/batch", post(create_batch).get(show_batch))
        .route("/submissions/{token}", get(show))
        .route("/languages", get(languages))
        .route("/languages/all", get(languages))
        .route("/languages/{id}", get(language))
        .route("/statuses", get(statuses))
        .route("/about", get(about))
        .route("/config_info", get(config_info))
}

/// The query: `base64_encoded` and `wait` are true when they say `true` (anything else is
/// false, as Judge0 reads them).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Options {
    base64_encoded: Option<String>,
    wait: Option<String>,
    fields: Option<String>,
    tokens: Option<String>,
}

impl Options {
    fn base64(&self) -> bool {
        self.base64_encoded.as_deref() == Some("true")
    }

    fn wait(&self) -> bool {
        self.wait.as_deref() == Some("true")
    }

    /// The fields asked for, or Judge0's 400 naming the ones that do not exist.
    fn fields(&self) -> Result<Vec<&'static str>, Box<Response>> {
        submission::fields(self.fields.as_deref())
            .map_err(|why| Box::new(error(StatusCode::BAD_REQUEST, why)))
    }
}

/// Calls being delivered to callbacks at once; more wait their turn.
const DELIVERIES: usize = 16;
static DELIVERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DELIVERIES);

/// A JSON answer with `status`.
fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    answer(status, json!({ "error": message.into() }))
}

/// A submission's body read and checked: its spec, or Judge0's 422.
fn read(state: &AppState, body: Value, base64: bool) -> Result<Spec, Value> {
    let params: Params =
        serde_json::from_value(body).map_err(|e| json!({"error": e.to_string()}))?;
    let callback = params.callback_url.clone();
    let hosted = |name: &str| state.sandbox.runtimes().any(|r| r.name == name);
    let max = &state.config.max_limits;
    let mut spec = Spec::read(params, base64, max, hosted).map_err(|e| json!(e))?;
    if let Some(url) = callback {
        let url = state
            .callbacks
            .target(&url)
            .map_err(|why| json!({ "callback_url": [why] }))?;
        spec.callback = Some(url.to_string());
    }
    Ok(spec)
}

/// `POST /submissions`: judged at once with `?wait=true`, else queued and answered with its
/// token.
async fn create(
    State(state): State<Arc<AppState>>,
    Query(options): Query<Options>,
    admitted: Admitted<Raw, WeirJson>,
) -> Response {
    let fields = match options.fields() {
        Ok(fields) => fields,
        Err(refused) => return *refused,
    };
    let owner = admitted.owner().to_string();
    let Ok(body) = serde_json::from_slice::<Value>(&admitted.body.0) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the request body is not valid JSON",
        );
    };
    let spec = match read(&state, body, options.base64()) {
        Ok(spec) => Arc::new(spec),
        Err(invalid) => return answer(StatusCode::UNPROCESSABLE_ENTITY, invalid),
    };
    let Ok(token) = state.judge0.add(&owner, spec.clone()) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "queue is full");
    };
    if options.wait() {
        // Judged to its end even if the caller hangs up meanwhile (its result is kept).
        let (app, who) = (state.clone(), owner.clone());
        let (queued, slot) = (vec![(token.clone(), spec)], admitted.slot);
        let judging = state.tracker.spawn(async move {
            judge_all(&app, &who, queued, slot).await;
        });
        let _ = judging.await;
        let shown = render(&state, &token, &owner, &fields, options.base64());
        return answer(StatusCode::CREATED, shown.unwrap_or(Value::Null));
    }
    let reply = json!({ "token": token });
    let slot = admitted.slot;
    let app = state.clone();
    state.tracker.spawn(async move {
        judge_all(&app, &owner, vec![(token, spec)], slot).await;
    });
    answer(StatusCode::CREATED, reply)
}

#[derive(Deserialize)]
struct Batch {
    submissions: Vec<Value>,
}

/// `POST /submissions/batch`: each submission checked on its own (an invalid one answers with
/// its errors in its place), the valid ones queued and judged in order on the caller's slot.
async fn create_batch(
    State(state): State<Arc<AppState>>,
    Query(options): Query<Options>,
    admitted: Admitted<Raw, WeirJson>,
) -> Response {
    let owner = admitted.owner().to_string();
    let Ok(batch) = serde_json::from_slice::<Batch>(&admitted.body.0) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the request body is not {\"submissions\": [...]}",
        );
    };
    let n = batch.submissions.len();
    if n == 0 || n > MAX_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            format!("number of submissions in a batch should be between 1 and {MAX_BATCH}"),
        );
    }
    let mut answers = Vec::with_capacity(n);
    let mut queued = Vec::new();
    for body in batch.submissions {
        match read(&state, body, options.base64()) {
            Ok(spec) => {
                let spec = Arc::new(spec);
                let Ok(token) = state.judge0.add(&owner, spec.clone()) else {
                    answers.push(json!({"error": "queue is full"}));
                    continue;
                };
                answers.push(json!({ "token": token }));
                queued.push((token, spec));
            }
            Err(invalid) => answers.push(invalid),
        }
    }
    if queued.is_empty() {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, Value::Array(answers));
    }
    let slot = admitted.slot;
    let app = state.clone();
    state.tracker.spawn(async move {
        judge_all(&app, &owner, queued, slot).await;
    });
    answer(StatusCode::CREATED, Value::Array(answers))
}

/// `GET /submissions/{token}`.
async fn show(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Query(options): Query<Options>,
    caller: Identified,
) -> Response {
    let fields = match options.fields() {
        Ok(fields) => fields,
        Err(refused) => return *refused,
    };
    match render(&state, &token, &caller.user, &fields, options.base64()) {
        Some(body) => answer(StatusCode::OK, body),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `GET /submissions/batch?tokens=a,b`: each in the order asked, `null` for an unknown one.
async fn show_batch(
    State(state): State<Arc<AppState>>,
    Query(options): Query<Options>,
    caller: Identified,
) -> Response {
    let fields = match options.fields() {
        Ok(fields) => fields,
        Err(refused) => return *refused,
    };
    let tokens: Vec<&str> = (options.tokens.as_deref().unwrap_or(""))
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() || tokens.len() > MAX_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            format!("number of tokens should be between 1 and {MAX_BATCH}"),
        );
    }
    let submissions: Vec<Value> = tokens
        .iter()
        .map(|token| render(&state, token, &caller.user, &fields, options.base64()))
        .map(|shown| shown.unwrap_or(Value::Null))
        .collect();
    answer(StatusCode::OK, json!({ "submissions": submissions }))
}

/// `owner`'s submission `token` as `fields` show it; `None` when they have none.
fn render(
    state: &AppState,
    token: &str,
    owner: &str,
    fields: &[&str],
    base64: bool,
) -> Option<Value> {
    (state.judge0).show(token, owner, |view: &View| view.render(fields, base64))
}

/// Judges `queued` in order on `slot`, each one's result kept and sent to its callback (by a
/// task of its own: the slot is not held for it). Once the server shuts down, the rest are
/// Internal Errors.
async fn judge_all(
    state: &Arc<AppState>,
    owner: &str,
    queued: Vec<(String, Arc<Spec>)>,
    slot: Slot,
) {
    for (token, spec) in queued {
        let shutting_down = *state.shutdown.borrow();
        let verdict = match shutting_down {
            true => internal("the server shut down before judging it"),
            false => {
                state.judge0.set(&token, Stage::Processing);
                judge(state, owner, &spec).await
            }
        };
        state.judge0.set(&token, Stage::Done(Box::new(verdict)));
        if let Some(url) = spec.callback.as_deref() {
            let body = render(state, &token, owner, &submission::DEFAULT_FIELDS, true);
            if let (Ok(url), Some(body)) = (reqwest::Url::parse(url), body) {
                let app = state.clone();
                state.tracker.spawn(async move {
                    let Ok(_turn) = DELIVERING.acquire().await else {
                        return;
                    };
                    if let Err(why) = app.callbacks.deliver(&url, &body.to_string()).await {
                        tracing::warn!(%token, %why, "judge0 callback not delivered");
                    }
                });
            }
        }
    }
    drop(slot);
}

/// `spec`'s runs (`number_of_runs`, up to the first not accepted): their verdict.
async fn judge(state: &AppState, owner: &str, spec: &Spec) -> Verdict {
    let mut verdicts = Vec::new();
    for _ in 0..spec.runs.max(1) {
        let verdict = run_once(state, owner, spec).await;
        let accepted = verdict.status == 3;
        verdicts.push(verdict);
        if !accepted {
            break;
        }
    }
    Verdict::averaged(verdicts).unwrap_or_else(|| internal("no run was made"))
}

async fn run_once(state: &AppState, owner: &str, spec: &Spec) -> Verdict {
    let mut req = spec.request(&state.config.limits, &state.config.max_limits);
    state.runtime_defaults(&mut req, spec.memory.is_some());
    req.compile_scope = weir_sandbox::CompileScope::of(Some(owner), None);
    // A submission reaches the network only with `enable_network`, and then what the server
    // allows.
    let reach = match spec.network {
        true => Reach::server(),
        false => Reach::nowhere(),
    };
    match oneshot::execute_with(state, owner, req, false, None, reach).await {
        Ok(finished) => Verdict::of(spec, &finished.id, &finished.collected, &finished.result),
        Err(e) => internal(&e.to_string()),
    }
}

/// An Internal Error verdict saying `why`.
fn internal(why: &str) -> Verdict {
    Verdict {
        status: 13,
        stdout: Vec::new(),
        stderr: None,
        message: Some(why.to_string()),
        exit_code: None,
        exit_signal: None,
        time: 0.0,
        wall_time: 0.0,
        memory: 0,
        run_id: String::new(),
    }
}

/// `GET /languages` (and `/languages/all`): the runtimes this server hosts, by Judge0 id.
async fn languages(State(state): State<Arc<AppState>>) -> Json<Value> {
    let hosted = |l: &&submission::Language| state.sandbox.runtimes().any(|r| r.name == l.runtime);
    Json(
        LANGUAGES
            .iter()
            .filter(hosted)
            .map(|l| json!({"id": l.id, "name": l.name, "is_archived": false}))
            .collect(),
    )
}

/// `GET /languages/{id}`.
async fn language(Path(id): Path<String>) -> Response {
    match LANGUAGES.iter().find(|l| l.id.to_string() == id) {
        Some(l) => answer(
            StatusCode::OK,
            json!({"id": l.id, "name": l.name, "is_archived": false,
                   "source_file": l.source_file, "compile_cmd": null, "run_cmd": l.run_cmd}),
        ),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `GET /statuses`.
async fn statuses() -> Json<Value> {
    Json(
        STATUSES
            .iter()
            .map(|(id, d)| json!({"id": id, "description": d}))
            .collect(),
    )
}

/// `GET /about`: the Judge0 version whose API this is (clients choose their language ids by
/// it).
async fn about() -> Json<Value> {
    Json(json!({
        "version": "1.13.1",
        "homepage": "https://github.com/weir-sandbox/weir",
        "source_code": "https://github.com/weir-sandbox/weir",
        "maintainer": "weir (a WebAssembly sandbox answering Judge0's API)",
    }))
}

/// `GET /config_info`: every setting Judge0 reports, as this server applies it.
async fn config_info(State(state): State<Arc<AppState>>) -> Json<Value> {
    use submission::bounds;
    let config = &state.config;
    let callbacks = &config.callbacks;
    let max_memory = config.max_limits.memory_bytes / 1024;
    let max_wall = (config.max_limits.wall_ms as f64 / 1000.0).min(bounds::WALL_TIME.1);
    Json(json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": false,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": true,
        "enable_submission_delete": false,
        "enable_callbacks": !callbacks.allow.is_empty(),
        "callbacks_max_tries": callbacks.retries + 1,
        "callbacks_timeout": callbacks.timeout_ms as f64 / 1000.0,
        "enable_additional_files": false,
        "max_queue_size": config.max_sessions,
        "cpu_time_limit": bounds::CPU_TIME.0,
        "max_cpu_time_limit": bounds::CPU_TIME.1,
        "cpu_extra_time": bounds::CPU_EXTRA.0,
        "max_cpu_extra_time": bounds::CPU_EXTRA.1,
        "wall_time_limit": bounds::WALL_TIME.0.min(max_wall),
        "max_wall_time_limit": max_wall,
        "memory_limit": bounds::MEMORY_DEFAULT.min(max_memory as f64),
        "max_memory_limit": max_memory,
        "stack_limit": bounds::STACK.0,
        "max_stack_limit": bounds::STACK.1,
        "max_processes_and_or_threads": bounds::PROCESSES.0,
        "max_max_processes_and_or_threads": bounds::PROCESSES.1,
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": false,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": false,
        "max_file_size": bounds::FILE_SIZE.0,
        "max_max_file_size": bounds::FILE_SIZE.1,
        "number_of_runs": 1,
        "max_number_of_runs": bounds::RUNS.1,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": 0,
        "enable_batched_submissions": true,
        "max_submission_batch_size": MAX_BATCH,
        "submission_cache_duration": 0,
        "use_docs_as_homepage": false,
        "allow_enable_network": state.network.is_some(),
        "enable_network": false,
    }))
}
