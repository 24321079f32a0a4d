//! The embedded model over real HTTP: Ollama's formats byte for byte (design notes'
//! literal lines, timestamps, ids and durations aside), its errors, and its pacing.

mod common;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tokenwire_servers::http::{UPSTREAM_IDLE_MAX, upstream_client};
use tokenwire_servers::model::{ModelConfig, OpenAiFormat, Plan};
use tokio_util::sync::CancellationToken;

const CHAT_TOKEN: &str = r#"{"model":"gemma3:12b","created_at":"2025-01-01T12:00:00.123456789Z","message":{"role":"assistant","content":"The"},"done":false}"#;
const CHAT_DONE: &str = r#"{"model":"gemma3:12b","created_at":"2025-01-01T12:00:04.9Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#;
const OAI_FIRST: &str = r#"data: {"id":"chatcmpl-875","object":"chat.completion.chunk","created":1749989023,"model":"gemma3:12b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"The"},"finish_reason":null}]}"#;
const OAI_FINISH: &str = r#"data: {"id":"chatcmpl-875","object":"chat.completion.chunk","created":1749989023,"model":"gemma3:12b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
const OAI_USAGE: &str = r#"data: {"id":"chatcmpl-875","object":"chat.completion.chunk","created":1749989023,"model":"gemma3:12b","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":282,"total_tokens":308}}"#;

/// Replaces the scalar value of each `"key":` with `_`.
fn blank(line: &str, keys: &[&str]) -> String {
    let mut s = line.to_owned();
    for key in keys {
        let pat = format!("\"{key}\":");
        let mut from = 0;
        while let Some(i) = s[from..].find(&pat) {
            let start = from + i + pat.len();
            let rest = &s[start..];
            let len = if let Some(r) = rest.strip_prefix('"') {
                // a JSON string: up to the closing unescaped quote
                let mut esc = false;
                let mut end = 0;
                for (j, c) in r.char_indices() {
                    if esc {
                        esc = false;
                    } else if c == '\\' {
                        esc = true;
                    } else if c == '"' {
                        end = j;
                        break;
                    }
                }
                end + 2
            } else {
                rest.find([',', '}']).unwrap_or(rest.len())
            };
            s.replace_range(start..start + len, "_");
            from = start + 1;
        }
    }
    s
}

struct Model {
    url: String,
    model: tokenwire_servers::model::Model,
    _shutdown: CancellationToken,
}

async fn model(cfg: ModelConfig) -> Model {
    let shutdown = CancellationToken::new();
    let (run, model) = tokenwire_servers::launch::start_model(
        "127.0.0.1:0".parse().unwrap(),
        cfg,
        shutdown.clone(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    Model {
        url: run.url,
        model,
        _shutdown: shutdown,
    }
}

/// Sends a request; returns status, content type and the body's frames (one per chunk).
async fn send(
    url: &str,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, String, Vec<Bytes>) {
    let req = Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = upstream_client(UPSTREAM_IDLE_MAX)
        .request(req)
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            frames.push(d);
        }
    }
    (status, ct, frames)
}

fn text(frames: &[Bytes]) -> String {
    String::from_utf8(frames.concat()).unwrap()
}

#[tokio::test]
async fn chat_stream_matches_ollama_line_for_line() {
    let m = model(common::fast_model()).await;
    let prompt = "Why is the sky blue?";
    let body =
        serde_json::json!({"model":"gemma3:12b","messages":[{"role":"user","content":prompt}]})
            .to_string();
    let (status, ct, frames) = send(&m.url, Method::POST, "/api/chat", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/x-ndjson");
    // One flush per line: no chunk holds more than one line.
    for f in &frames {
        assert!(
            f.iter().filter(|&&b| b == b'\n').count() <= 1,
            "two lines in one chunk: {f:?}"
        );
    }
    let all = text(&frames);
    let lines: Vec<&str> = all.lines().collect();
    let (last, tokens) = lines.split_last().unwrap();
    let mut joined = String::new();
    for line in tokens {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        joined.push_str(v["message"]["content"].as_str().unwrap());
        assert_eq!(
            blank(line, &["created_at", "content"]),
            blank(CHAT_TOKEN, &["created_at", "content"])
        );
        let ts = v["created_at"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() <= 30 && !ts.contains(".0Z") && !ts.ends_with("0Z"),
            "{ts}"
        );
    }
    assert_eq!(joined, m.model.expected_text(prompt, None));
    let keys = [
        "created_at",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ];
    assert_eq!(blank(last, &keys), blank(CHAT_DONE, &keys));
    let done: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(done["eval_count"].as_u64().unwrap(), tokens.len() as u64);
    // Real pacing: eval_duration covers the gaps between tokens (~0.7 ms each at speed 50).
    let eval_ns = done["eval_duration"].as_u64().unwrap();
    assert!(
        eval_ns > tokens.len() as u64 * 300_000,
        "eval_duration {eval_ns} ns for {} tokens",
        tokens.len()
    );
}

#[tokio::test]
async fn generate_stream_and_non_streaming_variants() {
    let m = model(common::fast_model()).await;
    let body =
        r#"{"model":"gemma3:12b","prompt":"Why is the sky blue?","options":{"num_predict":5}}"#;
    let (status, _, frames) = send(&m.url, Method::POST, "/api/generate", body).await;
    assert_eq!(status, StatusCode::OK);
    let all = text(&frames);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 6);
    assert!(lines[0].starts_with(r#"{"model":"gemma3:12b","created_at":""#));
    assert!(lines[0].contains(r#","response":""#) && lines[0].ends_with(r#","done":false}"#));
    let last: serde_json::Value = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 5);
    // context (prompt ids then answer ids) sits before the durations.
    let ctx_at = lines[5].find(r#","context":["#).unwrap();
    assert!(ctx_at < lines[5].find("total_duration").unwrap());
    let full = Plan::new("Why is the sky blue?", 0, 480, Some(5)).text();
    let streamed: String = lines[..5]
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["response"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(streamed, full);

    // Non-streaming: one JSON object with the whole text.
    let body = r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":7,"seed":3}}"#;
    let (status, ct, frames) = send(&m.url, Method::POST, "/api/chat", body).await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::OK, "application/json; charset=utf-8")
    );
    let v: serde_json::Value = serde_json::from_slice(&frames.concat()).unwrap();
    assert_eq!(
        v["message"]["content"],
        Plan::new("hi", 3, 480, Some(7)).text()
    );
    assert_eq!(
        (v["done"].as_bool(), v["eval_count"].as_u64()),
        (Some(true), Some(7))
    );

    let body =
        r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    let (_, _, frames) = send(&m.url, Method::POST, "/v1/chat/completions", body).await;
    let v: serde_json::Value = serde_json::from_slice(&frames.concat()).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn openai_stream_current_format() {
    let m = model(common::fast_model()).await;
    let body = r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"Why is the sky blue?"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, ct, frames) = send(&m.url, Method::POST, "/v1/chat/completions", body).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "text/event-stream"));
    let events: Vec<String> = text(&frames)
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let n = events.len() - 3; // finish, usage, [DONE]
    let keys = ["id", "created", "content"];
    assert_eq!(blank(&events[0], &keys), blank(OAI_FIRST, &keys));
    for e in &events[1..n] {
        assert!(
            e.contains(r#""delta":{"content":"#),
            "role only on the first chunk: {e}"
        );
    }
    let keys = [
        "id",
        "created",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ];
    assert_eq!(blank(&events[n], &keys), blank(OAI_FINISH, &keys));
    assert_eq!(blank(&events[n + 1], &keys), blank(OAI_USAGE, &keys));
    assert_eq!(events[n + 2], "data: [DONE]");
    let usage: serde_json::Value =
        serde_json::from_str(events[n + 1].trim_start_matches("data: ")).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"].as_u64(), Some(n as u64));
    // Finish, usage and [DONE] leave in one flush.
    let last = std::str::from_utf8(frames.last().unwrap()).unwrap();
    assert!(
        last.contains(r#""finish_reason":"stop""#)
            && last.contains("usage")
            && last.ends_with("data: [DONE]\n\n")
    );
    // ids are chatcmpl-<0..998>, the same on every chunk.
    let id = serde_json::from_str::<serde_json::Value>(events[0].trim_start_matches("data: "))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let num: u32 = id.strip_prefix("chatcmpl-").unwrap().parse().unwrap();
    assert!(num < 999);
    assert!(
        events[..n + 2]
            .iter()
            .all(|e| e.contains(&format!(r#""id":"{id}""#)))
    );
}

#[tokio::test]
async fn openai_stream_legacy_format() {
    let cfg = ModelConfig {
        openai_format: OpenAiFormat::Legacy,
        ..common::fast_model()
    };
    let m = model(cfg).await;
    let body = r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"x"}],"stream":true,"max_tokens":3}"#;
    let (_, _, frames) = send(&m.url, Method::POST, "/v1/chat/completions", body).await;
    let events: Vec<String> = text(&frames)
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        events.len(),
        5,
        "3 tokens, finish, [DONE] (no usage without include_usage)"
    );
    for e in &events[..3] {
        assert!(
            e.contains(r#""delta":{"role":"assistant","content":"#),
            "{e}"
        );
    }
    assert!(
        events[3].contains(r#""delta":{"role":"assistant","content":""},"finish_reason":"length""#),
        "{}",
        events[3]
    );
    assert_eq!(events[4], "data: [DONE]");
}

#[tokio::test]
async fn escapes_like_go() {
    let m = model(common::fast_model()).await;
    // Find a seed whose answer holds characters Go escapes.
    let seed = (0..500u64)
        .find(|&s| Plan::new("escape", s, 480, None).text().contains('<'))
        .expect("a seed reaching the code paragraph");
    let body = format!(r#"{{"model":"gemma3:12b","prompt":"escape","options":{{"seed":{seed}}}}}"#);
    let (_, _, frames) = send(&m.url, Method::POST, "/api/generate", &body).await;
    let raw = text(&frames);
    assert!(
        raw.contains(r"\u003c") && raw.contains(r"\u0026"),
        "Go's HTML-safe escapes"
    );
    assert!(!raw.contains('<') && !raw.contains('&') && !raw.contains('>'));
}

#[tokio::test]
async fn errors_are_ollamas() {
    let m = model(common::fast_model()).await;
    let cases: [(&str, &str, StatusCode, &str); 9] = [
        (
            "/api/chat",
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
            StatusCode::NOT_FOUND,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/chat",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            StatusCode::BAD_REQUEST,
            r#"{"error":"model is required"}"#,
        ),
        (
            "/api/chat",
            "",
            StatusCode::BAD_REQUEST,
            r#"{"error":"missing request body"}"#,
        ),
        (
            "/api/chat",
            "{bad",
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid character 'b' looking for beginning of value"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"gemma3:12b","prompt":"#,
            StatusCode::BAD_REQUEST,
            r#"{"error":"unexpected EOF"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"nope","prompt":"x"}"#,
            StatusCode::NOT_FOUND,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"model 'nope' not found","type":"not_found_error","param":null,"code":null}}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gemma3:12b","messages":[]}"#,
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"[] is too short - 'messages'","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
        (
            "/api/chat",
            r#"{"model":"gemma3:12b","messages":"x"}"#,
            StatusCode::BAD_REQUEST,
            "",
        ),
    ];
    for (path, body, want_status, want_body) in cases {
        let (status, _, frames) = send(&m.url, Method::POST, path, body).await;
        assert_eq!(status, want_status, "{path} {body}");
        let got = text(&frames);
        if want_body.is_empty() {
            assert!(got.starts_with(r#"{"error":""#), "{got}");
        } else {
            assert_eq!(got, want_body, "{path} {body}");
        }
    }
    let (status, _, frames) = send(&m.url, Method::GET, "/api/chat", "").await;
    assert_eq!(
        (status, text(&frames).as_str()),
        (StatusCode::NOT_FOUND, "404 page not found")
    );
    // No messages: Ollama loads the model and answers "load" at once.
    let (status, _, frames) = send(
        &m.url,
        Method::POST,
        "/api/chat",
        r#"{"model":"gemma3:12b"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text(&frames).ends_with(r#""done":true,"done_reason":"load"}"#),
        "{}",
        text(&frames)
    );
}

#[tokio::test]
async fn info_routes() {
    let m = model(common::fast_model()).await;
    let (s, _, f) = send(&m.url, Method::GET, "/", "").await;
    assert_eq!(
        (s, text(&f).as_str()),
        (StatusCode::OK, "Ollama is running")
    );
    let (_, _, f) = send(&m.url, Method::GET, "/api/version", "").await;
    assert_eq!(text(&f), r#"{"version":"0.32.6"}"#);
    let (_, _, f) = send(&m.url, Method::GET, "/api/tags", "").await;
    let v: serde_json::Value = serde_json::from_slice(&f.concat()).unwrap();
    assert_eq!(v["models"][0]["name"], "gemma3:12b");
    let (_, _, f) = send(&m.url, Method::GET, "/v1/models", "").await;
    let v: serde_json::Value = serde_json::from_slice(&f.concat()).unwrap();
    assert_eq!(
        (v["object"].as_str(), v["data"][0]["id"].as_str()),
        (Some("list"), Some("gemma3:12b"))
    );
}

#[tokio::test]
async fn default_pace_is_the_reference_models() {
    // Real timing (speed 1): ~250 ms to the first token, ~35 ms between tokens.
    let m = model(ModelConfig::default()).await;
    let body = r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"pace"}],"options":{"num_predict":12}}"#;
    let req = Request::post(format!("{}/api/chat", m.url))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let start = std::time::Instant::now();
    let resp = upstream_client(UPSTREAM_IDLE_MAX)
        .request(req)
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(f) = body.frame().await {
        if f.unwrap().is_data() {
            arrivals.push(start.elapsed());
        }
    }
    assert_eq!(arrivals.len(), 13);
    let ttft = arrivals[0].as_secs_f64() * 1e3;
    assert!((200.0..400.0).contains(&ttft), "TTFT {ttft} ms");
    let mean_gap = (arrivals[11] - arrivals[0]).as_secs_f64() * 1e3 / 11.0;
    assert!((28.0..50.0).contains(&mean_gap), "mean gap {mean_gap} ms");
}
