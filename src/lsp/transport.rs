//! The protocol's base layer: JSON-RPC 2.0 messages in `Content-Length` frames.
//!
//! Our own rather than lsp-server's: its reader ends the connection at the first frame whose body
//! is not a JSON-RPC message, and a language server must answer such a frame with an error and go
//! on serving. Every malformed frame here becomes a [`Frame`] the server can answer.

use std::io::{self, BufRead, Read, Write};

use serde_json::{Map, Value, json};

/// JSON-RPC's own error codes; the protocol's are in `lsp_types::error_codes`.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A body larger than this is skipped unread (answered with an error): no editor sends one.
const MAX_BODY: usize = 512 << 20;
/// A header line longer than this is not a header.
const MAX_HEADER_LINE: usize = 8 << 10;

/// One message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// The client's answer to a request the server sent.
    Response {
        id: Value,
        error: Option<Value>,
    },
}

/// What one frame held.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Message(Incoming),
    /// Not JSON, or no usable header: answered with a parse error (its id cannot be known).
    Unparsable(String),
    /// JSON, but not a JSON-RPC message: answered with an invalid-request error.
    Invalid {
        id: Value,
        why: String,
    },
}

/// Reads the next frame; `Ok(None)` at the end of the input.
pub fn read(input: &mut impl BufRead) -> io::Result<Option<Frame>> {
    let mut length: Option<Result<usize, String>> = None;
    let mut saw_header = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .by_ref()
            .take(MAX_HEADER_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if saw_header {
                break;
            }
            // Blank lines between frames are tolerated.
            continue;
        }
        saw_header = true;
        if let Some((name, value)) = text.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {:?}", value.trim())),
            );
        }
    }
    let length = match length {
        None => return Ok(Some(Frame::Unparsable("no Content-Length header".into()))),
        Some(Err(why)) => return Ok(Some(Frame::Unparsable(why))),
        Some(Ok(n)) if n > MAX_BODY => {
            io::copy(&mut input.by_ref().take(n as u64), &mut io::sink())?;
            return Ok(Some(Frame::Unparsable(format!(
                "a {n}-byte message is larger than the {MAX_BODY} bytes accepted"
            ))));
        }
        Some(Ok(n)) => n,
    };
    let mut body = vec![0; length];
    input.read_exact(&mut body)?;
    Ok(Some(match serde_json::from_slice::<Value>(&body) {
        Ok(value) => classify(value),
        Err(e) => Frame::Unparsable(format!("the message is not JSON ({e})")),
    }))
}

/// Sorts a JSON value into request, notification or response.
fn classify(value: Value) -> Frame {
    let Value::Object(mut m) = value else {
        return Frame::Invalid {
            id: Value::Null,
            why: "a message must be a JSON object".into(),
        };
    };
    let id = m.remove("id");
    let params = m.remove("params").unwrap_or(Value::Null);
    let valid_id = |id: &Value| matches!(id, Value::Number(_) | Value::String(_));
    match (m.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) if valid_id(&id) => {
            Frame::Message(Incoming::Request { id, method, params })
        }
        (Some(Value::String(_)), Some(id)) => Frame::Invalid {
            id: Value::Null,
            why: format!("a request id must be a number or a string, not {id}"),
        },
        (Some(Value::String(method)), None) => {
            Frame::Message(Incoming::Notification { method, params })
        }
        (Some(_), id) => Frame::Invalid {
            id: id.filter(valid_id).unwrap_or(Value::Null),
            why: "\"method\" must be a string".into(),
        },
        (None, Some(id)) if m.contains_key("result") || m.contains_key("error") => {
            Frame::Message(Incoming::Response {
                id,
                error: m.remove("error"),
            })
        }
        (None, id) => Frame::Invalid {
            id: id.filter(valid_id).unwrap_or(Value::Null),
            why: "neither a request, a notification nor a response".into(),
        },
    }
}

/// Where the server's messages go.
#[derive(Debug)]
pub struct Output<W: Write> {
    out: W,
    next_id: u64,
}

impl<W: Write> Output<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_id: 0 }
    }

    fn send(&mut self, mut message: Map<String, Value>) -> io::Result<()> {
        message.insert("jsonrpc".into(), "2.0".into());
        let body = serde_json::to_vec(&message)?;
        write!(self.out, "Content-Length: {}\r\n\r\n", body.len())?;
        self.out.write_all(&body)?;
        self.out.flush()
    }

    /// A request's result.
    pub fn reply(&mut self, id: Value, result: Value) -> io::Result<()> {
        let mut m = Map::new();
        m.insert("id".into(), id);
        m.insert("result".into(), result);
        self.send(m)
    }

    /// A request's error.
    pub fn error(&mut self, id: Value, code: i64, message: &str) -> io::Result<()> {
        let mut m = Map::new();
        m.insert("id".into(), id);
        m.insert("error".into(), json!({ "code": code, "message": message }));
        self.send(m)
    }

    pub fn notify(&mut self, method: &str, params: Value) -> io::Result<()> {
        let mut m = Map::new();
        m.insert("method".into(), method.into());
        m.insert("params".into(), params);
        self.send(m)
    }

    /// A request to the client; its answer comes back as [`Incoming::Response`].
    pub fn request(&mut self, method: &str, params: Value) -> io::Result<Value> {
        self.next_id += 1;
        let id = Value::String(format!("infill-{}", self.next_id));
        let mut m = Map::new();
        m.insert("id".into(), id.clone());
        m.insert("method".into(), method.into());
        m.insert("params".into(), params);
        self.send(m)?;
        Ok(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn frame(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    fn read_all(text: &str) -> Vec<Frame> {
        let mut input = io::Cursor::new(text.as_bytes().to_vec());
        std::iter::from_fn(|| read(&mut input).unwrap()).collect()
    }

    #[test]
    fn frames_are_read_one_after_another_and_bad_ones_do_not_end_the_stream() {
        let text = [
            frame(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"a":1}}"#),
            frame("{not json"),
            frame(r#"{"jsonrpc":"2.0","method":"initialized"}"#),
            frame(r#"[1,2]"#),
            frame(r#"{"jsonrpc":"2.0","id":true,"method":"x"}"#),
            "Content-Type: application/json\r\n\r\n".into(),
            frame(r#"{"jsonrpc":"2.0","id":"s-1","result":null}"#),
            frame(r#"{"jsonrpc":"2.0","id":7}"#),
            // Multi-byte text: the length counts bytes.
            frame(r#"{"jsonrpc":"2.0","method":"m","params":"é😀"}"#),
        ]
        .concat();
        let frames = read_all(&text);
        assert_eq!(
            frames[0],
            Frame::Message(Incoming::Request {
                id: json!(1),
                method: "initialize".into(),
                params: json!({"a": 1})
            })
        );
        assert!(matches!(&frames[1], Frame::Unparsable(why) if why.contains("not JSON")));
        assert_eq!(
            frames[2],
            Frame::Message(Incoming::Notification {
                method: "initialized".into(),
                params: Value::Null
            })
        );
        assert!(matches!(
            &frames[3],
            Frame::Invalid {
                id: Value::Null,
                ..
            }
        ));
        assert!(
            matches!(&frames[4], Frame::Invalid { id: Value::Null, why } if why.contains("id"))
        );
        assert!(matches!(&frames[5], Frame::Unparsable(why) if why.contains("Content-Length")));
        assert_eq!(
            frames[6],
            Frame::Message(Incoming::Response {
                id: json!("s-1"),
                error: None
            })
        );
        assert!(matches!(&frames[7], Frame::Invalid { id, .. } if *id == json!(7)));
        assert_eq!(
            frames[8],
            Frame::Message(Incoming::Notification {
                method: "m".into(),
                params: json!("é😀")
            })
        );
        assert_eq!(frames.len(), 9);
    }

    #[test]
    fn a_frame_cut_short_is_an_error_not_a_message() {
        let mut text = frame(r#"{"jsonrpc":"2.0","method":"initialized"}"#);
        text.truncate(text.len() - 3);
        let mut input = io::Cursor::new(text.into_bytes());
        assert!(read(&mut input).is_err());
    }

    #[test]
    fn written_messages_are_framed_with_their_byte_length() {
        let mut out = Output::new(Vec::new());
        out.reply(json!(3), json!("😀")).unwrap();
        out.error(Value::Null, PARSE_ERROR, "bad").unwrap();
        let written = String::from_utf8(out.out).unwrap();
        let frames = read_all(&written);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[0],
            Frame::Message(Incoming::Response {
                id: json!(3),
                error: None
            })
        );
        assert!(written.contains(r#""error":{"code":-32700,"message":"bad"}"#));
    }
}
