//! `infill lsp` driven over pipes the way an editor drives it: framing, document sync, completion
//! of both kinds, cancellation, staleness, bad input, the overlay, shutdown. The model is the
//! built-in one, with short proposals so the tests stay quick.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use infill::model::load::{Download, ModelSource};
use infill::model::{LoadOptions, Model};
use serde_json::{Value, json};

/// A language client on the other end of `infill lsp`'s pipes.
struct Client {
    child: Option<Child>,
    stdin: Box<dyn Write + Send>,
    inbox: Receiver<Value>,
    /// Messages read while waiting for another one.
    seen: Vec<Value>,
}

const WAIT: Duration = Duration::from_secs(120);

impl Client {
    fn start(args: &[&str]) -> Self {
        let mut child = crate::infill_cmd()
            .arg("lsp")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        Self::over(Some(child), Box::new(stdin), stdout)
    }

    /// `infill::lsp::serve` on a thread of this process, with the model `open` makes.
    fn in_process(open: infill::lsp::Open) -> Self {
        let (from_client, to_server) = std::io::pipe().unwrap();
        let (from_server, to_client) = std::io::pipe().unwrap();
        std::thread::spawn(move || {
            infill::lsp::serve(
                BufReader::new(from_client),
                to_client,
                open,
                infill::lsp::Options::default(),
            )
        });
        Self::over(None, Box::new(to_server), from_server)
    }

    fn over(
        child: Option<Child>,
        stdin: Box<dyn Write + Send>,
        stdout: impl Read + Send + 'static,
    ) -> Self {
        let mut stdout = BufReader::new(stdout);
        let (tx, inbox) = mpsc::channel();
        std::thread::spawn(move || {
            while let Some(message) = read_message(&mut stdout) {
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            inbox,
            seen: Vec::new(),
        }
    }

    /// A client that initialized with `capabilities` and `options`.
    fn initialized(capabilities: Value, mut options: Value) -> (Self, Value) {
        // Completion requests wait for the whole proposal (a slow debug build under load would
        // otherwise get the part written by the deadline).
        if options.get("completionWaitMs").is_none() {
            options["completionWaitMs"] = json!(600_000);
        }
        let mut c = Self::start(&[]);
        let result = c.request(
            1,
            "initialize",
            json!({ "capabilities": capabilities, "initializationOptions": options }),
        );
        c.notify("initialized", json!({}));
        (c, result)
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, message: Value) {
        let body = serde_json::to_vec(&message).unwrap();
        self.raw(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.raw(&body);
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    fn ask(&mut self, id: u64, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
    }

    /// The first message `pick` accepts, of those already read or the next ones (the others are
    /// kept in `seen`).
    /// Waits for a `window/logMessage` that contains `text`.
    fn wait_for_log(&mut self, text: &str) -> Value {
        self.wait_for(|m| {
            m["method"] == "window/logMessage"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|s| s.contains(text))
        })
    }

    fn wait_for(&mut self, pick: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pick) {
            return self.seen.remove(i);
        }
        loop {
            let m = self
                .inbox
                .recv_timeout(WAIT)
                .expect("the server answers in time");
            if pick(&m) {
                return m;
            }
            self.seen.push(m);
        }
    }

    /// The whole response to request `id` (result or error).
    fn response(&mut self, id: u64) -> Value {
        self.wait_for(|m| m["id"] == json!(id) && m.get("method").is_none())
    }

    /// Sends a request and returns its result (failing on an error).
    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.ask(id, method, params);
        let r = self.response(id);
        assert!(r["error"].is_null(), "{method} failed: {r}");
        r["result"].clone()
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({ "textDocument": {
                "uri": uri, "languageId": "python", "version": 1, "text": text,
            }}),
        );
    }

    fn shutdown_and_exit(mut self) -> i32 {
        assert_eq!(self.request(9999, "shutdown", Value::Null), Value::Null);
        self.notify("exit", Value::Null);
        self.child
            .take()
            .map_or(0, |mut c| c.wait().unwrap().code().unwrap())
    }
}

/// One framed message from the server, as JSON (`None` when its output ends).
fn read_message(out: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length: ") {
            length = n.parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    out.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

fn at(uri: &str, line: u32, character: u32) -> Value {
    json!({ "textDocument": { "uri": uri }, "position": { "line": line, "character": character } })
}

fn inline_at(uri: &str, line: u32, character: u32, trigger: u8) -> Value {
    let mut p = at(uri, line, character);
    p["context"] = json!({ "triggerKind": trigger });
    p
}

fn range(line: u32, from: u32, to: u32) -> Value {
    json!({ "start": { "line": line, "character": from }, "end": { "line": line, "character": to } })
}

const URI: &str = "file:///project/greet.py";

/// A line with an emoji (two UTF-16 units, four bytes) and CJK (one unit, three bytes) before the
/// cursor, which ends the identifier `nam`.
const GREET: &str = "def greet(name):\n    print(\"😀 漢字\", nam)\n    return name\n";
/// The cursor: after `nam` on line 1. Before it, in UTF-16: `    print("` 11 units, the emoji 2,
/// a space 1, the two CJK characters 2, `", ` 3 and `nam` 3; in UTF-8 the emoji is 4 bytes and
/// each CJK character 3.
const CURSOR_UTF16: u32 = 22;
const CURSOR_UTF8: u32 = 28;

#[test]
fn inline_and_ordinary_completion_answer_with_utf16_ranges_on_a_line_with_emoji_and_cjk() {
    let (mut c, init) = Client::initialized(json!({}), json!({ "maxTokens": 12 }));
    let caps = &init["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-16");
    assert_eq!(caps["textDocumentSync"]["change"], 2, "incremental sync");
    assert!(caps["inlineCompletionProvider"].is_object());
    assert!(caps["completionProvider"].is_object());
    assert_eq!(init["serverInfo"]["name"], "infill");
    c.open(URI, GREET);

    let inline = c.request(
        2,
        "textDocument/inlineCompletion",
        inline_at(URI, 1, CURSOR_UTF16, 2),
    );
    let items = inline["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "an automatic request gets the greedy proposal: {inline}"
    );
    // The item replaces the identifier typed so far (`nam`, three units back) up to the cursor.
    assert_eq!(items[0]["range"], range(1, CURSOR_UTF16 - 3, CURSOR_UTF16));
    let insert = items[0]["insertText"].as_str().unwrap();
    assert!(insert.starts_with("nam") && insert.len() > 3, "{insert:?}");

    // The same place again, as an ordinary completion: served from the same proposal.
    let list = c.request(3, "textDocument/completion", at(URI, 1, CURSOR_UTF16));
    assert_eq!(list["isIncomplete"], true);
    let item = &list["items"][0];
    assert_eq!(
        item["textEdit"]["range"],
        range(1, CURSOR_UTF16 - 3, CURSOR_UTF16)
    );
    assert_eq!(item["textEdit"]["newText"], insert);
    let label = item["label"].as_str().unwrap();
    assert!(
        insert.starts_with(label.trim_end_matches(" …")),
        "{label:?}"
    );
    assert!(
        item["filterText"].as_str().unwrap().starts_with("nam"),
        "clients filter on the typed word: {item}"
    );

    // Typing the proposal's first character is served from it too, one character shorter.
    let typed = &insert[3..4];
    c.notify(
        "textDocument/didChange",
        json!({
            "textDocument": { "uri": URI, "version": 2 },
            "contentChanges": [{ "range": range(1, CURSOR_UTF16, CURSOR_UTF16), "text": typed }],
        }),
    );
    let list = c.request(4, "textDocument/completion", at(URI, 1, CURSOR_UTF16 + 1));
    assert_eq!(list["items"][0]["textEdit"]["newText"], insert);
    assert_eq!(
        list["items"][0]["textEdit"]["range"],
        range(1, CURSOR_UTF16 - 3, CURSOR_UTF16 + 1)
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn utf8_positions_when_the_client_offers_them() {
    let (mut c, init) = Client::initialized(
        json!({ "general": { "positionEncodings": ["utf-16", "utf-8"] } }),
        json!({ "maxTokens": 4 }),
    );
    assert_eq!(init["capabilities"]["positionEncoding"], "utf-8");
    c.open(URI, GREET);
    let list = c.request(2, "textDocument/completion", at(URI, 1, CURSOR_UTF8));
    let item = &list["items"][0];
    assert_eq!(
        item["textEdit"]["range"],
        range(1, CURSOR_UTF8 - 3, CURSOR_UTF8),
        "{list}"
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn a_change_during_generation_answers_content_modified_never_a_stale_proposal() {
    let (mut c, _) = Client::initialized(json!({}), json!({ "maxTokens": 48 }));
    c.open(URI, GREET);
    c.ask(
        2,
        "textDocument/inlineCompletion",
        inline_at(URI, 1, CURSOR_UTF16, 1),
    );
    c.notify(
        "textDocument/didChange",
        json!({
            "textDocument": { "uri": URI, "version": 2 },
            "contentChanges": [{ "range": range(1, CURSOR_UTF16 - 3, CURSOR_UTF16), "text": "" }],
        }),
    );
    let r = c.response(2);
    assert_eq!(r["error"]["code"], -32801, "ContentModified: {r}");
    // The next request is answered for the text as it is now: nothing typed to replace.
    let list = c.request(3, "textDocument/completion", at(URI, 1, CURSOR_UTF16 - 3));
    if let Some(item) = list["items"].get(0) {
        assert_eq!(
            item["textEdit"]["range"],
            range(1, CURSOR_UTF16 - 3, CURSOR_UTF16 - 3)
        );
    }
    assert!(!c.seen.iter().any(|m| m["id"] == json!(2)), "{:?}", c.seen);
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn a_cancelled_request_gets_request_cancelled_and_no_result() {
    let (mut c, _) = Client::initialized(json!({}), json!({ "maxTokens": 48 }));
    c.open(URI, GREET);
    c.ask(
        2,
        "textDocument/inlineCompletion",
        inline_at(URI, 1, CURSOR_UTF16, 1),
    );
    c.notify("$/cancelRequest", json!({ "id": 2 }));
    let r = c.response(2);
    assert_eq!(r["error"]["code"], -32800, "RequestCancelled: {r}");
    // Nothing more comes for request 2, even once the server has answered a later request.
    c.request(3, "textDocument/completion", at(URI, 0, 4));
    assert!(!c.seen.iter().any(|m| m["id"] == json!(2)), "{:?}", c.seen);
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn bad_input_gets_errors_and_the_server_goes_on() {
    let mut c = Client::start(&[]);
    c.ask(1, "textDocument/completion", at(URI, 0, 0));
    assert_eq!(
        c.response(1)["error"]["code"],
        -32002,
        "not initialized yet"
    );
    let init = c.request(2, "initialize", json!({ "capabilities": {} }));
    assert!(init["capabilities"].is_object());
    c.notify("initialized", json!({}));

    // A frame whose body is not JSON: a parse error with a null id.
    c.raw(b"Content-Length: 9\r\n\r\n{\"id\": 3,");
    let e = c.wait_for(|m| m["error"]["code"] == json!(-32700));
    assert_eq!(e["id"], Value::Null);
    c.ask(4, "textDocument/definitelyNot", json!({}));
    assert_eq!(c.response(4)["error"]["code"], -32601);
    c.ask(
        5,
        "textDocument/completion",
        at("file:///not/open.py", 0, 0),
    );
    assert_eq!(c.response(5)["error"]["code"], -32602);
    c.ask(
        6,
        "textDocument/completion",
        json!({ "position": "nowhere" }),
    );
    assert_eq!(c.response(6)["error"]["code"], -32602);
    // A change to a document that is not open is ignored.
    c.notify(
        "textDocument/didChange",
        json!({
            "textDocument": { "uri": "file:///not/open.py", "version": 2 },
            "contentChanges": [{ "range": range(0, 0, 0), "text": "x" }],
        }),
    );
    // A position past the end of the document means its end.
    c.open(URI, GREET);
    let list = c.request(7, "textDocument/completion", at(URI, 99, 99));
    assert!(list["items"].is_array(), "{list}");
    // Unknown notifications are ignored; the server still answers.
    c.notify("$/somethingNew", json!({}));
    assert_eq!(
        c.request(
            8,
            "workspace/executeCommand",
            json!({ "command": "infill.overlay", "arguments": [false] })
        ),
        json!({ "overlay": false })
    );
    assert!(
        !c.seen
            .iter()
            .any(|m| m["id"] == json!(5) && m["result"].is_object()),
        "no result for a failed request"
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn exit_without_shutdown_is_exit_code_1() {
    let (mut c, _) = Client::initialized(json!({}), json!({}));
    c.notify("exit", Value::Null);
    assert_eq!(c.child.take().unwrap().wait().unwrap().code(), Some(1));
}

#[test]
fn a_model_that_cannot_load_is_said_once_and_the_server_still_answers() {
    let mut c = Client::start(&["--model", "/nonexistent/model/dir"]);
    // The load fails at once, long before the client initializes: the server must still say
    // nothing before its initialize response.
    std::thread::sleep(Duration::from_millis(300));
    c.request(1, "initialize", json!({ "capabilities": {} }));
    assert!(c.seen.is_empty(), "sent before initialize: {:?}", c.seen);
    c.notify("initialized", json!({}));
    let said = c.wait_for(|m| m["method"] == "window/showMessage");
    assert_eq!(said["params"]["type"], 1);
    let message = said["params"]["message"].as_str().unwrap();
    assert!(message.contains("/nonexistent/model/dir"), "{message}");
    c.open(URI, GREET);
    let list = c.request(2, "textDocument/completion", at(URI, 1, CURSOR_UTF16));
    assert_eq!(list["items"], json!([]));
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn the_overlay_publishes_hints_for_rare_tokens_and_surprising_lines() {
    let (mut c, _) =
        Client::initialized(json!({}), json!({ "overlay": true, "overlayMinRank": 10 }));
    let text = "def total(values):\r\n    result = 0\r\n    for value in values:\r\n        result += value\r\n    return result\r\n";
    c.open(URI, text);
    let published = c.wait_for(|m| m["method"] == "textDocument/publishDiagnostics");
    let p = &published["params"];
    assert_eq!(p["uri"], URI);
    assert_eq!(p["version"], 1);
    let diagnostics = p["diagnostics"].as_array().unwrap();
    let lines: Vec<&Value> = diagnostics
        .iter()
        .filter(|d| d["code"] == "surprising-line")
        .collect();
    assert_eq!(lines.len(), 3, "{p}");
    let lines_of_text: Vec<&str> = text.split("\r\n").collect();
    for d in diagnostics {
        assert_eq!(d["severity"], 4, "hints: {d}");
        let (start, end) = (&d["range"]["start"], &d["range"]["end"]);
        assert_eq!(start["line"], end["line"], "{d}");
        let line = lines_of_text[start["line"].as_u64().unwrap() as usize];
        let (a, b) = (
            start["character"].as_u64().unwrap() as usize,
            end["character"].as_u64().unwrap() as usize,
        );
        // Ranges lie inside their line (CRLF breaks are not counted as the line's text).
        assert!(a < b && b <= line.len(), "{d} on {line:?}");
        if d["code"] == "surprising-line" {
            assert_eq!(&line[a..b], line.trim(), "a whole line: {d}");
        }
    }
    // Turning it off clears the document's diagnostics.
    c.ask(
        2,
        "workspace/executeCommand",
        json!({ "command": "infill.overlay" }),
    );
    let cleared = c.wait_for(|m| m["method"] == "textDocument/publishDiagnostics");
    assert_eq!(cleared["params"]["diagnostics"], json!([]));
    assert_eq!(c.response(2)["result"], json!({ "overlay": false }));
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn hub_downloads_while_loading_are_progress_reports() {
    let (go, wait) = mpsc::channel::<()>();
    let open: infill::lsp::Open = Box::new(move |downloads| {
        // Download once the client has taken the progress token (a real one runs for minutes).
        wait.recv().unwrap();
        let total = 300 << 20;
        for done in [0, 150 << 20, total] {
            downloads.report(&Download {
                file: "model.safetensors".into(),
                done,
                total,
            });
        }
        Ok(Model::open(
            &ModelSource::Embedded,
            false,
            &LoadOptions::default(),
        )?)
    });
    let mut c = Client::in_process(open);
    c.request(
        1,
        "initialize",
        json!({ "capabilities": { "window": { "workDoneProgress": true } } }),
    );
    c.notify("initialized", json!({}));
    let create = c.wait_for(|m| m["method"] == "window/workDoneProgress/create");
    let token = create["params"]["token"].clone();
    c.send(json!({ "jsonrpc": "2.0", "id": create["id"], "result": null }));
    let begin = c.wait_for(|m| m["method"] == "$/progress");
    assert_eq!(begin["params"]["token"], token);
    assert_eq!(begin["params"]["value"]["kind"], "begin");
    go.send(()).unwrap();
    let mut reports = Vec::new();
    let end = loop {
        let p = c.wait_for(|m| m["method"] == "$/progress");
        if p["params"]["value"]["kind"] == "end" {
            break p;
        }
        reports.push(p["params"]["value"].clone());
    };
    let percentages: Vec<&Value> = reports.iter().map(|r| &r["percentage"]).collect();
    assert_eq!(
        percentages,
        [&json!(0), &json!(50), &json!(100)],
        "{reports:?}"
    );
    assert_eq!(
        reports[1]["message"],
        "downloading model.safetensors (150 of 300 MB)"
    );
    assert!(
        end["params"]["value"]["message"]
            .as_str()
            .unwrap()
            .ends_with("ready"),
        "{end}"
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn an_overlay_the_model_cannot_compute_is_said_once_and_completion_goes_on() {
    // StarCoder2 runs through candle-transformers, which gives no logits for every position.
    let model = crate::fixture("starcoder2");
    let mut c = Client::start(&["--overlay", "--model", model.to_str().unwrap()]);
    c.request(
        1,
        "initialize",
        json!({ "capabilities": {}, "initializationOptions": { "maxTokens": 4 } }),
    );
    c.notify("initialized", json!({}));
    c.open(URI, GREET);
    let said = c.wait_for(|m| m["method"] == "window/showMessage");
    assert_eq!(said["params"]["type"], 2, "a warning: {said}");
    assert!(
        said["params"]["message"]
            .as_str()
            .unwrap()
            .contains("overlay is off"),
        "{said}"
    );
    c.notify(
        "textDocument/didSave",
        json!({ "textDocument": { "uri": URI } }),
    );
    let list = c.request(2, "textDocument/completion", at(URI, 1, CURSOR_UTF16));
    assert!(list["items"].is_array());
    assert!(
        !c.seen.iter().any(|m| m["method"] == "window/showMessage"),
        "said twice: {:?}",
        c.seen
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn the_overlay_marks_a_corrupted_line_among_the_most_surprising() {
    // `result += value` turned into `result -= values` on line 18 (0-based 17).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/overlay/stats.py"
    ))
    .unwrap();
    let (mut c, _) = Client::initialized(json!({}), json!({ "overlay": true }));
    c.open(URI, &text);
    let published = c.wait_for(|m| m["method"] == "textDocument/publishDiagnostics");
    let marked: Vec<u64> = published["params"]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["code"] == "surprising-line")
        .map(|d| d["range"]["start"]["line"].as_u64().unwrap())
        .collect();
    // The built-in model ranks it third of 21 lines by bits per token (a model that knows Python
    // better would rank it first); the overlay marks the three most surprising.
    assert!(marked.contains(&17), "marked lines {marked:?}");
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn the_workspace_is_indexed_and_its_code_is_proposed() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6 {
        std::fs::write(
            dir.path().join(format!("handlers_{i}.py")),
            format!(
                "def handler_{i}(request):\n    data = request.json()\n    return frobnicate_widget(data, retries=7, backoff=0.25)\n"
            ),
        )
        .unwrap();
    }
    let root = format!("file://{}", dir.path().display());
    let mut c = Client::start(&[]);
    c.request(
        1,
        "initialize",
        json!({ "capabilities": { "workspace": { "didChangeWatchedFiles": { "dynamicRegistration": true } } },
                "workspaceFolders": [{ "uri": root, "name": "w" }],
                "initializationOptions": { "maxTokens": 24, "completionWaitMs": 60000 } }),
    );
    c.notify("initialized", json!({}));
    // The server asks to hear of files changed on disk.
    let watch = c.wait_for(|m| m["method"] == "client/registerCapability");
    assert_eq!(
        watch["params"]["registrations"][0]["method"], "workspace/didChangeWatchedFiles",
        "{watch}"
    );
    c.send(json!({ "jsonrpc": "2.0", "id": watch["id"], "result": null }));
    let said = c.wait_for_log("repository memory");
    assert!(
        said["params"]["message"]
            .as_str()
            .unwrap()
            .contains("6 files"),
        "{said}"
    );
    let uri = format!("{root}/new.py");
    let text = "def handler_9(request):\n    data = request.json()\n    return frobnicate_";
    c.open(&uri, text);
    let list = c.request(2, "textDocument/completion", at(&uri, 2, 22));
    assert_eq!(
        list["items"][0]["textEdit"]["newText"], "frobnicate_widget(data, retries=7, backoff=0.25)",
        "{list}"
    );
    let detail = list["items"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("% from repository memory"), "{detail}");
    // Where it was found: the file and line, and a link to them.
    assert!(
        detail.contains("(handlers_") && detail.ends_with(".py:3)"),
        "{detail}"
    );
    let docs = list["items"][0]["documentation"]["value"].as_str().unwrap();
    assert!(
        docs.contains(&format!("]({root}/handlers_")) && docs.contains(".py#L3)"),
        "{docs}"
    );
    // A file saved since is known at once: the memory catches up on didSave.
    let saved = dir.path().join("retry.py");
    std::fs::write(
        &saved,
        "def retry(job):\n    return reschedule_with_jitter(job, spread=13)\n",
    )
    .unwrap();
    c.notify(
        "textDocument/didSave",
        json!({ "textDocument": { "uri": format!("{root}/retry.py") } }),
    );
    c.wait_for_log("repository memory: 7 files");
    let uri = format!("{root}/again.py");
    c.open(&uri, "def retry_later(job):\n    return reschedule_");
    let list = c.request(3, "textDocument/completion", at(&uri, 1, 22));
    assert_eq!(
        list["items"][0]["textEdit"]["newText"], "reschedule_with_jitter(job, spread=13)",
        "{list}"
    );
    // Unsaved text in another open document counts too, once a proposal elsewhere is asked for.
    let draft = format!("{root}/draft.py");
    c.open(&draft, "");
    c.notify(
        "textDocument/didChange",
        json!({
            "textDocument": { "uri": draft, "version": 2 },
            "contentChanges": [{ "text": "def drain(queue):\n    return flush_pending_items(queue, batch=41)\n" }],
        }),
    );
    c.request(4, "textDocument/completion", at(&uri, 1, 11));
    c.wait_for_log("repository memory: 8 files");
    let uri = format!("{root}/third.py");
    c.open(&uri, "def drain_all(queue):\n    return flush_");
    let list = c.request(5, "textDocument/completion", at(&uri, 1, 17));
    assert_eq!(
        list["items"][0]["textEdit"]["newText"], "flush_pending_items(queue, batch=41)",
        "{list}"
    );
    // A file that changed on disk without a save here (a pull, a checkout) is known once the
    // client reports it; a build output is not worth a walk.
    std::fs::write(
        dir.path().join("pulled.py"),
        "def pulled(x):\n    return recompute_checksums(x, salt=5)\n",
    )
    .unwrap();
    c.notify(
        "workspace/didChangeWatchedFiles",
        json!({ "changes": [
            { "uri": format!("{root}/target/debug/app.d"), "type": 1 },
            { "uri": format!("{root}/pulled.py"), "type": 1 },
        ]}),
    );
    c.wait_for_log("repository memory: 9 files");
    let uri = format!("{root}/fourth.py");
    c.open(&uri, "def again(x):\n    return recompute_");
    let list = c.request(6, "textDocument/completion", at(&uri, 1, 21));
    assert_eq!(
        list["items"][0]["textEdit"]["newText"], "recompute_checksums(x, salt=5)",
        "{list}"
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}

#[test]
fn a_completion_past_its_deadline_gets_the_proposal_so_far_and_generation_goes_on() {
    let (mut c, _) =
        Client::initialized(json!({}), json!({ "maxTokens": 48, "completionWaitMs": 1 }));
    c.open(URI, GREET);
    let first = c.request(2, "textDocument/completion", at(URI, 1, CURSOR_UTF16));
    assert_eq!(first["isIncomplete"], true);
    if let Some(item) = first["items"].get(0) {
        assert_eq!(item["detail"], "infill (still generating)", "{first}");
    }
    // The generation was not stopped: once it is done, the same place is served from it whole.
    let inline = c.request(
        3,
        "textDocument/inlineCompletion",
        inline_at(URI, 1, CURSOR_UTF16, 2),
    );
    let whole = inline["items"][0]["insertText"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = c.request(4, "textDocument/completion", at(URI, 1, CURSOR_UTF16));
    assert_eq!(again["items"][0]["textEdit"]["newText"], whole.as_str());
    assert!(
        again["items"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("tokens in"),
        "{again}"
    );
    assert_eq!(c.shutdown_and_exit(), 0);
}
