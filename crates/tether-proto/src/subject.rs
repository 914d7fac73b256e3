//! Subject and queue-group validation (DESIGN "Semantics" 14) and wildcard matching.
//!
//! Rules from the subject-based messaging docs
//! (<https://docs.nats.io/nats-concepts/subjects>) and nats-server `server/sublist.go`
//! (`IsValidSubject`, `IsValidLiteralSubject`): subjects are `.`-separated non-empty
//! tokens without whitespace; `*` matches one token and `>` one or more trailing tokens,
//! both only as whole tokens. Tokens such as `foo*` are literal, as in nats-server.
//! Control characters are refused too: they would corrupt the control line.

use crate::error::{InputKind, ValidationError};

/// Checks a subject to publish to: no wildcard tokens.
pub fn validate_publish_subject(subject: &str) -> Result<(), ValidationError> {
    validate_subject(subject, InputKind::PublishSubject, false)
}

/// Checks a reply subject: the rules of publish subjects.
pub fn validate_reply_subject(subject: &str) -> Result<(), ValidationError> {
    validate_subject(subject, InputKind::ReplySubject, false)
}

/// Checks a subject to subscribe to: `*` and `>` allowed as whole tokens, `>` last.
pub fn validate_subscribe_subject(subject: &str) -> Result<(), ValidationError> {
    validate_subject(subject, InputKind::SubscribeSubject, true)
}

/// Checks a queue group name: non-empty, no whitespace or control characters.
pub fn validate_queue_group(queue: &str) -> Result<(), ValidationError> {
    let err = |reason| Err(ValidationError::new(InputKind::QueueGroup, queue, reason));
    if queue.is_empty() {
        return err("empty name");
    }
    if queue.bytes().any(is_space_or_control) {
        return err("contains whitespace or a control character");
    }
    Ok(())
}

/// Whether `b` may not appear in a subject: ASCII whitespace and control characters
/// (the control line's separators are space and tab; CR and LF end it).
#[inline]
fn is_space_or_control(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

fn validate_subject(
    subject: &str,
    kind: InputKind,
    wildcards: bool,
) -> Result<(), ValidationError> {
    if is_plain_subject(subject.as_bytes()) {
        return Ok(());
    }
    validate_slow(subject, kind, wildcards)
}

/// Byte classes for [`is_plain_subject`]: 0 a byte of a token, 1 a dot, 2 anything that
/// needs the full rules (`*`, `>`, whitespace, control characters, DEL).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = if b <= b' ' as usize || b == 0x7f || b == b'*' as usize || b == b'>' as usize {
            2
        } else if b == b'.' as usize {
            1
        } else {
            0
        };
        b += 1;
    }
    t
};

/// The common case in one branch-light pass: tokens of plain bytes separated by single
/// dots, no wildcard character at all. Every publish runs this.
#[inline]
fn is_plain_subject(bytes: &[u8]) -> bool {
    // `prev` is 1 after a dot (and at the start): a dot there is an empty token.
    let mut prev = 1u8;
    let mut bad = 0u8;
    for &b in bytes {
        let c = CLASS[b as usize];
        bad |= (c & 2) | (c & prev);
        prev = c;
    }
    bad == 0 && prev == 0
}

/// The full rules, with the reason for a rejection.
fn validate_slow(subject: &str, kind: InputKind, wildcards: bool) -> Result<(), ValidationError> {
    let err = |reason| Err(ValidationError::new(kind, subject, reason));
    let bytes = subject.as_bytes();
    if bytes.is_empty() {
        return err("empty subject");
    }
    let mut at_token_start = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'.' => {
                if at_token_start {
                    return err("empty token");
                }
                at_token_start = true;
            }
            b'*' | b'>' if at_token_start => {
                let whole_token = bytes.get(i + 1).is_none_or(|&n| n == b'.');
                if whole_token {
                    if !wildcards {
                        return err("wildcard token");
                    }
                    if b == b'>' && i + 1 != bytes.len() {
                        return err("`>` is not the last token");
                    }
                }
                at_token_start = false;
            }
            _ if is_space_or_control(b) => {
                return err("contains whitespace or a control character");
            }
            _ => at_token_start = false,
        }
    }
    if at_token_start {
        return err("empty token");
    }
    Ok(())
}

/// Whether `subject` matches `pattern`, where `*` in `pattern` matches one token and a
/// final `>` one or more tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_subjects() {
        for ok in [
            "foo",
            "foo.bar",
            "foo*.b>r",
            "_INBOX.abc.1",
            "ünï.cödé",
            "a-b_c",
        ] {
            assert!(validate_publish_subject(ok).is_ok(), "{ok}");
            assert!(validate_reply_subject(ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("", "empty subject"),
            ("foo..bar", "empty token"),
            (".foo", "empty token"),
            ("foo.", "empty token"),
            ("foo bar", "whitespace"),
            ("foo\tbar", "whitespace"),
            ("foo\r\n", "whitespace"),
            ("a\u{7f}", "whitespace"),
            ("foo.*", "wildcard"),
            (">", "wildcard"),
        ] {
            let e = validate_publish_subject(bad).unwrap_err();
            assert!(e.reason.contains(reason), "{bad:?}: {e}");
            assert_eq!(e.kind, InputKind::PublishSubject);
            assert_eq!(
                validate_reply_subject(bad).unwrap_err().kind,
                InputKind::ReplySubject
            );
        }
    }

    #[test]
    fn fast_path_agrees_with_the_rules() {
        // Every string of up to 5 bytes over these: the fast path accepts only what the
        // full rules accept.
        let alphabet = [b'a', b'.', b'*', b'>', b' ', 0x7f, b'\t'];
        let mut accepted = 0;
        for len in 0..=5u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut s = Vec::new();
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let s = String::from_utf8(s).unwrap();
                if is_plain_subject(s.as_bytes()) {
                    accepted += 1;
                    assert!(
                        validate_slow(&s, InputKind::PublishSubject, false).is_ok(),
                        "{s:?}"
                    );
                }
                for wildcards in [false, true] {
                    let kind = InputKind::SubscribeSubject;
                    assert_eq!(
                        validate_subject(&s, kind, wildcards).is_ok(),
                        validate_slow(&s, kind, wildcards).is_ok(),
                        "{s:?}"
                    );
                }
            }
        }
        assert!(accepted > 10);
    }

    #[test]
    fn subscribe_subjects() {
        for ok in ["foo", "*", ">", "foo.*.bar", "foo.>", "*.*.>"] {
            assert!(validate_subscribe_subject(ok).is_ok(), "{ok}");
        }
        for bad in ["", "foo.>.bar", ">.foo", "foo..*", "a b", "foo."] {
            assert_eq!(
                validate_subscribe_subject(bad).unwrap_err().kind,
                InputKind::SubscribeSubject,
                "{bad}"
            );
        }
    }

    #[test]
    fn queue_groups() {
        assert!(validate_queue_group("workers.v1").is_ok());
        assert!(validate_queue_group("").is_err());
        assert!(validate_queue_group("a b").is_err());
        assert!(validate_queue_group("a\n").is_err());
    }

    #[test]
    fn matching() {
        for (p, s, m) in [
            ("foo", "foo", true),
            ("foo", "bar", false),
            ("foo.*", "foo.bar", true),
            ("foo.*", "foo", false),
            ("foo.*", "foo.bar.baz", false),
            ("foo.>", "foo.bar.baz", true),
            ("foo.>", "foo", false),
            (">", "a", true),
            ("*.b.*", "a.b.c", true),
            ("*.b.*", "a.x.c", false),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
        ] {
            assert_eq!(subject_matches(p, s), m, "{p} vs {s}");
        }
    }
}
