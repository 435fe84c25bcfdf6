//! Both daemons together, and an HTTP client that knows the token.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{raw_exchange, Executor, ExecutorBuilder, Frontend, Reply};

/// How long one HTTP request may take before the test fails (longer than any job
/// the tests run).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a fresh executor may take to fill its warm pool (generous: two cores
/// shared by the whole suite).
const POOL_TIMEOUT: Duration = Duration::from_secs(60);
/// What the executor logs when a warm jail fails to start (its pool never fills).
const WARM_SETUP_FAILED: &str = "cannot set up a warm jail";
/// And what it logs when a fork-server template does not start.
const TEMPLATE_FAILED: &str = "fork-server template did not start";

/// Options for a [`Service`].
#[derive(Debug, Default)]
pub struct ServiceBuilder {
    executor: ExecutorBuilder,
    frontend_env: Vec<(String, String)>,
}

impl ServiceBuilder {
    /// Adds executor command-line arguments.
    pub fn executor_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.executor = self.executor.args(args);
        self
    }

    /// Gives the executor a config file, see [`ExecutorBuilder::config_toml`].
    pub fn executor_config_toml(mut self, toml: &str) -> Self {
        self.executor = self.executor.config_toml(toml);
        self
    }

    /// Sets an environment variable of the executor.
    pub fn executor_env(mut self, key: &str, value: &str) -> Self {
        self.executor = self.executor.env(key, value);
        self
    }

    /// Sets (or overrides) an environment variable of the frontend.
    pub fn frontend_env(mut self, key: &str, value: &str) -> Self {
        self.frontend_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the executor, then the frontend.
    pub fn start(self) -> Service {
        let executor = self.executor.start();
        let env: Vec<(&str, &str)> = self
            .frontend_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let frontend = Frontend::start(&executor, &env);
        let service = Service::new(frontend, executor);
        // Without this a fresh service's first jobs run cold or warm by chance, and
        // the CI pass with the pool on would not prove the warm path runs at all.
        service.wait_for_warm_pool();
        service
    }
}

/// An executor and a frontend talking to it. Dropping it kills the frontend, then
/// the executor.
#[derive(Debug)]
pub struct Service {
    /// The HTTP frontend (declared first: dropped first).
    pub frontend: Frontend,
    /// The executor.
    pub executor: Executor,
    client: reqwest::Client,
}

impl Service {
    /// Both daemons with the harness's defaults.
    pub fn start() -> Service {
        Service::builder().start()
    }

    /// Options for a service to start.
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// Bundles daemons started by hand.
    pub fn new(frontend: Frontend, executor: Executor) -> Service {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            // The frontend closes an idle connection after 5 s (HEADER_TIMEOUT_MS):
            // reusing one it is closing would fail a request with IncompleteMessage.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("cannot build the HTTP client");
        Service {
            frontend,
            executor,
            client,
        }
    }

    /// `http://<frontend addr><path>`.
    pub fn url(&self, path: &str) -> String {
        self.frontend.url(path)
    }

    /// The frontend's `AUTH_TOKEN`.
    pub fn token(&self) -> &str {
        self.frontend.token()
    }

    /// `POST /execute` with the right token and `body` as JSON.
    pub async fn post_execute(&self, body: &Value) -> Reply {
        let body = body.to_string().into_bytes();
        self.authorized(Method::POST, "/execute", Some(body)).await
    }

    /// `method path` with the right token, and `body` as JSON when there is one.
    pub async fn authorized(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
        let auth = format!("Bearer {}", self.token());
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.request(method, path, &headers, body).await
    }

    /// `POST /execute` of `body`, asserting a 200; returns the JSON result.
    #[track_caller]
    pub fn run(&self, body: Value) -> impl std::future::Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let reply = self.post_execute(&body).await;
            assert_eq!(
                reply.status, 200,
                "POST /execute {body} (at {caller}) answered {}",
                reply.text
            );
            reply.json
        }
    }

    /// [`Service::run`] of `{"code": code}`.
    #[track_caller]
    pub fn run_code<'a>(&'a self, code: &str) -> impl std::future::Future<Output = Value> + 'a {
        self.run(serde_json::json!({ "code": code }))
    }

    /// `POST path` with exactly the given headers (no token added) and raw body.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        self.request(Method::POST, path, headers, Some(body.into()))
            .await
    }

    /// Any request with exactly the given headers; panics on transport errors.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self.client.request(method.clone(), self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e:?}"));
        let status = resp.status().as_u16();
        let headers: HeaderMap = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("reading the body of {method} {path} failed: {e:?}"));
        Reply::new(status, headers, &body)
    }

    /// `GET /health` without credentials.
    pub async fn health(&self) -> Reply {
        self.request(Method::GET, "/health", &[], None).await
    }

    /// Blocks until `/health` reports as many `warmJails` as the executor's pool
    /// size (at once when it is 0) and, with the fork server on, its template
    /// ready, so that the next job takes a warm jail or a fork. Returns early if
    /// the executor logged that it cannot set one up (tests of broken jails).
    /// Panics if the pool is not full within [`POOL_TIMEOUT`].
    #[track_caller]
    pub fn wait_for_warm_pool(&self) {
        let size = self.executor.warm_pool_size();
        let forking = self.executor.fork_server();
        let mut warm = None;
        let full = crate::wait_until(POOL_TIMEOUT, || {
            let health = self.blocking_health();
            warm = health["warmJails"].as_u64();
            let forks = !forking || template_ready(&health);
            let log = self.executor.log();
            (warm == Some(size.into()) && forks)
                || log.contains(WARM_SETUP_FAILED)
                || log.contains(TEMPLATE_FAILED)
        });
        assert!(
            full,
            "the warm pool did not fill ({warm:?} of {size} jails) within {POOL_TIMEOUT:?}; executor log:\n{}",
            self.executor.log().text()
        );
    }

    /// `GET /health` on a blocking connection (for sync code such as
    /// [`ServiceBuilder::start`]); `Value::Null` when it cannot be read.
    pub fn blocking_health(&self) -> Value {
        let Ok(mut stream) = std::net::TcpStream::connect(self.frontend.addr()) else {
            return Value::Null;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.frontend.addr()
        );
        let mut bytes = Vec::new();
        if stream.write_all(request.as_bytes()).is_err() || stream.read_to_end(&mut bytes).is_err()
        {
            return Value::Null;
        }
        crate::parse_raw_response(&bytes).map_or(Value::Null, |reply| reply.json)
    }

    /// The bytes of a `POST /execute` request with `Connection: close`, the given
    /// `authorization` header value (if any) and `body`.
    pub fn execute_request_bytes(&self, authorization: Option<&str>, body: &[u8]) -> Vec<u8> {
        let mut req = format!(
            "POST /execute HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.frontend.addr(),
            body.len()
        );
        if let Some(auth) = authorization {
            req.push_str(&format!("Authorization: {auth}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends raw request bytes and reads the response concurrently (see
    /// [`raw_exchange`]); panics on transport errors.
    pub async fn raw(&self, request: &[u8]) -> Reply {
        raw_exchange(self.frontend.addr(), request)
            .await
            .unwrap_or_else(|e| panic!("raw HTTP exchange failed: {e}"))
    }

    /// Opens a TCP connection and writes a whole authorized `POST /execute` of
    /// `body` without reading the answer; drop the stream to disconnect.
    pub async fn open_execute(&self, body: &Value) -> TcpStream {
        let auth = format!("Bearer {}", self.token());
        let bytes = self.execute_request_bytes(Some(&auth), body.to_string().as_bytes());
        let mut stream = TcpStream::connect(self.frontend.addr())
            .await
            .expect("cannot connect to the frontend");
        stream
            .write_all(&bytes)
            .await
            .expect("cannot send the request");
        stream
    }
}

/// Whether `/health` says the fork server's template is ready.
pub fn template_ready(health: &Value) -> bool {
    health["isolation"]["fork server"]
        .as_str()
        .is_some_and(|detail| detail.starts_with("ready"))
}
