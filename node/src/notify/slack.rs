//! A Slack incoming webhook: `{"text": ...}`; success is HTTP 200 with body `ok`.

use serde_json::json;

use super::{Message, SendError};

pub struct Slack {
    pub http: reqwest::Client,
    pub url: String,
}

impl Slack {
    pub async fn send(&self, message: &Message) -> Result<String, SendError> {
        let body = json!({ "text": format!("*{}*\n{}", message.title, message.text) });
        let response =
            self.http.post(&self.url).json(&body).send().await.map_err(SendError::request)?;
        let status = response.status().as_u16();
        let retry_after = super::retry_after(response.headers());
        let text = response.text().await.map_err(SendError::request)?;
        if status != 200 {
            return Err(SendError::status(status, &text, retry_after));
        }
        Ok(format!("HTTP 200: {}", text.trim()))
    }
}
