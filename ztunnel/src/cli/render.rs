//! Text rendering helpers: colour decisions and verdict wording.

use std::io::IsTerminal;

use owo_colors::OwoColorize;
use policy::eval::{Allow, SideVerdict};

use super::ColorChoice;

/// Whether to colour output on stdout.
pub fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal(),
    }
}

/// Paints `s` green or red when colour is on.
pub fn paint(s: &str, good: bool, color: bool) -> String {
    match (color, good) {
        (false, _) => s.to_string(),
        (true, true) => s.green().bold().to_string(),
        (true, false) => s.red().bold().to_string(),
    }
}

/// Dims `s` when colour is on.
pub fn dim(s: &str, color: bool) -> String {
    if color { s.dimmed().to_string() } else { s.to_string() }
}

/// One line explaining a direction's verdict.
pub fn explain(side: &SideVerdict) -> String {
    match side {
        SideVerdict::Allowed(Allow::NotSubject) => "allowed: not a pod subject to NetworkPolicy".into(),
        SideVerdict::Allowed(Allow::NotIsolated) => "allowed: no policy selects the pod for this direction".into(),
        SideVerdict::Allowed(Allow::SelfTraffic) => "allowed: a pod can always reach itself".into(),
        SideVerdict::Allowed(Allow::NodeTraffic) => "allowed: traffic between a pod and its own node".into(),
        SideVerdict::Allowed(Allow::Rule { policy, rule }) => {
            format!("allowed by NetworkPolicy {policy}, rule {rule}")
        }
        SideVerdict::Denied { isolated_by } => {
            let names: Vec<String> = isolated_by.iter().map(ToString::to_string).collect();
            format!("denied: isolated by {} and no rule matches", names.join(", "))
        }
    }
}
