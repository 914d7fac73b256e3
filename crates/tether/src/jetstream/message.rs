//! Messages delivered by a consumer, their metadata, and acks.

use std::time::Duration;

use crate::error::{PublishError as CorePublishError, RequestError};
use crate::{Client, Message};

/// Why an ack could not be sent or was not confirmed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The message has no reply subject to ack to (a consumer with ack policy none, or
    /// not a JetStream message).
    #[error("the message on {subject:?} has no JetStream reply subject: nothing to ack (ack policy none?)")]
    NoReplySubject {
        /// The message's subject.
        subject: String,
    },
    /// The ack could not be published.
    #[error("the ack could not be sent: {0}")]
    Publish(CorePublishError),
    /// A double ack got no confirmation (timeout, lost link...): the server may or may
    /// not have recorded it.
    #[error("the ack was not confirmed: {0}")]
    NotConfirmed(RequestError),
}

/// A message's JetStream metadata, read from its reply subject.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageInfo {
    /// The JetStream domain, if any.
    pub domain: Option<String>,
    /// The stream.
    pub stream: String,
    /// The consumer.
    pub consumer: String,
    /// How many times it has been delivered (1 the first time).
    pub delivered: u64,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// Its sequence in the consumer.
    pub consumer_sequence: u64,
    /// When it was stored, nanoseconds since the Unix epoch.
    pub published_nanos: i64,
    /// Messages still pending for the consumer after this one.
    pub pending: u64,
}

impl MessageInfo {
    /// Parse `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` or
    /// its newer form with domain and account hash
    /// (`$JS.ACK.<domain>.<hash>.<stream>...<pending>.<token>`).
    pub fn parse(reply: &str) -> Option<Self> {
        let rest = reply.strip_prefix("$JS.ACK.")?;
        let t: Vec<&str> = rest.split('.').collect();
        let (domain, t) = match t.len() {
            7 => (None, &t[..]),
            n if n >= 9 => {
                let d = (t[0] != "_").then(|| t[0].to_owned());
                (d, &t[2..9])
            }
            _ => return None,
        };
        Some(Self {
            domain,
            stream: t[0].to_owned(),
            consumer: t[1].to_owned(),
            delivered: t[2].parse().ok()?,
            stream_sequence: t[3].parse().ok()?,
            consumer_sequence: t[4].parse().ok()?,
            published_nanos: t[5].parse().ok()?,
            pending: t[6].parse().ok()?,
        })
    }
}

/// A message from a pull consumer: the core [`Message`] plus acks.
///
/// Dereferences to the [`Message`] (`msg.payload`, `msg.subject`, `msg.headers`).
#[derive(Debug, Clone)]
pub struct JsMessage {
    message: Message,
    client: Client,
    ack_timeout: Duration,
}

impl std::ops::Deref for JsMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl JsMessage {
    pub(crate) fn new(message: Message, client: Client, ack_timeout: Duration) -> Self {
        Self {
            message,
            client,
            ack_timeout,
        }
    }

    /// The core message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The core message, taken out.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// Its metadata (stream, sequences, deliveries), when its reply subject is a
    /// JetStream ack subject.
    pub fn info(&self) -> Option<MessageInfo> {
        self.message
            .reply
            .as_ref()
            .and_then(|r| MessageInfo::parse(r.as_str()))
    }

    fn reply(&self) -> Result<&str, AckError> {
        match &self.message.reply {
            Some(r) if r.as_str().starts_with("$JS.ACK.") => Ok(r.as_str()),
            _ => Err(AckError::NoReplySubject {
                subject: self.message.subject.as_str().to_owned(),
            }),
        }
    }

    async fn send(&self, body: &[u8]) -> Result<(), AckError> {
        let reply = self.reply()?;
        self.client
            .publish_ack(reply, body)
            .await
            .map_err(AckError::Publish)
    }

    /// Acknowledge: handled, never redeliver. Ok once the ack is buffered (while a
    /// [`Messages`](super::Messages) stream is live it is written with the others of its
    /// read, within about a millisecond; see "Ack writes" in the [module docs](super));
    /// see [`double_ack`](Self::double_ack) for one the server confirms.
    pub async fn ack(&self) -> Result<(), AckError> {
        self.send(b"+ACK").await
    }

    /// Acknowledge and wait for the server to confirm that it recorded the ack.
    pub async fn double_ack(&self) -> Result<(), AckError> {
        let reply = self.reply()?;
        self.client
            .request_with(reply, None, b"+ACK", self.ack_timeout)
            .await
            .map(drop)
            .map_err(AckError::NotConfirmed)
    }

    /// Not handled: redeliver now.
    pub async fn nak(&self) -> Result<(), AckError> {
        self.send(b"-NAK").await
    }

    /// Not handled: redeliver after `delay`.
    pub async fn nak_with_delay(&self, delay: Duration) -> Result<(), AckError> {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.send(format!("-NAK {{\"delay\":{ns}}}").as_bytes())
            .await
    }

    /// Never redeliver (it cannot be handled).
    pub async fn term(&self) -> Result<(), AckError> {
        self.send(b"+TERM").await
    }

    /// Still working on it: restart the ack_wait timer.
    pub async fn in_progress(&self) -> Result<(), AckError> {
        self.send(b"+WPI").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ack_subject_forms_parse() {
        let v1 = MessageInfo::parse("$JS.ACK.S.C.2.10.4.1700000000000000000.7").unwrap();
        assert_eq!(
            (
                v1.stream.as_str(),
                v1.consumer.as_str(),
                v1.delivered,
                v1.stream_sequence
            ),
            ("S", "C", 2, 10)
        );
        assert_eq!((v1.consumer_sequence, v1.pending, v1.domain), (4, 7, None));
        let v2 =
            MessageInfo::parse("$JS.ACK.hub.ACCHASH.S.C.1.5.3.1700000000000000000.0.xyz").unwrap();
        assert_eq!(v2.domain.as_deref(), Some("hub"));
        assert_eq!((v2.stream_sequence, v2.consumer_sequence), (5, 3));
        let v2 = MessageInfo::parse("$JS.ACK._.ACCHASH.S.C.1.5.3.17.0.xyz").unwrap();
        assert_eq!(v2.domain, None);
        assert!(MessageInfo::parse("$JS.ACK.S.C.x.5.3.17.0").is_none());
        assert!(MessageInfo::parse("_INBOX.a.b").is_none());
    }
}
