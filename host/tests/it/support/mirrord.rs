//! The repository's `.mirrord/*.json` as a mirrord session sees them: rendered the way mirrord's
//! Tera pass renders them before parsing, for the schema checks and the queue-splitting simulation.

use std::collections::BTreeMap;

use serde_json::Value;

/// The developer's email pattern the tests render the configs with (`[.]`, not `\.`: the
/// template is spliced into JSON text before it is parsed).
pub const SESSION_EMAIL_PATTERN: &str = "alice[.]dev(?:[+][a-z0-9]+)?@metalbear[.]com";

/// Every `.mirrord/*.json` as `(file name, text as written)`, sorted by name.
pub fn configs() -> Vec<(String, String)> {
    let mut configs: Vec<(String, String)> = std::fs::read_dir(super::root().join(".mirrord"))
        .expect(".mirrord/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    configs.sort();
    configs
}

/// What mirrord's Tera pass does to the two template forms these files use: `{{ key }}` and
/// `{{ get_env(name="VAR") }}` (a missing variable is an error there too).
pub fn render(text: &str, key: &str, vars: &BTreeMap<&str, &str>) -> String {
    let get_env = regex::Regex::new(r#"\{\{\s*get_env\(name=\\?"([A-Z_]+)\\?"\)\s*\}\}"#).unwrap();
    let text = get_env.replace_all(text, |c: &regex::Captures<'_>| {
        vars.get(&c[1]).unwrap_or_else(|| panic!("the template needs {}", &c[1])).to_string()
    });
    let key_re = regex::Regex::new(r"\{\{\s*key\s*\}\}").unwrap();
    key_re.replace_all(&text, key).into_owned()
}

/// `file` rendered for session `key` with [`SESSION_EMAIL_PATTERN`], parsed.
pub fn session_config(file: &str, key: &str) -> Value {
    let (_, text) =
        configs().into_iter().find(|(n, _)| n == file).unwrap_or_else(|| panic!("no .mirrord/{file}"));
    let vars = BTreeMap::from([("MIRRORD_EMAIL_PATTERN", SESSION_EMAIL_PATTERN)]);
    serde_json::from_str(&render(&text, key, &vars)).expect("the rendered config is JSON")
}
