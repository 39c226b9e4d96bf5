//! ntfy: JSON publishing to the server's root URL, the topic named in the body.

use ccm_schema::Severity;
use serde_json::json;

use super::{Message, SendError};

pub struct Ntfy {
    pub http: reqwest::Client,
    /// The topic URL, `https://ntfy.sh/<topic>`.
    pub url: String,
    pub token: Option<String>,
    pub priority: Option<u8>,
    pub click: Option<String>,
}

impl Ntfy {
    pub async fn send(&self, message: &Message) -> Result<String, SendError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| SendError {
            message: format!("bad ntfy url: {e}"),
            retry_after: None,
            permanent: true,
            status: None,
        })?;
        let topic =
            url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_string();
        let mut root = url.clone();
        root.path_segments_mut()
            .map(|mut s| {
                s.pop();
            })
            .ok();
        let priority = self.priority.unwrap_or(match message.severity {
            Severity::Info => 3,
            Severity::Warning => 4,
            Severity::Critical => 5,
        });
        let mut body = json!({
            "topic": topic,
            "title": message.title,
            "message": message.text,
            "priority": priority,
            "tags": [message.severity.to_string()],
        });
        if let Some(click) = &self.click {
            body["click"] = json!(click);
            body["actions"] = json!([{ "action": "view", "label": "Open ccm", "url": click }]);
        }
        let mut request = self.http.post(root).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        // The topic name is the password of a topic on a public server.
        super::answer(request, &[topic.as_str()]).await
    }
}
