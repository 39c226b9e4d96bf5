//! A Slack incoming webhook: `{"text": ...}`; success is HTTP 200 with body `ok`.
//!
//! Slack reads `<...>` in `text` as a link or a mention (`<!channel>` notifies a whole
//! channel), so what ccm sends is escaped first: `&`, `<` and `>` become `&amp;`, `&lt;` and
//! `&gt;`, the three characters Slack's formatting docs say to escape (and the only ones it
//! decodes).

use serde_json::json;

use super::{Message, SendError};

pub struct Slack {
    pub http: reqwest::Client,
    /// The webhook URL; its path is the secret.
    pub url: String,
}

impl Slack {
    pub async fn send(&self, message: &Message) -> Result<String, SendError> {
        let body = json!({ "text": text(message) });
        let secret = self.url.split_once("/services/").map(|(_, s)| s).unwrap_or(&self.url);
        super::answer(self.http.post(&self.url).json(&body), &[secret]).await
    }
}

/// The message as Slack `mrkdwn`: the title in bold, then the text, both escaped.
fn text(message: &Message) -> String {
    format!("*{}*\n{}", escape(&message.title), escape(&message.text))
}

/// Escapes `&`, `<` and `>` as Slack asks (`&` first, so the others are not escaped twice).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn slack_escapes_ampersand_and_angle_brackets_only() {
        assert_eq!(
            super::escape("<!channel> & <@U123> say *hi* > \"x\""),
            "&lt;!channel&gt; &amp; &lt;@U123&gt; say *hi* &gt; \"x\""
        );
        assert_eq!(super::escape("&lt;"), "&amp;lt;", "text that looks escaped is escaped too");
    }
}
