//! Settings as rows: each setting is one [`Setting`] (its flag, its variable, vendor variables
//! it also honours, its key in a config file, and one line for `--help`), read by a [`Reader`]
//! that takes the first source that is set and parses it with a plain function.
//!
//! Why a reader rather than `clap`'s `env`: the order is flag > our variable > a vendor's
//! variable (`VAULT_ADDR`, `AZURE_CLIENT_ID`, …) > a config file > default, and clap knows only
//! the first two; and a bad value must not stop the reading. Every bad setting is collected and
//! reported together ([`ConfigErrors`]), each naming the flag, variable or file key it came
//! from, so an operator fixes a pod spec in one round instead of one per restart.
//!
//! A sidecar lists its rows once (`const SETTINGS: &[&Setting]`) and generates the
//! environment part of `--help` from the same list ([`env_help`]), so the two cannot drift.

use std::collections::BTreeMap;
use std::fmt;

use workload_client::Env;
use workload_client::ResolvedEndpoint;

use crate::{ConfigError, config};

/// One setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The flag, with its dashes (`--audience`).
    pub flag: &'static str,
    /// Our environment variable.
    pub env: &'static str,
    /// Other programs' variables read after ours, in order (`VAULT_ADDR`).
    pub fallbacks: &'static [&'static str],
    /// The key in the config file, if the sidecar reads one and this setting is in it.
    pub file_key: Option<&'static str>,
    /// One line for `--help`: what it is, and its default.
    pub about: &'static str,
}

impl Setting {
    /// A setting read from a flag and one variable.
    pub const fn new(flag: &'static str, env: &'static str, about: &'static str) -> Self {
        Self {
            flag,
            env,
            fallbacks: &[],
            file_key: None,
            about,
        }
    }

    /// Also read from these variables of other programs, after ours.
    #[must_use]
    pub const fn or_env(mut self, fallbacks: &'static [&'static str]) -> Self {
        self.fallbacks = fallbacks;
        self
    }

    /// Also read from this key of the config file, after every variable.
    #[must_use]
    pub const fn file_key(mut self, key: &'static str) -> Self {
        self.file_key = Some(key);
        self
    }
}

// === The rows every sidecar shares ===

impl Setting {
    /// `--socket` under the sidecar's variable `env`: the Workload API address, read with
    /// [`Reader::workload_api`] (then `SPIFFE_ENDPOINT_SOCKET`, then the CSI default).
    pub const fn workload_api(env: &'static str) -> Self {
        Self::new(
            "--socket",
            env,
            "Workload API address, unix:///path or tcp://IP:PORT [default: SPIFFE_ENDPOINT_SOCKET, then unix:///run/secrets/workload-spiffe-uds/socket]",
        )
    }

    /// `--log-format` under the sidecar's variable `env`.
    pub const fn log_format(env: &'static str) -> Self {
        Self::new("--log-format", env, "text or json [default: text]")
    }
}

/// A value and the flag, variable or file key it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced {
    /// Where it came from: `--audience`, `SPIFFE_IAM_BROKER_AUDIENCE`, `audience in helper.conf`.
    pub setting: String,
    /// The value as given.
    pub value: String,
}

/// Every bad setting found, in reading order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} settings are invalid:", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// Reads settings from flags (handed in by the caller, parsed by clap), the environment (an
/// [`Env`], so tests feed a map) and an optional config file, collecting errors.
pub struct Reader<'a> {
    env: &'a dyn Env,
    file: BTreeMap<String, String>,
    file_name: String,
    errors: Vec<ConfigError>,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("file_name", &self.file_name)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

// === impl Reader ===

impl<'a> Reader<'a> {
    /// A reader of `env` with no config file.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            file: BTreeMap::new(),
            file_name: String::new(),
            errors: Vec::new(),
        }
    }

    /// Adds a parsed config file (`key → value`), named in error messages.
    #[must_use]
    pub fn with_file(mut self, file: BTreeMap<String, String>, name: impl Into<String>) -> Self {
        self.file = file;
        self.file_name = name.into();
        self
    }

    /// The environment this reader reads.
    pub fn env(&self) -> &'a dyn Env {
        self.env
    }

    /// The first source of `setting` that is set and not empty: `flag`, our variable, the
    /// fallback variables in order, then the file key.
    pub fn raw(&self, setting: &Setting, flag: Option<&str>) -> Option<Sourced> {
        if let Some(v) = flag.filter(|v| !v.is_empty()) {
            return Some(Sourced {
                setting: setting.flag.to_owned(),
                value: v.to_owned(),
            });
        }
        for var in std::iter::once(setting.env).chain(setting.fallbacks.iter().copied()) {
            if let Some(v) = self.env.var(var).filter(|v| !v.is_empty()) {
                return Some(Sourced {
                    setting: var.to_owned(),
                    value: v,
                });
            }
        }
        self.file_value(setting.file_key?)
    }

    /// A config file key that has no flag or variable of its own (the upstream helper's `host`
    /// and `port`), named as the reader names file keys.
    pub fn file_value(&self, key: &str) -> Option<Sourced> {
        self.file.get(key).map(|v| Sourced {
            setting: format!("{key} in {}", self.file_name),
            value: v.clone(),
        })
    }

    /// The parsed value if set; `None` if unset or invalid (the error is recorded).
    pub fn get<T>(
        &mut self,
        setting: &Setting,
        flag: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let sourced = self.raw(setting, flag)?;
        match parse(&sourced.value) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.errors
                    .push(ConfigError::new(sourced.setting, sourced.value, reason));
                None
            }
        }
    }

    /// The parsed value, or `default` when unset (or invalid: the error is recorded and the
    /// configuration fails at [`Reader::finish`] anyway).
    pub fn get_or<T>(
        &mut self,
        setting: &Setting,
        flag: Option<&str>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        self.get(setting, flag, parse).unwrap_or(default)
    }

    /// The parsed value; unset is an error saying where it can be given.
    pub fn required<T>(
        &mut self,
        setting: &Setting,
        flag: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        if self.raw(setting, flag).is_none() {
            let mut places = vec![setting.flag.to_owned(), setting.env.to_owned()];
            places.extend(setting.fallbacks.iter().map(|v| (*v).to_owned()));
            if let Some(key) = setting.file_key {
                places.push(format!("`{key}` in the config file"));
            }
            self.errors.push(ConfigError::new(
                setting.env,
                "",
                format!("required: give it with {}", places.join(" or ")),
            ));
            return None;
        }
        self.get(setting, flag, parse)
    }

    /// A repeatable flag, else a comma-separated variable (then fallbacks); each item parsed,
    /// each bad one recorded. Empty items are skipped.
    pub fn list<T>(
        &mut self,
        setting: &Setting,
        flags: &[String],
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let items: Vec<(String, String)> = if flags.is_empty() {
            match self.raw(setting, None) {
                Some(s) => s
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| (s.setting.clone(), v.to_owned()))
                    .collect(),
                None => Vec::new(),
            }
        } else {
            flags
                .iter()
                .filter(|v| !v.is_empty())
                .map(|v| (setting.flag.to_owned(), v.clone()))
                .collect()
        };
        let mut out = Vec::with_capacity(items.len());
        for (source, item) in items {
            match parse(&item) {
                Ok(v) => out.push(v),
                Err(reason) => self.errors.push(ConfigError::new(source, item, reason)),
            }
        }
        out
    }

    /// The Workload API endpoint every sidecar reads alike: `setting` (flag, variable, file key)
    /// if set, else `SPIFFE_ENDPOINT_SOCKET`, else the CSI default; a malformed address is an
    /// error naming where it came from.
    pub fn workload_api(
        &mut self,
        setting: &Setting,
        flag: Option<&str>,
    ) -> Option<ResolvedEndpoint> {
        let picked = self.raw(setting, flag).map(|s| (s.setting, s.value));
        let resolved = config::workload_api(picked, self.env);
        self.check(resolved)
    }

    /// Records an error found across settings (two that conflict, say).
    pub fn error(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Records the error of a check that returns one.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    /// Whether a bad setting was found so far.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// `Ok` if every setting read was valid; otherwise all the errors.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Adapts a validator of [`crate::config`] (`f(setting, value)`) to [`Reader::get`]'s parser:
/// the reader names the setting, so only the reason is kept.
pub fn reason<T>(
    f: impl FnOnce(&str, &str) -> Result<T, ConfigError>,
) -> impl FnOnce(&str) -> Result<T, String> {
    move |v| f("", v).map_err(|e| e.reason)
}

/// The environment part of `--help`, from the rows: each variable, the fallbacks and file key
/// it shares with, and what it is.
pub fn env_help(settings: &[&Setting]) -> String {
    let width = settings.iter().map(|s| s.env.len()).max().unwrap_or(0);
    let mut out = String::from("Environment (a flag wins over its variable):\n");
    for s in settings {
        let mut also = Vec::new();
        if !s.fallbacks.is_empty() {
            also.push(format!("then {}", s.fallbacks.join(", ")));
        }
        if let Some(key) = s.file_key {
            also.push(format!("then `{key}` in the file"));
        }
        let also = if also.is_empty() {
            String::new()
        } else {
            format!(" ({})", also.join("; "))
        };
        out.push_str(&format!(
            "  {:width$}  {}: {}{also}\n",
            s.env, s.flag, s.about
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ADDR: Setting = Setting::new("--vault-addr", "OURS_VAULT_ADDR", "Vault's address")
        .or_env(&["VAULT_ADDR"])
        .file_key("vault_addr");
    const ROLE: Setting = Setting::new("--role", "OURS_ROLE", "the role [required]");
    const PORTS: Setting = Setting::new("--port", "OURS_PORTS", "ports, comma-separated");

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn port(v: &str) -> Result<u16, String> {
        v.parse().map_err(|_| "expected a port".to_owned())
    }

    #[test]
    fn flag_then_ours_then_theirs_then_the_file() {
        let file: BTreeMap<String, String> =
            [("vault_addr".to_owned(), "from-file".to_owned())].into();
        let all = env(&[("OURS_VAULT_ADDR", "ours"), ("VAULT_ADDR", "theirs")]);
        let r = Reader::new(&all).with_file(file.clone(), "agent.hcl");
        let got = |flag| r.raw(&ADDR, flag).map(|s| (s.setting, s.value));
        assert_eq!(
            got(Some("flag")),
            Some(("--vault-addr".into(), "flag".into()))
        );
        assert_eq!(got(None), Some(("OURS_VAULT_ADDR".into(), "ours".into())));
        let theirs = env(&[("OURS_VAULT_ADDR", ""), ("VAULT_ADDR", "theirs")]);
        let r = Reader::new(&theirs).with_file(file.clone(), "agent.hcl");
        assert_eq!(
            r.raw(&ADDR, Some("")).map(|s| (s.setting, s.value)),
            Some(("VAULT_ADDR".into(), "theirs".into()))
        );
        let none = env(&[]);
        let r = Reader::new(&none).with_file(file, "agent.hcl");
        assert_eq!(
            r.raw(&ADDR, None).map(|s| s.setting),
            Some("vault_addr in agent.hcl".into())
        );
    }

    #[test]
    fn every_bad_setting_is_reported_at_once_naming_its_source() {
        let vars = env(&[("OURS_PORTS", "80, x, 443,"), ("VAULT_ADDR", "bad")]);
        let mut r = Reader::new(&vars);
        let addr = r.get(&ADDR, None, |v| {
            if v.starts_with("https://") {
                Ok(v.to_owned())
            } else {
                Err("expected https://".to_owned())
            }
        });
        let role = r.required(&ROLE, None, |v| Ok(v.to_owned()));
        let ports = r.list(&PORTS, &[], port);
        assert_eq!((addr, role), (None, None));
        assert_eq!(ports, [80, 443]);
        let errors = r.finish().unwrap_err();
        let settings: Vec<&str> = errors.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(settings, ["VAULT_ADDR", "OURS_ROLE", "OURS_PORTS"]);
        let text = errors.to_string();
        assert!(text.starts_with("3 settings are invalid:"), "{text}");
        assert!(text.contains("--role or OURS_ROLE"), "{text}");
        assert!(text.contains("\"x\""), "{text}");
    }

    #[test]
    fn repeated_flags_win_over_the_variable() {
        let vars = env(&[("OURS_PORTS", "1,2")]);
        let mut r = Reader::new(&vars);
        assert_eq!(r.list(&PORTS, &["3".to_owned()], port), [3]);
        assert_eq!(
            r.get_or(&ROLE, None, "none".to_owned(), |v| Ok(v.to_owned())),
            "none"
        );
        assert!(r.finish().is_ok());
    }

    #[test]
    fn help_lists_every_row_with_its_fallbacks() {
        let help = env_help(&[&ADDR, &ROLE]);
        assert!(help.contains("OURS_VAULT_ADDR  --vault-addr: Vault's address (then VAULT_ADDR; then `vault_addr` in the file)"), "{help}");
        assert!(help.contains("OURS_ROLE"), "{help}");
        assert_eq!(help.lines().count(), 3);
    }
}
