//! A minimal W3C WebDriver client over chromedriver, for the browser tests
//! and the demo bench.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Server;

/// A minimal W3C WebDriver client over chromedriver.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver =
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver (Debian: apt-get install chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": std::env::var("CHROME").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,1100",
                     format!("--user-data-dir={}", profile.display())]
        }}}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = resp["value"].get("error") {
            panic!("webdriver {path}: {err} {}", resp["value"]["message"]);
        }
        resp["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    pub async fn find(&self, css: &str) -> Option<String> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let resp: Value = self
            .http
            .post(url)
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        resp["value"]["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .map(String::from)
    }

    pub async fn wait_find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element matches `{css}`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens the server's one-time sign-in link and uses it.
    pub async fn sign_in_with_link(&self, server: &Server) {
        self.goto(&server.sign_in_link).await;
        self.click("#signin-link").await;
        self.wait_find("#signed-in-as").await;
    }

    pub async fn set_field(&self, css: &str, text: &str) {
        let el = self.wait_find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            json!({}),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Picks `value` in the `<select>` at `css`, as a visitor would, once
    /// the select offers it (options may arrive with a request).
    pub async fn choose(&self, css: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let el = self.wait_find(css).await;
            let done = self
                .cmd(
                    reqwest::Method::POST,
                    "/execute/sync",
                    json!({
                        "script": "const s = arguments[0]; \
                                   if (![...s.options].some(o => o.value === arguments[1])) return false; \
                                   s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true})); return true;",
                        "args": [{"element-6066-11e4-a52e-4f735466cecf": el}, value],
                    }),
                )
                .await;
            if done == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "`{css}` never offered `{value}`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Picks a local file in an `<input type=file>`.
    pub async fn choose_file(&self, css: &str, path: &std::path::Path) {
        let el = self.wait_find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            json!({"text": path.to_str().unwrap()}),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let el = self.wait_find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            json!({}),
        )
        .await;
    }

    /// Presses the mouse at `from` (pixels from the element's centre),
    /// moves it by `by` and lets go.
    pub async fn drag(&self, element: &str, from: (i64, i64), by: (i64, i64)) {
        let origin = json!({"element-6066-11e4-a52e-4f735466cecf": element});
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                "actions": [
                    {"type": "pointerMove", "duration": 0, "origin": origin, "x": from.0, "y": from.1},
                    {"type": "pointerDown", "button": 0},
                    {"type": "pointerMove", "duration": 150, "origin": "pointer", "x": by.0 / 2, "y": by.1 / 2},
                    {"type": "pointerMove", "duration": 150, "origin": "pointer", "x": by.0 - by.0 / 2, "y": by.1 - by.1 / 2},
                    {"type": "pointerUp", "button": 0}
                ]}]}),
        )
        .await;
    }

    pub async fn script(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": js, "args": []}),
        )
        .await
    }

    pub async fn script_async(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            json!({"script": js, "args": []}),
        )
        .await
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64_png::decode;
        let data = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        if let Some(b64) = data.as_str() {
            let _ = std::fs::create_dir_all(path.parent().unwrap());
            let _ = std::fs::write(path, decode(b64));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64, enough to save the screenshot without another dependency.
mod base64_png {
    pub fn decode(text: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = text
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
            .collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &c)| acc | (val(c) as u32) << (18 - 6 * i));
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }
}
