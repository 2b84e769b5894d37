//! The rules names must follow: environments (which also begin change ids) and principals
//! (teams, users, services), each with the pattern a refused name is shown.

/// A rule a name must follow: its test, and the pattern that says it in messages.
pub(super) struct NameRule {
    pub(super) allows: fn(&str) -> bool,
    pub(super) pattern: &'static str,
}

/// The names an environment may have.
pub(super) const ENVIRONMENT: NameRule = NameRule {
    allows: environment_name_ok,
    pattern: "[a-z0-9][a-z0-9-]*",
};

/// The names a team, user or service may have.
pub(super) const PRINCIPAL: NameRule = NameRule {
    allows: principal_name_ok,
    pattern: "[A-Za-z0-9][A-Za-z0-9._@-]*",
};

/// `[a-z0-9][a-z0-9-]*`: the names an environment may have (and change ids start with).
pub fn environment_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn principal_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}
