//! A generic webhook: a JSON body, signed with HMAC-SHA256 of its exact bytes
//! (`X-Ccm-Signature: sha256=<hex>`) when a secret is configured.

use hmac::{Mac as _, SimpleHmac};
use serde_json::json;

use super::{Message, SendError};

pub struct Webhook {
    pub http: reqwest::Client,
    pub url: String,
    pub secret: Option<String>,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Webhook {
    pub async fn send(&self, message: &Message) -> Result<String, SendError> {
        let body = json!({
            "event": message.event,
            "title": message.title,
            "text": message.text,
            "severity": message.severity,
            "system": message.system,
            "subject": message.subject,
        })
        .to_string();
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(secret) = &self.secret {
            request = request.header("X-Ccm-Signature", signature(secret, body.as_bytes()));
        }
        super::answer(request, &secrets(&self.url)).await
    }
}

/// The parts of a webhook URL that may be credentials: its path and query.
fn secrets(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split_once('/').map(|(_, path)| path).into_iter().filter(|p| p.len() > 1).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_the_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
