//! The built-in model catalog through the gateway: deployments by catalog id, `provider/model`
//! names for providers exposing their namespace, capability checks before any provider is
//! called, and `/v1/models` describing models with the catalog's fields.

use serde_json::{json, Value};
use switchyard_core::catalog::{self, CatalogModel, Mode};
use switchyard_core::keys::hash_key;
use switchyard_core::routing::NoHealth;
use switchyard_core::{Gateway, GatewayError, HeadOutcome, Plan, RequestHead};

fn gateway(providers: Value, models: Value) -> Result<Gateway, String> {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": providers,
        "models": models,
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .map(|g| g.resolve_secrets(&|name| Some(format!("secret-for-{name}"))))
        .map_err(|e| e.to_string())
}

fn providers() -> Value {
    json!({
        "anthropic": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"},
        "bedrock": {"kind": "bedrock", "aws": {"region": "us-east-1"}, "api_key_secret": "BR"},
        "groq": {"kind": "openai", "base_url": "https://api.groq.com/openai",
                 "api_key_secret": "GROQ_KEY", "expose_catalog": true},
        "local": {"kind": "openai", "base_url": "http://127.0.0.1:8100"}
    })
}

fn plan(gw: &Gateway, body: Value) -> Result<Plan, GatewayError> {
    let head = RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("rejected at the head")
    };
    let body = serde_json::to_vec(&body).unwrap();
    gw.plan(&admitted, &body, 3, 1_700_000_000, &NoHealth)
}

fn models_list(gw: &Gateway, path: &str) -> Value {
    let head = RequestHead {
        method: "GET",
        path,
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::Reply(reply) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("models list is answered locally")
    };
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).unwrap()
}

/// A chat model of `namespace` with and without a capability, picked from the data so the
/// tests follow the catalog as it is regenerated.
fn chat_model(namespace: &str, keep: impl Fn(&CatalogModel) -> bool) -> &'static CatalogModel {
    catalog::models()
        .iter()
        .find(|m| m.namespace() == namespace && m.mode == Mode::Chat && keep(m))
        .unwrap_or_else(|| panic!("the catalog has a fitting {namespace} model"))
}

fn tool_request(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "weather?"}],
           "tools": [{"type": "function", "function": {"name": "get_weather",
                      "parameters": {"type": "object", "properties": {}}}}]})
}

#[test]
fn a_deployment_by_catalog_id_gets_provider_model_and_price() {
    let entry = chat_model("anthropic", |m| m.capabilities.tools);
    let gw = gateway(
        providers(),
        json!([{"name": "claude", "deployments": [{"catalog": entry.id}]}]),
    )
    .unwrap();
    let plan = plan(&gw, tool_request("claude")).unwrap();
    let attempt = &plan.attempts[0];
    assert_eq!(attempt.provider, "anthropic");
    assert_eq!(attempt.upstream_model, entry.upstream());
    assert_eq!(attempt.price, entry.price);
    assert!(attempt.price.output > 0.0);
    let up = plan.upstream_request(0).unwrap();
    let body: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(body["model"], entry.upstream());
    assert_eq!(body["tools"][0]["name"], "get_weather");
}

#[test]
fn a_configured_price_wins_over_the_catalog() {
    let entry = chat_model("anthropic", |_| true);
    let gw = gateway(
        providers(),
        json!([{"name": "claude", "deployments": [
            {"catalog": entry.id, "price": {"input": 1.5, "output": 2.5}}]}]),
    )
    .unwrap();
    let plan = plan(&gw, tool_request("claude")).unwrap();
    assert_eq!(plan.attempts[0].price.input, 1.5);
    assert_eq!(plan.attempts[0].price.output, 2.5);
}

#[test]
fn catalog_configs_that_cannot_resolve_are_refused_at_load() {
    let openai = chat_model("openai", |_| true).id;
    let groq = chat_model("groq", |_| true).id;
    for (providers, models, why) in [
        (
            providers(),
            json!([{"name": "x", "deployments": [{"catalog": "anthropic/no-such-model"}]}]),
            "not in the model catalog",
        ),
        (
            // Two openai-kind providers whose names are not namespaces both default to
            // the `openai` namespace: the choice is ambiguous.
            json!({"a": {"kind": "openai", "base_url": "http://a"},
                   "b": {"kind": "openai", "base_url": "http://b"}}),
            json!([{"name": "x", "deployments": [{"catalog": openai}]}]),
            "name one with `provider`",
        ),
        (
            json!({"a": {"kind": "anthropic"}}),
            json!([{"name": "x", "deployments": [{"catalog": groq}]}]),
            "no provider serves the catalog namespace `groq`",
        ),
        (
            json!({"a": {"kind": "anthropic", "catalog": "groq"}}),
            json!([{"name": "x", "deployments": [{"provider": "a", "model": "m"}]}]),
            "not one of its kind's",
        ),
        (
            providers(),
            json!([{"name": "x", "deployments": [{"provider": "local"}]}]),
            "needs `provider` and `model`, or `catalog`",
        ),
    ] {
        let err = gateway(providers, models).expect_err(why);
        assert!(err.contains(why), "{err} should mention {why}");
    }
}

#[test]
fn an_exposed_namespace_serves_provider_slash_model_names() {
    let gw = gateway(providers(), json!([])).unwrap();
    let entry = chat_model("groq", |_| true);
    let public = format!("groq/{}", entry.upstream());
    let plan = plan(
        &gw,
        json!({"model": public, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    assert_eq!(plan.attempts[0].provider, "groq");
    assert_eq!(plan.attempts[0].upstream_model, entry.upstream());
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.authority, "api.groq.com");
    assert_eq!(up.path, "/openai/v1/chat/completions");

    // Every chat and embedding model of the namespace is listed, with the catalog's fields.
    let list = models_list(&gw, "/v1/models");
    let data = list["data"].as_array().unwrap();
    let groq = catalog::models()
        .iter()
        .filter(|m| m.namespace() == "groq" && matches!(m.mode, Mode::Chat | Mode::Embedding))
        .count();
    assert_eq!(data.len(), groq);
    let item = data.iter().find(|m| m["id"] == public.as_str()).unwrap();
    assert_eq!(item["catalog_id"], entry.id);
    assert_eq!(item["mode"], "chat");
    assert_eq!(item["context_window"], json!(entry.context_window));
    assert_eq!(item["max_output_tokens"], json!(entry.max_output));
    assert_eq!(item["pricing"]["input_per_million"], entry.price.input);
    assert_eq!(item["capabilities"]["tools"], entry.capabilities.tools);

    // Gemini clients see the limits in Google's field names.
    let list = models_list(&gw, "/v1beta/models");
    let item = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == format!("models/{public}"))
        .unwrap();
    assert_eq!(item["inputTokenLimit"], json!(entry.context_window));
    assert_eq!(item["outputTokenLimit"], json!(entry.max_output));
}

#[test]
fn tools_to_a_model_without_them_are_a_400_before_any_provider() {
    let no_tools = chat_model("bedrock", |m| !m.capabilities.tools);
    let gw = gateway(
        providers(),
        json!([{"name": "plain", "deployments": [{"catalog": no_tools.id}]}]),
    )
    .unwrap();
    let err = plan(&gw, tool_request("plain")).unwrap_err();
    assert_eq!(err.status, 400);
    assert_eq!(err.param.as_deref(), Some("tools"));
    assert_eq!(err.code, Some("unsupported_by_model"));
    assert!(
        err.message.contains("does not support tools"),
        "{}",
        err.message
    );
    assert!(err.message.contains(no_tools.id), "{}", err.message);
    // Without tools, the same model is served.
    let ok = plan(
        &gw,
        json!({"model": "plain", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    assert_eq!(ok.attempts[0].upstream_model, no_tools.upstream());
}

#[test]
fn a_deployment_lacking_a_capability_is_skipped_for_one_that_has_it() {
    let no_tools = chat_model("bedrock", |m| !m.capabilities.tools);
    let tools = chat_model("anthropic", |m| m.capabilities.tools);
    let gw = gateway(
        providers(),
        json!([{"name": "mixed", "deployments": [{"catalog": no_tools.id}, {"catalog": tools.id}]}]),
    )
    .unwrap();
    let plan = plan(&gw, tool_request("mixed")).unwrap();
    let chain: Vec<&str> = plan.attempts.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(chain, ["anthropic"]);
}

#[test]
fn images_json_mode_and_output_limits_are_checked() {
    let text_only = chat_model("bedrock", |m| !m.capabilities.vision);
    let no_json = chat_model("bedrock", |m| !m.capabilities.json_mode);
    let bounded = chat_model("anthropic", |m| m.max_output.is_some());
    let gw = gateway(
        providers(),
        json!([
            {"name": "text", "deployments": [{"catalog": text_only.id}]},
            {"name": "nojson", "deployments": [{"catalog": no_json.id}]},
            {"name": "bounded", "deployments": [{"catalog": bounded.id}]}
        ]),
    )
    .unwrap();
    let image = json!({"model": "text", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    assert_eq!(
        plan(&gw, image).unwrap_err().param.as_deref(),
        Some("messages")
    );
    let json_mode = json!({"model": "nojson", "response_format": {"type": "json_object"},
                           "messages": [{"role": "user", "content": "json please"}]});
    assert_eq!(
        plan(&gw, json_mode).unwrap_err().param.as_deref(),
        Some("response_format")
    );
    let max = bounded.max_output.unwrap();
    let too_long = json!({"model": "bounded", "max_tokens": max + 1,
                          "messages": [{"role": "user", "content": "write"}]});
    let err = plan(&gw, too_long).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("max_tokens"));
    assert!(
        err.message.contains(&format!("at most {max}")),
        "{}",
        err.message
    );
    let fits = json!({"model": "bounded", "max_tokens": max,
                      "messages": [{"role": "user", "content": "write"}]});
    assert!(plan(&gw, fits).is_ok());
}
