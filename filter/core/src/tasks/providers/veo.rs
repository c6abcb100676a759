//! Google Veo on the Gemini API: `POST /v1beta/models/{model}:predictLongRunning` answers a
//! long-running operation (`{"name": "models/{model}/operations/{id}"}`); poll
//! `GET /v1beta/{name}` until `done`; cancel `POST /v1beta/{name}:cancel`. No webhooks.
//!
//! Wire format: <https://ai.google.dev/gemini-api/docs/video> and
//! <https://ai.google.dev/api/models#method:-models.predictlongrunning>. The task's `input`
//! is one instance (`prompt`, optional `image`...) plus an optional `parameters` member
//! (`aspectRatio`, `durationSeconds`...). A finished operation holds either `error`
//! (`{code, message}`, google.rpc.Status) or
//! `response.generateVideoResponse.generatedSamples[].video.uri`; samples withheld by safety
//! filters are counted in `raiMediaFilteredCount` with `raiMediaFilteredReasons`. Veo does
//! not report the duration produced: the task is billed by the `durationSeconds` asked for
//! (8 s, Veo 3's default, when absent). The provider's task id is the operation name.

use serde_json::{json, Value};

use super::{
    json_answer, malformed, requested_seconds, urls_in, ProviderCall, ProviderError,
    ProviderFailure, ProviderState, ProviderTask, SubmitSpec,
};

const NAME: &str = "veo";

/// Seconds billed when the input does not say (Veo 3's default length).
pub const DEFAULT_SECONDS: f64 = 8.0;

/// The submit call.
pub fn submit(spec: &SubmitSpec<'_>) -> ProviderCall {
    let mut instance = spec.input.clone();
    let parameters = instance
        .as_object_mut()
        .and_then(|o| o.remove("parameters"));
    let mut body = json!({ "instances": [instance] });
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    let model = spec.model.trim_start_matches("models/");
    ProviderCall::post_json(format!("/v1beta/models/{model}:predictLongRunning"), &body)
}

/// The poll call (`task_id` is the operation name).
pub fn poll(task_id: &str) -> ProviderCall {
    ProviderCall::get(format!("/v1beta/{task_id}"))
}

/// The cancel call.
pub fn cancel(task_id: &str) -> ProviderCall {
    ProviderCall::post(format!("/v1beta/{task_id}:cancel"))
}

/// Reads an operation (submit or poll answer). `input`, when given, is the task's input, to
/// bill the duration it asked for.
pub fn read_operation(
    status: u16,
    body: &[u8],
    input: Option<&Value>,
) -> Result<ProviderTask, ProviderError> {
    let operation = json_answer(NAME, status, body)?;
    let name = operation["name"]
        .as_str()
        .ok_or_else(|| malformed(NAME, "operation without `name`"))?;
    if operation["done"] != Value::Bool(true) {
        let state = if operation["metadata"].is_object() {
            ProviderState::Running
        } else {
            ProviderState::Queued
        };
        return Ok(ProviderTask::new(name, state));
    }
    if let Some(error) = operation.get("error") {
        let code = error["code"].as_i64().unwrap_or(2);
        let message = error["message"].as_str().unwrap_or("the operation failed");
        return Ok(ProviderTask::failed(
            name,
            ProviderFailure::new(code.to_string(), message),
        ));
    }
    let videos = &operation["response"]["generateVideoResponse"];
    let outputs: Vec<String> = videos["generatedSamples"]
        .as_array()
        .map(|samples| {
            samples
                .iter()
                .flat_map(|s| urls_in(&s["video"]["uri"]))
                .collect()
        })
        .unwrap_or_default();
    if outputs.is_empty() {
        let reasons = videos["raiMediaFilteredReasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "the operation finished without a video".to_string());
        return Ok(ProviderTask::failed(
            name,
            ProviderFailure::new("content_filtered", reasons),
        ));
    }
    let mut task = ProviderTask::new(name, ProviderState::Succeeded);
    let per_video = input.and_then(requested_seconds).unwrap_or(DEFAULT_SECONDS);
    task.usage.seconds = Some(per_video * outputs.len() as f64);
    task.outputs = outputs;
    task.progress = Some(1.0);
    Ok(task)
}
