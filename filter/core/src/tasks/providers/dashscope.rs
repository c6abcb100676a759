//! Alibaba DashScope asynchronous tasks (Wan, Qwen-Image...): submit with
//! `X-DashScope-Async: enable` to the model family's service path, poll
//! `GET /api/v1/tasks/{task_id}`, cancel `POST /api/v1/tasks/{task_id}/cancel` (only while
//! `PENDING`). No webhooks: the task plane polls.
//!
//! Wire format: <https://www.alibabacloud.com/help/en/model-studio/text-to-image-v2-api-reference>
//! and <https://www.alibabacloud.com/help/en/model-studio/text-to-video-api-reference>.
//! The submit answers `{"output": {"task_id", "task_status": "PENDING"}, "request_id"}`;
//! states are `PENDING | RUNNING | SUCCEEDED | FAILED | CANCELED | UNKNOWN` (`UNKNOWN`: the
//! task id expired or never existed, after 24 h). Image results are `output.results[].url`
//! (an entry with `code` instead failed alone), video is `output.video_url`; billing units
//! are `usage.image_count` / `usage.video_duration`. Refusals are non-2xx with
//! `{code, message, request_id}`.
//!
//! The service path is chosen by the model name: video models (`…t2v…`, `…i2v…`, `…video…`)
//! go to `video-generation/video-synthesis`, the others to `text2image/image-synthesis`.
//! The task's `input` is DashScope's `input`, except a `parameters` member, which is sent as
//! the request's `parameters`.

use serde_json::json;

use super::{
    json_answer, malformed, ProviderCall, ProviderError, ProviderFailure, ProviderState,
    ProviderTask, SubmitSpec,
};

const NAME: &str = "dashscope";

/// Service path of image generation.
pub const IMAGE_PATH: &str = "/api/v1/services/aigc/text2image/image-synthesis";
/// Service path of video generation.
pub const VIDEO_PATH: &str = "/api/v1/services/aigc/video-generation/video-synthesis";

pub(crate) fn is_video_model(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    ["t2v", "i2v", "kf2v", "video"]
        .iter()
        .any(|m| model.contains(m))
}

/// The submit call.
pub fn submit(spec: &SubmitSpec<'_>) -> ProviderCall {
    let mut input = spec.input.clone();
    let parameters = input
        .as_object_mut()
        .and_then(|o| o.remove("parameters"))
        .unwrap_or_else(|| json!({}));
    let path = if is_video_model(spec.model) {
        VIDEO_PATH
    } else {
        IMAGE_PATH
    };
    let mut call = ProviderCall::post_json(
        path.to_string(),
        &json!({ "model": spec.model, "input": input, "parameters": parameters }),
    );
    call.headers
        .push(("x-dashscope-async".into(), "enable".into()));
    call
}

/// The poll call.
pub fn poll(task_id: &str) -> ProviderCall {
    ProviderCall::get(format!("/api/v1/tasks/{task_id}"))
}

/// The cancel call.
pub fn cancel(task_id: &str) -> ProviderCall {
    ProviderCall::post(format!("/api/v1/tasks/{task_id}/cancel"))
}

/// Reads a submit or poll answer.
pub fn read_task(status: u16, body: &[u8]) -> Result<ProviderTask, ProviderError> {
    let answer = json_answer(NAME, status, body)?;
    let output = &answer["output"];
    let id = output["task_id"]
        .as_str()
        .ok_or_else(|| malformed(NAME, "answer without `output.task_id`"))?;
    let state = match output["task_status"].as_str() {
        Some("PENDING") => ProviderState::Queued,
        Some("RUNNING") => ProviderState::Running,
        Some("SUCCEEDED") => ProviderState::Succeeded,
        Some("FAILED") => ProviderState::Failed,
        Some("CANCELED") => ProviderState::Canceled,
        Some("UNKNOWN") => {
            return Ok(ProviderTask::failed(
                id,
                ProviderFailure::new("UNKNOWN", "DashScope no longer knows this task (expired)"),
            ))
        }
        other => return Err(malformed(NAME, format!("unknown task_status {other:?}"))),
    };
    if state == ProviderState::Failed {
        let code = output["code"].as_str().unwrap_or("FAILED");
        let message = output["message"].as_str().unwrap_or("the task failed");
        return Ok(ProviderTask::failed(
            id,
            ProviderFailure::new(code, message),
        ));
    }
    let mut task = ProviderTask::new(id, state);
    if state == ProviderState::Succeeded {
        if let Some(results) = output["results"].as_array() {
            task.outputs = results
                .iter()
                .filter_map(|r| r["url"].as_str().map(String::from))
                .collect();
        }
        if let Some(video) = output["video_url"].as_str() {
            task.outputs.push(video.to_string());
        }
        let usage = &answer["usage"];
        task.usage.images = usage["image_count"].as_u64().map_or(0, |n| n as u32);
        task.usage.seconds = usage["video_duration"].as_f64();
        if task.usage.images == 0 && task.usage.seconds.is_none() {
            task.usage.images = task.outputs.len() as u32;
        }
        if task.outputs.is_empty() {
            return Ok(ProviderTask::failed(
                id,
                ProviderFailure::new("NO_OUTPUT", "the task succeeded without any output"),
            ));
        }
        task.progress = Some(1.0);
    }
    Ok(task)
}
