//! The host's admin API from xtask commands (`dead-letters`, `replay`): one base URL, one bearer
//! token, and every non-2xx answer turned into an error carrying the API's own message.

use anyhow::{Context, bail};
use serde_json::Value;

/// What a request carries.
pub enum Body {
    None,
    Json(Value),
    /// A component, as `application/wasm`.
    Wasm(Vec<u8>),
}

/// The admin API at one base URL with one token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// `token` from a flag or `ADMIN_TOKEN`; `None` is an error saying so.
    pub fn new(base_url: &str, token: Option<String>) -> anyhow::Result<Api> {
        let token = token.context("the admin token: pass --token or set ADMIN_TOKEN")?;
        Ok(Api { http: reqwest::Client::new(), base: base_url.trim_end_matches('/').to_string(), token })
    }

    /// One request; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> anyhow::Result<Value> {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).query(query).bearer_auth(&self.token);
        request = match body {
            Body::None => request,
            Body::Json(v) => request.json(&v),
            Body::Wasm(bytes) => request.header("content-type", "application/wasm").body(bytes),
        };
        let response = request.send().await.with_context(|| format!("reaching {}", self.base))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{status}: {} ({})", text(&value["error"]["message"]), text(&value["error"]["code"]));
        }
        Ok(value)
    }
}

/// A JSON value as plain text: strings unquoted, null empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
