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
        super::answer(self.http.post(&self.url).json(&body)).await
    }
}
