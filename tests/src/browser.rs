//! A real headless Chromium driven through WebDriver (chromedriver, from Debian's `chromium`
//! and `chromium-driver` packages), for the dashboard's browser tests.
//!
//! One chromedriver serves the whole test process (started on first use on a free port, ended
//! when the process exits: it runs under a shell that kills it when the test process's pipe
//! closes). Each [`Browser`] is a fresh Chromium with its own profile directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The WebDriver URL of this process's chromedriver.
fn chromedriver() -> &'static str {
    static DRIVER: OnceLock<(String, Mutex<Child>)> = OnceLock::new();
    &DRIVER
        .get_or_init(|| {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            // The shell kills chromedriver when its stdin (held by this process) closes, with
            // the browsers of sessions a test left open: chromedriver runs in a process group of
            // its own (`setsid`), and the whole group is killed.
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "setsid chromedriver --port={port} --log-level=SEVERE >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill -- -$pid"
                ))
                .stdin(Stdio::piped())
                .spawn()
                .expect("chromedriver starts (install the chromium-driver package)");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "chromedriver did not start on port {port}");
                std::thread::sleep(Duration::from_millis(50));
            }
            (url, Mutex::new(child))
        })
        .0
}

/// One headless Chromium; screenshots go to `shots`.
pub struct Browser {
    pub client: Client,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

/// `POST /session/{id}/se/log`: chromedriver's browser log (console messages and errors).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// `POST /session/{id}/goog/cdp/execute`: one Chrome DevTools command (for what WebDriver has
/// no command for, such as emulating the dark colour scheme).
#[derive(Debug)]
struct Cdp(Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.0.to_string()))
    }
}

impl Browser {
    /// Emulates the system's colour scheme `dark` or `light` (`prefers-color-scheme`) in the
    /// current tab.
    pub async fn color_scheme(&self, scheme: &str) {
        let command = json!({
            "cmd": "Emulation.setEmulatedMedia",
            "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
        });
        self.client.issue_cmd(Cdp(command)).await.expect("emulate the colour scheme");
    }

    /// The texts of the page whose contrast with their background is below `minimum`, as
    /// `text (ratio, colour on background)`. The ratio is WCAG 2's, from the rendered colours:
    /// each element with text of its own, its colour against the first opaque background of it
    /// and its ancestors (semi-transparent ones blended in).
    pub async fn low_contrast(&self, minimum: f64) -> Vec<String> {
        let script = format!("var minimum = {minimum};{CONTRAST_JS}");
        let found = self.eval(&script).await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A fresh browser of `width` × `height` CSS pixels.
    pub async fn start(shots: &Path, width: u32, height: u32) -> Browser {
        std::fs::create_dir_all(shots).expect("screenshot dir");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut options = json!({
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.path().display()),
                format!("--window-size={},{height}", width.max(500)),
            ],
        });
        if width < 500 {
            // A headless window is at least 500 pixels wide: a phone's viewport is emulated.
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}});
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(chromedriver())
            .await
            .expect("a Chromium session");
        Browser { client, shots: shots.to_path_buf(), _profile: profile }
    }

    /// Opens `url` and waits for its load event; a WebDriver that does not answer within 30 s
    /// fails the caller instead of hanging it.
    pub async fn goto(&self, url: &str) {
        match tokio::time::timeout(Duration::from_secs(30), self.client.goto(url)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot open {url}: {e}"),
            Err(_) => panic!("the browser did not load {url} within 30 s"),
        }
    }

    /// Saves a screenshot of the viewport as `NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("screenshot saved");
    }

    /// The page's visible text (`document.body.innerText`).
    pub async fn text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body) in the page and returns its result; a WebDriver that does not answer within 30 s fails the caller
    /// instead of hanging it.
    pub async fn eval(&self, script: &str) -> Value {
        match tokio::time::timeout(Duration::from_secs(30), self.client.execute(script, vec![]))
            .await
        {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("script failed: {e}"),
            Err(_) => panic!("the browser did not answer within 30 s: {script}"),
        }
    }

    /// Waits until `script` returns true, failing with the page's text.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let left =
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            let answer = tokio::time::timeout(left, self.client.execute(script, vec![])).await;
            if matches!(answer, Ok(Ok(Value::Bool(true)))) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the page shows:\n{}", self.text().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's live status says `live` (its event stream is open).
    pub async fn wait_live(&self, timeout: Duration) {
        self.wait_for(
            "the page to be live",
            timeout,
            "return document.getElementById('live-status').textContent === 'live'",
        )
        .await;
    }

    /// Waits until the page's text contains `needle`.
    pub async fn wait_for_text(&self, needle: &str, timeout: Duration) {
        let script = format!(
            "return document.body !== null && document.body.innerText.includes({})",
            serde_json::to_string(needle).expect("json")
        );
        self.wait_for(&format!("the text `{needle}`"), timeout, &script).await;
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        let element = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}`: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    /// Opens `url` in a new tab of this browser and makes it the current one; returns its handle.
    pub async fn new_tab(&self, url: &str) -> fantoccini::wd::WindowHandle {
        let tab = self.client.new_window(true).await.expect("a new tab");
        self.client.switch_to_window(tab.handle.clone()).await.expect("switch to the new tab");
        self.goto(url).await;
        tab.handle
    }

    /// Makes tab `handle` the current one.
    pub async fn switch_to(&self, handle: &fantoccini::wd::WindowHandle) {
        self.client.switch_to_window(handle.clone()).await.expect("switch tabs");
    }

    /// Types `text` into the element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}`: {e}"));
        element.send_keys(text).await.unwrap_or_else(|e| panic!("cannot type into `{css}`: {e}"));
    }

    /// Console messages at level SEVERE (JavaScript errors, failed loads) since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self.client.issue_cmd(BrowserLog).await.expect("browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Whether the page overflows a viewport `width` wide (a horizontal scroll bar on a phone).
    pub async fn overflows(&self) -> bool {
        self.eval("return document.documentElement.scrollWidth > window.innerWidth").await
            == Value::Bool(true)
    }
}

/// The body of [`Browser::low_contrast`]'s script (`minimum` is defined before it).
const CONTRAST_JS: &str = r#"
function parse(text) {
  var m = text.match(/^color\(srgb ([\d.e-]+) ([\d.e-]+) ([\d.e-]+)(?: \/ ([\d.e-]+))?\)$/);
  if (m) return [m[1] * 255, m[2] * 255, m[3] * 255, m[4] === undefined ? 1 : +m[4]];
  m = text.match(/rgba?\(([\d.]+),? ([\d.]+),? ([\d.]+)(?:[,\/] ?([\d.]+))?\)/);
  if (m) return [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]];
  return null;
}
function over(top, bottom) {
  var a = top[3];
  return [0, 1, 2].map(function (i) { return top[i] * a + bottom[i] * (1 - a); }).concat([1]);
}
function background(el) {
  var layers = [];
  for (var e = el; e; e = e.parentElement) {
    var c = parse(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
  }
  var bg = [255, 255, 255, 1];
  if (layers.length && layers[layers.length - 1][3] >= 1) bg = layers.pop();
  while (layers.length) bg = over(layers.pop(), bg);
  return bg;
}
function luminance(c) {
  var v = [0, 1, 2].map(function (i) {
    var s = c[i] / 255;
    return s <= 0.03928 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
  });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
}
var low = [];
document.querySelectorAll('body *').forEach(function (el) {
  var own = Array.from(el.childNodes).some(function (n) { return n.nodeType === 3 && n.textContent.trim() !== ''; });
  if (!own || el.closest('.sr-only, svg, script, style, title')) return;
  var r = el.getBoundingClientRect();
  var style = getComputedStyle(el);
  if (r.width === 0 || r.height === 0 || style.visibility === 'hidden') return;
  var bg = background(el);
  var fg = parse(style.color);
  if (!fg) return;
  if (fg[3] < 1) fg = over(fg, bg);
  var a = luminance(fg), b = luminance(bg);
  var ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < minimum) {
    low.push(el.textContent.trim().slice(0, 40) + ' (' + ratio.toFixed(2) + ', ' + style.color + ' on ' + bg.map(Math.round).join(',') + ')');
  }
});
return low;
"#;
