//! What the run's metadata records about the servers, asked through the raw proxy (which
//! forwards the whole API): Ollama's version and, from the embedded model, its settings.

use crate::client::ClientError;
use crate::client::https::HttpsClient;
use http::Method;
use http_body_util::BodyExt;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServerInfo {
    /// `/api/version` of the upstream (embedded model or real Ollama).
    pub ollama_version: Option<String>,
    /// The embedded model's `/tokenwire/model` settings (absent with a real Ollama).
    pub model_settings: Option<serde_json::Value>,
}

async fn get_json(c: &mut HttpsClient, path: &str) -> Result<serde_json::Value, ClientError> {
    let resp = c
        .request(Method::GET, path, bytes::Bytes::new(), true)
        .await?;
    if !resp.status().is_success() {
        return Err(ClientError::Status {
            status: resp.status(),
            body: String::new(),
        });
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ClientError::Stream(e.to_string()))
}

/// Best effort: what cannot be had stays `None`.
pub async fn fetch(client: &mut HttpsClient) -> ServerInfo {
    let ollama_version = get_json(client, "/api/version")
        .await
        .ok()
        .and_then(|v| v.get("version")?.as_str().map(str::to_owned));
    let model_settings = get_json(client, "/tokenwire/model").await.ok();
    ServerInfo {
        ollama_version,
        model_settings,
    }
}
