//! The suite's canary scan. Everything tokenvault shows in a test process (API answers,
//! pages, the service's log lines, the CLI's output) is recorded here as the harness
//! receives it; when a test's OAuth server stops, every secret it handed out (tokens,
//! codes, JWTs) and its client secrets are looked for in all of it.
//!
//! A token may appear in one place only: the `access_token`, `refresh_token` and
//! `id_token` fields of a token answer (an object with an `access_token`, or the `token`
//! of `get --link`'s answer), which is what `get` and `refresh` return. Those fields are
//! dropped before a JSON answer is recorded.

use std::sync::Mutex;

use serde_json::Value;

/// What was shown, and where: `GET /v1/…`, `serve log`, `tokenvault list`.
struct Shown {
    source: String,
    text: String,
}

static SHOWN: Mutex<Vec<Shown>> = Mutex::new(Vec::new());

/// Fields that carry a token in a token answer, and nowhere else.
const TOKEN_FIELDS: [&str; 3] = ["access_token", "refresh_token", "id_token"];

/// Record text tokenvault showed.
pub fn record(source: impl Into<String>, text: &str) {
    if text.is_empty() {
        return;
    }
    let shown = Shown { source: source.into(), text: text.to_owned() };
    SHOWN.lock().unwrap_or_else(|e| e.into_inner()).push(shown);
}

/// Record an answer that may be a token answer: its token fields are where tokens belong.
pub fn record_answer(source: impl Into<String>, text: &str) {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut answer)) => {
            drop_token_fields(&mut answer);
            // `get --link` answers a token as {"token": {…}}.
            if let Some(Value::Object(token)) = answer.get_mut("token") {
                drop_token_fields(token);
            }
            record(source, &Value::Object(answer).to_string());
        }
        _ => record(source, text),
    }
}

fn drop_token_fields(answer: &mut serde_json::Map<String, Value>) {
    if answer.contains_key("access_token") {
        for field in TOKEN_FIELDS {
            answer.remove(field);
        }
    }
}

/// Every recorded text that holds one of `secrets`: `(source, text with the secret masked)`.
pub fn findings(secrets: &[String]) -> Vec<(String, String)> {
    let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    // By length: each text's windows of that length looked up in a set, so thousands of
    // texts against thousands of secrets (a soak's) take seconds, not an hour.
    let mut by_length: std::collections::HashMap<usize, std::collections::HashSet<&str>> = Default::default();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        by_length.entry(secret.len()).or_default().insert(secret.as_str());
    }
    shown
        .iter()
        .filter_map(|shown| {
            let text = shown.text.as_bytes();
            let mut found: Vec<&str> = Vec::new();
            for (length, set) in &by_length {
                for window in text.windows(*length) {
                    if let Ok(window) = std::str::from_utf8(window)
                        && set.contains(window)
                        && !found.contains(&window)
                    {
                        found.push(set.get(window).copied().unwrap_or(window));
                    }
                }
            }
            (!found.is_empty()).then(|| {
                let masked = found.iter().fold(shown.text.clone(), |text, s| text.replace(s, "<SECRET>"));
                (shown.source.clone(), masked)
            })
        })
        .collect()
}

/// How many texts were recorded so far in this process.
pub fn recorded() -> usize {
    SHOWN.lock().unwrap_or_else(|e| e.into_inner()).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_outside_a_token_answers_token_fields_is_found() {
        let token = crate::random_value("canary-token-");
        let answer = serde_json::json!({ "access_token": token, "refresh_token": token, "provider": "idp" });
        record_answer("GET token", &answer.to_string());
        assert!(findings(std::slice::from_ref(&token)).is_empty(), "a token answer's own fields are allowed");

        record_answer("get --link", &serde_json::json!({ "token": answer }).to_string());
        assert!(findings(std::slice::from_ref(&token)).is_empty(), "nor is get --link's token");

        let listed = serde_json::json!([{ "access_token": token }]);
        record_answer("GET list", &listed.to_string());
        record("serve log", &format!("refreshed with {token}"));
        let found = findings(std::slice::from_ref(&token));
        let sources: Vec<&str> = found.iter().map(|(source, _)| source.as_str()).collect();
        assert_eq!(sources, ["GET list", "serve log"]);
        assert!(found.iter().all(|(_, text)| !text.contains(&token) && text.contains("<SECRET>")));
    }
}
