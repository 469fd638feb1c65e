//! API keys and Entra-style tokens (a key pair made by openssl, its key set served on
//! loopback), and no service beyond loopback without them.

use super::*;

/// A JWKS endpoint on loopback, counting its fetches.
struct KeySetServer {
    url: String,
    fetches: Arc<AtomicUsize>,
}

fn serve_key_set(document: String) -> KeySetServer {
    serve_answer("200 OK", document)
}

/// A key set URL on loopback that answers every fetch with `status` and `document`.
fn serve_answer(status: &'static str, document: String) -> KeySetServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let count = fetches.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                document.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    KeySetServer { url, fetches }
}

/// An RSA key pair made by openssl for this test.
fn rsa_key(dir: &Path, name: &str) -> jsonwebtoken::EncodingKey {
    let path = dir.join(name);
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("openssl makes the test's key pair");
    assert!(status.success());
    jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&path).unwrap()).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(key: &jsonwebtoken::EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

const TENANT_ISSUER: &str = "https://sts.windows.net/00000000-0000-0000-0000-000000000001/";
const AUDIENCE: &str = "api://batchscore";

#[test]
fn keys_and_tokens_are_checked_and_never_logged() {
    let dir = tempdir();
    let signing = rsa_key(dir.path(), "signing.pem");
    let stranger = rsa_key(dir.path(), "stranger.pem");
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, jsonwebtoken::Algorithm::RS256)
            .unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serve_key_set(json!({"keys": [jwk]}).to_string());
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, format!("# rotation: both keys are valid\n{OTHER_KEY}\n")).unwrap();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(
        [
            "--api-keys-file",
            &keys_file.display().to_string(),
            "--jwt-jwks-url",
            &jwks.url,
            "--jwt-issuer",
            TENANT_ISSUER,
            "--jwt-audience",
            AUDIENCE,
        ]
        .map(String::from),
    );
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let url = format!("{}/metrics", service.url);
    let get = |auth: Option<String>| {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().unwrap();
        let challenge = header(response.headers(), "www-authenticate");
        let (status, _, value) = body(response);
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(challenge, "Bearer");
        }
        (status, value)
    };
    let claims = |extra: Value| {
        let mut c = json!({"iss": TENANT_ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now() - 10, "oid": "logic-app-identity"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let bearer = |t: &str| Some(format!("Bearer {t}"));

    // Probes are open; everything else needs a key or a token.
    assert_eq!(client.get(format!("{}/healthz", service.url)).send().unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/readyz", service.url)).send().unwrap().status(), 200);
    assert_eq!(get(None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(bearer("wrong-key-0123456789abcdef")).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some(format!("Basic {KEY}"))).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(bearer(KEY)).0, StatusCode::OK);
    assert_eq!(get(bearer(OTHER_KEY)).0, StatusCode::OK, "the second key (rotation) is accepted");

    assert_eq!(get(bearer(&token(&signing, "k1", claims(json!({}))))).0, StatusCode::OK);
    for (why, bad) in [
        ("expired", token(&signing, "k1", claims(json!({"exp": now() - 3600})))),
        ("another audience", token(&signing, "k1", claims(json!({"aud": "api://someone-else"})))),
        (
            "another issuer",
            token(&signing, "k1", claims(json!({"iss": "https://sts.windows.net/other/"}))),
        ),
        ("not valid yet", token(&signing, "k1", claims(json!({"nbf": now() + 3600})))),
        ("signed by a stranger", token(&stranger, "k1", claims(json!({})))),
        ("unknown key id", token(&stranger, "k9", claims(json!({})))),
        ("no audience", token(&signing, "k1", json!({"iss": TENANT_ISSUER, "exp": now() + 600}))),
    ] {
        let (status, value) = get(bearer(&bad));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {value}");
    }
    let (_, value) = get(bearer(&token(&signing, "k1", claims(json!({"exp": now() - 3600})))));
    assert!(value["error"]["message"].as_str().unwrap().contains("expired"), "{value}");
    let (_, value) = get(bearer(&token(&signing, "k1", claims(json!({"aud": "api://x"})))));
    assert!(value["error"]["message"].as_str().unwrap().contains("audience"), "{value}");
    // The key set is cached: one fetch for the first token, one more for the unknown kid,
    // then none however many tokens come.
    let fetched = jwks.fetches.load(Ordering::SeqCst);
    assert!((1..=2).contains(&fetched), "{fetched} key set fetches");
    for _ in 0..5 {
        get(bearer(&token(&stranger, "k9", claims(json!({})))));
        get(bearer(&token(&signing, "k1", claims(json!({})))));
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        fetched,
        "unknown kids must not refetch the key set each time"
    );

    let text = metrics_text(&client, &service);
    assert!(metric(&text, "batchscore_auth_failures_total", "") >= 10.0);
    let log = service.log();
    assert!(log.contains("principal=\"token:logic-app-identity\""), "{log}");
    assert!(log.contains("principal=\"api-key#1\""), "{log}");
    for secret in [KEY, OTHER_KEY] {
        assert!(!log.contains(secret), "a key reached the log");
    }
    assert!(!log.contains("eyJ"), "a token reached the log");
}

#[test]
fn only_loopback_may_go_without_authentication() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let args = [
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--input",
        &f.readings(),
        "--registry",
        &f.registry(),
        "--output",
        &output,
    ];
    let out = expect_code(&args, 2);
    assert!(out.contains("no API key or token issuer"), "{out}");
    let out = expect_code(
        &[
            "serve",
            "--input",
            &f.readings(),
            "--registry",
            &f.registry(),
            "--output",
            &output,
            "--jwt-audience",
            "x",
        ],
        2,
    );
    assert!(out.contains("--entra-tenant or --jwt-jwks-url"), "{out}");
    let short = command()
        .args(["serve", "--input", &f.readings(), "--registry", &f.registry(), "--output", &output])
        .env("BATCHSCORE_API_KEYS", "short")
        .output()
        .unwrap();
    assert_eq!(short.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&short.stderr).contains("short\""), "the key was echoed");
}

/// Regression: without `--public-url`, status URLs followed the request's `Host` and
/// `X-Forwarded-Host`; beyond loopback the service now needs the URL callers reach it at.
#[test]
fn beyond_loopback_the_public_url_is_required() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let (readings, registry) = (f.readings(), f.registry());
    let serve = ["serve", "--listen", "0.0.0.0:0", "--input", &readings, "--registry", &registry];
    let serve = [&serve[..], &["--output", &output]].concat();
    let out = command().args(&serve).env("BATCHSCORE_API_KEYS", KEY).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--public-url"), "{stderr}");
    let bad = command()
        .args(&serve)
        .args(["--public-url", "https://x.example", "--trusted-proxies", "proxy.local"])
        .env("BATCHSCORE_API_KEYS", KEY)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an IP address"));
}

/// Regression: while the key set could not be fetched, only the request that tried the fetch
/// got 503; every other token request for the next 5 s got 401 "unknown key", which Logic Apps
/// and Stream Analytics take as final. Now every one gets 503 + `Retry-After`. And an API key
/// with two dots could not be used once tokens were configured.
#[test]
fn an_identity_provider_outage_is_503_for_every_token_request() {
    let dir = tempdir();
    let signing = rsa_key(dir.path(), "signing.pem");
    let outage = serve_answer("500 Internal Server Error", "{}".into());
    let dotted = "dotted.api.key-0123456789abcdef";
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(
        ["--jwt-jwks-url", &outage.url, "--jwt-issuer", TENANT_ISSUER, "--jwt-audience", AUDIENCE]
            .map(String::from),
    );
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", dotted)]);
    let client = client();
    let url = format!("{}/metrics", service.url);
    let claims = json!({"iss": TENANT_ISSUER, "aud": AUDIENCE, "exp": now() + 600, "oid": "x"});
    let signed = token(&signing, "k1", claims);
    let answers: Vec<(StatusCode, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (client, url, signed) = (&client, &url, &signed);
                scope.spawn(move || {
                    let response = client
                        .get(url)
                        .header("Authorization", format!("Bearer {signed}"))
                        .send()
                        .unwrap();
                    (response.status(), header(response.headers(), "retry-after"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // And later ones, within the 5 s in which no new fetch is tried.
    let later =
        client.get(&url).header("Authorization", format!("Bearer {signed}")).send().unwrap();
    let answers =
        [answers, vec![(later.status(), header(later.headers(), "retry-after"))]].concat();
    for (status, retry_after) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{answers:?}");
        assert_eq!(retry_after, "5", "{answers:?}");
    }
    let key = client.get(&url).header("Authorization", format!("Bearer {dotted}")).send().unwrap();
    assert_eq!(key.status(), StatusCode::OK, "an API key with dots is a key");
}
