//! The HTTP routes: `/`, `/healthz`, `/info`, `/slow?ms=N`.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

/// The longest `/slow` delay, so a request cannot hold a connection (and a drain) for long.
pub const MAX_SLOW_MS: u64 = 10_000;

/// What `/info` reports: who we are and what we serve.
#[derive(Debug)]
pub struct Info {
    /// Our pid (equal to the launcher's `LISTEN_PID` when activated).
    pub pid: u32,
    /// True when the sockets were passed to us, false when we bound `--listen` ourselves.
    pub activated: bool,
    /// The sockets, in fd order.
    pub sockets: Vec<SocketInfo>,
}

/// One served socket.
#[derive(Debug)]
pub struct SocketInfo {
    /// Its fd number.
    pub fd: i32,
    /// Its `LISTEN_FDNAMES` name (`unknown` when unnamed, `fallback` when we bound it).
    pub name: String,
    /// `tcp` or `unix`.
    pub kind: &'static str,
    /// False for a passed connection (Accept=yes style).
    pub listening: bool,
    /// Local address: `127.0.0.1:40000`, `[::1]:80`, `/run/x.sock`, `@abstract`.
    pub local: String,
}

impl Info {
    /// The `/info` JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let sockets: Vec<_> = self
            .sockets
            .iter()
            .map(|s| {
                json!({
                    "fd": s.fd,
                    "name": s.name,
                    "kind": s.kind,
                    "listening": s.listening,
                    "local": s.local,
                })
            })
            .collect();
        json!({ "pid": self.pid, "activated": self.activated, "sockets": sockets })
    }
}

/// Answer one request.
pub async fn handle<B>(req: Request<B>, info: &Info) -> Response<Full<Bytes>> {
    tracing::debug!(method = %req.method(), uri = %req.uri(), "request");
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/" => text(StatusCode::OK, "Hello from demo-server!\n"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/info" => {
            let mut body = info.to_json().to_string();
            body.push('\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        "/slow" => match slow_ms(req.uri().query()) {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, &format!("slept {ms} ms\n"))
            }
            Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /healthz, /info, /slow?ms=N\n",
        ),
    }
}

/// The `ms` parameter of `/slow`: a number of milliseconds up to [`MAX_SLOW_MS`].
fn slow_ms(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .ok_or("/slow needs ?ms=N (milliseconds)")?;
    match value.parse::<u64>() {
        Ok(ms) if ms <= MAX_SLOW_MS => Ok(ms),
        _ => Err(format!(
            "ms={value:?} is not a number of milliseconds from 0 to {MAX_SLOW_MS}"
        )),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn info() -> Info {
        Info {
            pid: 42,
            activated: true,
            sockets: vec![SocketInfo {
                fd: 3,
                name: "http".into(),
                kind: "tcp",
                listening: true,
                local: "127.0.0.1:40000".into(),
            }],
        }
    }

    async fn get(path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(()).unwrap();
        let resp = handle(req, &info()).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn routes_answer() {
        assert_eq!(
            get("/").await,
            (StatusCode::OK, "Hello from demo-server!\n".into())
        );
        assert_eq!(get("/healthz").await, (StatusCode::OK, "ok\n".into()));
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get("/slow?ms=1").await,
            (StatusCode::OK, "slept 1 ms\n".into())
        );
    }

    #[tokio::test]
    async fn info_is_the_documented_json() {
        let (status, body) = get("/info").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"pid": 42, "activated": true, "sockets": [
                {"fd": 3, "name": "http", "kind": "tcp", "listening": true, "local": "127.0.0.1:40000"}]})
        );
    }

    #[test]
    fn slow_is_bounded_and_checked() {
        assert_eq!(slow_ms(Some("ms=250")), Ok(250));
        assert_eq!(slow_ms(Some("x=1&ms=0")), Ok(0));
        assert!(slow_ms(Some("ms=10001")).is_err());
        assert!(slow_ms(Some("ms=-1")).is_err());
        assert!(slow_ms(None).is_err());
    }

    #[tokio::test]
    async fn other_methods_are_refused() {
        let req = Request::post("/").body(()).unwrap();
        assert_eq!(
            handle(req, &info()).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
