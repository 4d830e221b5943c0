//! `docs/CONTRACT.md` checked against the program, so that the contract users read stays true:
//! its tables are parsed here and compared with `bff --help`, the configuration loader, the
//! error type and a running bff. A binary of its own, without the other tests' harness: it needs
//! no Redis and no provider (the provider it names is never reachable).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use actix_web::ResponseError;
use bff::config::Config;
use bff::dbsc::BindingRefusal;
use bff::error::{AppError, BadRequest};
use bff::limits::Limit;
use toml::{Table, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn contract() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/CONTRACT.md")).expect("read docs/CONTRACT.md")
}

/// The text of the `## <heading…>` section, up to the next `## `.
fn section(doc: &str, heading: &str) -> String {
    let start = doc
        .lines()
        .position(|l| l.starts_with(&format!("## {heading}")))
        .unwrap_or_else(|| panic!("CONTRACT.md has no section \"## {heading}\""));
    doc.lines().skip(start + 1).take_while(|l| !l.starts_with("## ")).collect::<Vec<_>>().join("\n")
}

/// The rows of every table in `text` whose first cell is in backticks, as trimmed cells.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('|')?.strip_suffix('|').map(str::to_string))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|cells| cells[0].starts_with('`'))
        .collect()
}

/// What the first pair of backticks in `cell` holds.
fn code(cell: &str) -> Option<&str> {
    let rest = cell.split_once('`')?.1;
    Some(rest.split_once('`')?.0)
}

/// A row of the configuration tables.
struct Key {
    name: String,
    /// The documented default, when the cell starts with a TOML value in backticks.
    default: Option<Value>,
    env: String,
}

fn documented_keys() -> Vec<Key> {
    rows(&section(&contract(), "Configuration"))
        .into_iter()
        .map(|cells| {
            let name = code(&cells[0]).unwrap().to_string();
            let default = cells[2].starts_with('`').then(|| {
                let literal = code(&cells[2]).unwrap();
                let parsed: Table = toml::from_str(&format!("v = {literal}"))
                    .unwrap_or_else(|e| panic!("{name}: default {literal} is not a TOML value: {e}"));
                parsed["v"].clone()
            });
            Key { name, default, env: cells[3].clone() }
        })
        .collect()
}

/// The required keys and one `[[api]]` entry, so that `api[]` defaults show too.
fn minimal() -> Table {
    let text = format!(
        "[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"bff\"\nclient_secret = \"contract-test\"\n\
         [session]\nsecret = \"{}\"\n[[api]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n",
        "contract-test-secret-".repeat(4)
    );
    toml::from_str(&text).unwrap()
}

/// The same with one `[[frontend]]` instead of the top-level `[oidc]` and `[[api]]` (the two
/// cannot be combined): its required keys, its `[frontend.oidc]` and one `[[frontend.api]]`. Its
/// path is `""`, so that `oidc.post_logout_redirect`'s documented default (`"/"`, the frontend's
/// root) is its default too.
fn minimal_frontends() -> Table {
    let text = format!(
        "[session]\nsecret = \"{}\"\n[[frontend]]\nname = \"main\"\n\
         [frontend.oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"bff\"\nclient_secret = \"contract-test\"\n\
         [[frontend.api]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n",
        "contract-test-secret-".repeat(4)
    );
    toml::from_str(&text).unwrap()
}

/// The tables of a `[[frontend]]` that take every key of a top-level section, as CONTRACT.md
/// says in prose instead of repeating their rows: (the frontend's table, the section).
const FRONTEND_COPIES: [(&str, &str); 2] = [("frontend[].oidc", "oidc"), ("frontend[].api[]", "api[]")];

/// The sections a file with `[[frontend]]` refuses at the top level: each frontend has its own.
const PER_FRONTEND: [&str; 2] = ["oidc", "api[]"];

/// `server`, `api[]`, `frontend[].session`: the section of a documented key; and its name.
fn split(key: &str) -> (&str, &str) {
    key.rsplit_once('.').unwrap_or_else(|| panic!("{key} has no section"))
}

fn is_frontend(key: &str) -> bool {
    key.starts_with("frontend[]")
}

/// Top-level keys a file with `[[frontend]]` tables refuses (each frontend has its own).
const REFUSED_WITH_FRONTENDS: &[&str] = &["server.static_dir", "session.cookie_name"];

/// The documented keys as they are written in a file with `[[frontend]]`: the rows of the shared
/// sections and of `[[frontend]]`, and each row of `[oidc]` and `[[api]]` inside the frontend.
fn frontend_file_keys(keys: &[Key]) -> Vec<(String, Option<Value>)> {
    let mut out = Vec::new();
    for key in keys {
        let (section, name) = split(&key.name);
        if let Some((copy, _)) = FRONTEND_COPIES.iter().find(|(_, of)| *of == section) {
            out.push((format!("{copy}.{name}"), key.default.clone()));
        } else if !PER_FRONTEND.contains(&section) && !REFUSED_WITH_FRONTENDS.contains(&key.name.as_str()) {
            out.push((key.name.clone(), key.default.clone()));
        }
    }
    out
}

/// The documented keys as they are written in a file without `[[frontend]]`.
fn plain_file_keys(keys: &[Key]) -> Vec<(String, Option<Value>)> {
    keys.iter().filter(|k| !is_frontend(&k.name)).map(|k| (k.name.clone(), k.default.clone())).collect()
}

/// The table a section path names in `table`: `server`, `api[]` (the first `[[api]]`),
/// `frontend[].session`, `frontend[].api[]`; made when missing.
fn section_mut<'t>(table: &'t mut Table, section: &str) -> &'t mut Table {
    let mut target = table;
    for part in section.split('.') {
        target = match part.strip_suffix("[]") {
            Some(array) => target
                .entry(array)
                .or_insert_with(|| Value::Array(vec![Value::Table(Table::new())]))
                .as_array_mut()
                .unwrap()[0]
                .as_table_mut()
                .unwrap(),
            None => target.entry(part).or_insert_with(|| Value::Table(Table::new())).as_table_mut().unwrap(),
        };
    }
    target
}

/// Sets `section.key`, `api[].key` (in the first `[[api]]` entry), `frontend[].session.key`…
fn set(table: &mut Table, key: &str, value: Value) {
    let (section, name) = split(key);
    section_mut(table, section).insert(name.to_string(), value);
}

fn load(table: &Table) -> Result<Config, bff::config::ConfigErrors> {
    Config::from_toml(&toml::to_string(table).unwrap())
}

fn printed(table: &Table) -> String {
    load(table).unwrap_or_else(|e| panic!("the configuration does not load:\n{e}")).to_redacted_toml()
}

/// `section.key`, `api[].key`, `frontend[].key`, `frontend[].oidc.key`… of a printed
/// configuration (tables as values, such as `extra_auth_params`, are not entered).
fn printed_keys(text: &str) -> BTreeSet<String> {
    fn walk(table: &Table, path: &str, keys: &mut BTreeSet<String>) {
        // Sections are at the top and in a `[[frontend]]`.
        let sections_here = path.is_empty() || path == "frontend[].";
        for (name, value) in table {
            let key = format!("{path}{name}");
            match value {
                Value::Table(t) if sections_here => walk(t, &format!("{key}."), keys),
                Value::Array(items) if sections_here && !items.is_empty() && items.iter().all(Value::is_table) => {
                    for item in items {
                        walk(item.as_table().unwrap(), &format!("{key}[]."), keys);
                    }
                }
                _ if path.is_empty() => panic!("unexpected top-level {name} = {value}"),
                _ => {
                    keys.insert(key);
                }
            }
        }
    }
    let mut keys = BTreeSet::new();
    walk(&toml::from_str(text).unwrap(), "", &mut keys);
    keys
}

/// Every key the loader accepts. The loader decides: each name written as a string literal in
/// `src/config/` is offered in each section (and as a section), and a key is accepted when the
/// loader does not call it unknown. The sources only suggest the names. A section inside
/// `[[frontend]]` is tried in a file with `[[frontend]]`, any other in one without.
fn accepted_keys(sections: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("src/config")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, _) in text.match_indices('"') {
            let name: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && text[i + 1 + name.len()..].starts_with('"') {
                names.insert(name);
            }
        }
    }
    let unknown = |table: &Table, path: &str| {
        load(table).err().is_some_and(|e| e.0.iter().any(|e| e.key == path && e.message.starts_with("unknown key")))
    };
    let mut accepted = BTreeSet::new();
    for name in &names {
        let mut table = minimal();
        if !table.contains_key(name.as_str()) {
            table.insert(name.clone(), Value::Table(Table::new()));
            if !unknown(&table, name) {
                accepted.insert(format!("[{name}]"));
            }
        }
        for section in sections {
            let mut table = if is_frontend(section) { minimal_frontends() } else { minimal() };
            set(&mut table, &format!("{section}.{name}"), Value::String("x".into()));
            if !unknown(&table, &format!("{}.{name}", section.replace("[]", "[0]"))) {
                accepted.insert(format!("{section}.{name}"));
            }
        }
    }
    accepted
}

/// No key in `table` is refused as unknown (values may still be refused).
fn assert_no_unknown_key(table: &Table, file: &str) {
    if let Err(errors) = load(table) {
        let unknown: Vec<String> =
            errors.0.iter().filter(|e| e.message.starts_with("unknown key")).map(|e| e.key.clone()).collect();
        assert!(unknown.is_empty(), "documented in CONTRACT.md but refused as unknown ({file}): {unknown:?}");
    }
}

fn bff() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bff"));
    for (name, _) in std::env::vars() {
        if name.starts_with("BFF_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn the_documented_commands_are_the_commands() {
    let out = bff().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: BTreeSet<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(|c| format!("bff {c}"))
        .collect();
    let documented: BTreeSet<String> =
        rows(&section(&contract(), "Command line")).iter().map(|cells| code(&cells[0]).unwrap().to_string()).collect();
    assert!(!commands.is_empty(), "no commands in:\n{help}");
    assert_eq!(documented, commands, "CONTRACT.md \"Command line\" against `bff --help`");
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_is_accepted() {
    let keys = documented_keys();
    let rows: BTreeSet<String> = keys.iter().map(|k| k.name.clone()).collect();
    assert_eq!(rows.len(), keys.len(), "a key is documented twice");
    assert!(rows.iter().any(|k| is_frontend(k)), "CONTRACT.md documents no frontend[] key");
    // With the keys `[frontend.oidc]` and `[[frontend.api]]` take from `[oidc]` and `[[api]]`.
    let documented: BTreeSet<String> =
        rows.iter().cloned().chain(frontend_file_keys(&keys).into_iter().map(|(name, _)| name)).collect();

    // What `bff check-config` prints is documented, with and without `[[frontend]]`.
    for (file, table) in [("without [[frontend]]", minimal()), ("with [[frontend]]", minimal_frontends())] {
        let shown = printed_keys(&printed(&table));
        let undocumented: Vec<_> = shown.difference(&documented).collect();
        assert!(undocumented.is_empty(), "printed by check-config ({file}) but not in CONTRACT.md: {undocumented:?}");
    }

    // Every key the loader accepts has a row, and every section it accepts is a documented one.
    let sections: BTreeSet<String> = documented.iter().map(|k| split(k).0.to_string()).collect();
    let accepted = accepted_keys(&sections);
    assert!(accepted.len() > 30, "the loader's keys were not found: {accepted:?}");
    for expected in
        ["frontend[].name", "frontend[].session.cookie_name", "frontend[].oidc.issuer", "frontend[].api[].prefix"]
    {
        assert!(accepted.contains(expected), "the loader's frontend keys were not found: {accepted:?}");
    }
    let is_section = |name: &str| sections.contains(name) || sections.contains(&format!("{name}[]"));
    let undocumented: Vec<_> = accepted
        .iter()
        .filter(|k| match k.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
            Some(top) => !is_section(top),
            // `frontend[].session` given a value: a section inside `[[frontend]]`.
            None => !documented.contains(*k) && !is_section(k),
        })
        .collect();
    assert!(undocumented.is_empty(), "accepted by the loader but not in CONTRACT.md: {undocumented:?}");

    // Every documented key is one the loader knows (its value may still be refused here): each
    // in the kind of file it belongs to.
    let every = |mut table: Table, keys: Vec<(String, Option<Value>)>| {
        for (name, default) in keys {
            set(&mut table, &name, default.unwrap_or(Value::String("x".into())));
        }
        table
    };
    assert_no_unknown_key(&every(minimal(), plain_file_keys(&keys)), "without [[frontend]]");
    assert_no_unknown_key(&every(minimal_frontends(), frontend_file_keys(&keys)), "with [[frontend]]");
}

#[test]
fn documented_defaults_are_the_defaults() {
    let keys = documented_keys();
    assert!(keys.iter().any(|k| is_frontend(&k.name) && k.default.is_some()), "no frontend[] default is documented");
    for (file, minimal, keys) in [
        ("without [[frontend]]", minimal(), plain_file_keys(&keys)),
        ("with [[frontend]]", minimal_frontends(), frontend_file_keys(&keys)),
    ] {
        let mut explicit = minimal.clone();
        let mut count = 0;
        for (name, default) in keys {
            if let Some(default) = default {
                set(&mut explicit, &name, default);
                count += 1;
            }
        }
        assert!(count > 30, "only {count} defaults found ({file})");
        assert_eq!(
            printed(&explicit),
            printed(&minimal),
            "{file}: every key set to its documented default changes something"
        );
    }
}

#[test]
fn documented_environment_names_set_their_keys() {
    let dir = std::env::temp_dir().join(format!("bff-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("minimal.toml");
    std::fs::write(&file, toml::to_string(&minimal()).unwrap()).unwrap();
    let check = |env: &[(String, String)]| {
        let out = bff().arg("check-config").arg("--config").arg(&file).envs(env.iter().cloned()).output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{env:?}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };

    let mut env = Vec::new();
    for key in documented_keys() {
        let (section, name) = split(&key.name);
        if section == "api[]" || is_frontend(section) {
            assert_eq!(key.env, "file only", "{}", key.name);
            continue;
        }
        let expected = format!("BFF_{}__{}", section.to_uppercase(), name.to_uppercase());
        assert_eq!(code(&key.env), Some(expected.as_str()), "the environment name of {}", key.name);
        if let Some(default) = key.default {
            let value = match default {
                Value::String(s) => s,
                other => other.to_string(),
            };
            env.push((expected, value));
        }
    }
    assert!(env.len() > 25);
    // Each name is a key the loader knows (an unknown one fails), and the documented default
    // given through it is the default.
    assert_eq!(check(&env), check(&[]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The error codes and statuses CONTRACT.md lists.
fn documented_errors() -> BTreeMap<String, u16> {
    rows(&section(&contract(), "Errors"))
        .iter()
        .map(|cells| (code(&cells[0]).unwrap().to_string(), cells[1].parse().expect("a status")))
        .collect()
}

/// Codes written as string literals in `src/` (outside the demo) after `pattern`.
fn codes_in_sources(pattern: &str) -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "demo") {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(ROOT).join("src"), &mut files);
    let mut codes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices(pattern) {
            let rest = &text[i + pattern.len()..];
            if let Some((code, _)) = rest.split_once('"')
                && !code.is_empty()
                && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                codes.insert(code.to_string());
            }
        }
    }
    codes
}

/// Every `AppError`, with every value of the enums some variants carry.
fn app_errors() -> Vec<AppError> {
    let limits = [
        Limit::HeaderSize,
        Limit::BodySize,
        Limit::UpstreamConcurrency,
        Limit::FrontendConcurrency,
        Limit::SessionConcurrency,
        Limit::AnonymousConcurrency,
        Limit::AddressConcurrency,
        Limit::LoginRate,
    ];
    let mut errors = vec![
        AppError::LoginRequired,
        AppError::StepUpRequired(bff::proxy::StepUp::default()),
        AppError::Csrf,
        AppError::NotFound,
        AppError::MethodNotAllowed("GET".into()),
        AppError::RequestTimeout,
        AppError::SessionStoreUnavailable,
        AppError::TokenRefreshUnavailable,
        AppError::ResourceNotGranted,
        AppError::ExchangeRefused,
        AppError::IdpUnavailable,
        AppError::UpstreamUnavailable,
        AppError::UpstreamTimeout,
        AppError::Internal,
        AppError::AdminUnauthorized,
        AppError::ConfigRefused,
        AppError::DeviceBinding(BindingRefusal::Unregistered),
        AppError::DeviceBinding(BindingRefusal::Missing),
    ];
    errors.extend(limits.map(AppError::Limited));
    errors.extend(limits.map(|l| AppError::LimitedFor(l, std::time::Duration::from_secs(1))));
    errors.extend(
        [
            BadRequest::InvalidPath,
            BadRequest::BadMethod,
            BadRequest::BadRequestBody,
            BadRequest::WebSocketDisabled,
            BadRequest::InvalidRequest,
            BadRequest::LoginParameter,
            BadRequest::DeviceProof,
        ]
        .map(AppError::BadRequest),
    );
    errors
}

/// Does not compile once `AppError`, `Limit` or `BadRequest` has a variant more: add it to
/// `app_errors` and the doc.
fn listed(error: &AppError) -> bool {
    let limit = |l: &Limit| match l {
        Limit::HeaderSize
        | Limit::BodySize
        | Limit::UpstreamConcurrency
        | Limit::FrontendConcurrency
        | Limit::SessionConcurrency
        | Limit::AnonymousConcurrency
        | Limit::AddressConcurrency
        | Limit::LoginRate => true,
    };
    match error {
        AppError::Limited(l) | AppError::LimitedFor(l, _) => limit(l),
        AppError::BadRequest(
            BadRequest::InvalidPath
            | BadRequest::BadMethod
            | BadRequest::BadRequestBody
            | BadRequest::WebSocketDisabled
            | BadRequest::InvalidRequest
            | BadRequest::LoginParameter
            | BadRequest::DeviceProof,
        ) => true,
        AppError::LoginRequired
        | AppError::StepUpRequired(_)
        | AppError::Csrf
        | AppError::NotFound
        | AppError::MethodNotAllowed(_)
        | AppError::RequestTimeout
        | AppError::SessionStoreUnavailable
        | AppError::TokenRefreshUnavailable
        | AppError::ResourceNotGranted
        | AppError::ExchangeRefused
        | AppError::IdpUnavailable
        | AppError::UpstreamUnavailable
        | AppError::UpstreamTimeout
        | AppError::Internal
        | AppError::AdminUnauthorized
        | AppError::ConfigRefused
        | AppError::DeviceBinding(_) => true,
    }
}

#[test]
fn every_error_code_is_documented_with_its_status() {
    let documented = documented_errors();
    let mut in_code = BTreeSet::new();
    for error in app_errors() {
        assert!(listed(&error));
        let (code, status) = (error.code(), error.status_code().as_u16());
        assert_eq!(documented.get(code), Some(&status), "CONTRACT.md \"Errors\": {code} answers {status}");
        in_code.insert(code.to_string());
    }
    // Answers built without `AppError` (back-channel logout, the SPA's 404).
    for code in codes_in_sources("\"error\": \"") {
        assert!(documented.contains_key(&code), "the code {code} is used in src/ but not in CONTRACT.md \"Errors\"");
        in_code.insert(code);
    }
    let stale: Vec<_> = documented.keys().filter(|c| !in_code.contains(*c)).collect();
    assert!(stale.is_empty(), "CONTRACT.md lists codes the program does not use: {stale:?}");
}

/// A bff on port 0 with the in-memory store and a provider that is never reachable.
async fn spawn_bff() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let mut table = minimal();
    set(&mut table, "server.listen", Value::String(listener.local_addr().unwrap().to_string()));
    set(&mut table, "server.public_url", Value::String(address.clone()));
    set(&mut table, "server.static_dir", Value::String(format!("{ROOT}/static")));
    set(&mut table, "server.templates_dir", Value::String(format!("{ROOT}/templates")));
    set(&mut table, "server.workers", Value::Integer(1));
    // `/metrics` is in the route table; on the main listener only when made public.
    set(&mut table, "server.metrics_public", Value::Boolean(true));
    // The DBSC routes are in the table; served with `session.dbsc` on.
    set(&mut table, "session.dbsc", Value::String("optional".into()));
    let app = bff::Application::build(load(&table).unwrap(), listener).await.unwrap();
    tokio::spawn(app.run_until_stopped());
    address
}

/// `GET /auth/user` → (GET, /auth/user); `ANY {api.prefix}/…` → (GET, /api/x); `GET /…` → (GET, /).
fn request_of(route: &str) -> (reqwest::Method, String) {
    let (method, path) = route.split_once(' ').unwrap();
    let method = if method == "ANY" { "GET" } else { method };
    let path = match path {
        "/…" => "/".to_string(),
        other => other.replace("{api.prefix}", "/api").replace('…', "x"),
    };
    (method.parse().unwrap(), path)
}

async fn error_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_else(|e| panic!("{status}: not JSON ({e})"));
    let object = body.as_object().unwrap_or_else(|| panic!("{status}: {body}"));
    assert_eq!(object.len(), 1, "an error body holds the code only: {body}");
    (status, object["error"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_routes_answer_and_errors_have_their_documented_shape_and_status() {
    let base = spawn_bff().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let documented = documented_errors();
    let send = |method: reqwest::Method, path: &str, csrf: bool| {
        let mut req = client.request(method.clone(), format!("{base}{path}"));
        if csrf {
            req = req.header("x-csrf", "1");
        }
        if method == reqwest::Method::POST {
            req = req.header("content-type", "application/x-www-form-urlencoded").body("");
        }
        req.send()
    };

    let routes = rows(&section(&contract(), "Routes"));
    assert!(routes.len() >= 10);
    for cells in &routes {
        let route = code(&cells[0]).unwrap();
        let (method, path) = request_of(route);
        let res = send(method.clone(), &path, true).await.unwrap();
        assert_ne!(res.status().as_u16(), 404, "{route} ({method} {path}) is documented but not served");
        if cells[1].contains("`X-CSRF: 1`") {
            let res = send(method.clone(), &path, false).await.unwrap();
            assert_eq!(error_code(res).await, (403, "csrf".to_string()), "{route} without X-CSRF");
        }
    }

    // Errors the program produces here, each as CONTRACT.md "Errors" says.
    let big_body = "x".repeat(70 * 1024);
    let big_header = "a".repeat(17 * 1024);
    let probes = [
        (client.get(format!("{base}/auth/user")).header("x-csrf", "1"), "login_required"),
        (client.get(format!("{base}/api/x")).header("x-csrf", "1"), "login_required"),
        (client.get(format!("{base}/api/x")), "csrf"),
        (
            client
                .get(format!("{base}/api/x"))
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("origin", "http://evil.example"),
            "csrf",
        ),
        (client.get(format!("{base}/api/a%2Fb")).header("x-csrf", "1"), "invalid_path"),
        (client.request(reqwest::Method::TRACE, format!("{base}/")), "method_not_allowed"),
        (client.get(format!("{base}/auth/logout")), "method_not_allowed"),
        (client.delete(format!("{base}/healthz")), "method_not_allowed"),
        (client.get(format!("{base}/auth/nope")), "not_found"),
        (client.get(format!("{base}/auth/login")), "idp_unavailable"),
        (client.post(format!("{base}/auth/logout")).header("x-csrf", "1").body(big_body), "payload_too_large"),
        (client.get(format!("{base}/healthz")).header("x-big", big_header), "headers_too_large"),
        (client.get(format!("{base}/no-such-file.json")), "not_found"),
        (
            client
                .post(format!("{base}/auth/backchannel-logout"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("logout_token="),
            "invalid_request",
        ),
    ];
    for (request, expected) in probes {
        let (status, code) = error_code(request.send().await.unwrap()).await;
        assert_eq!(code, expected);
        assert_eq!(documented.get(&code), Some(&status), "CONTRACT.md \"Errors\": {code} answered {status}");
    }
}

#[test]
fn the_readme_reference_names_every_error_code_and_every_api_key() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("read README.md");
    let missing: Vec<_> =
        documented_errors().into_keys().filter(|code| !readme.contains(&format!("`{code}`"))).collect();
    assert!(missing.is_empty(), "error codes missing from the README's reference: {missing:?}");
    let api_keys: Vec<String> = documented_keys()
        .into_iter()
        .filter_map(|k| k.name.strip_prefix("api[].").map(String::from))
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(api_keys.is_empty(), "[[api]] keys missing from the README's reference: {api_keys:?}");
}
