//! The sign-in page: a bulkhead token in, a session cookie out.

use maud::{html, Markup};

use super::layout::shell;

/// `/ui/login`, with the refusal of the last attempt, if any.
pub fn sign_in(refused: Option<&str>) -> Markup {
    shell(
        "Sign in",
        html! {
            main.signin {
                h1 { "Sign in to bulkhead" }
                @if let Some(sentence) = refused { p.refusal role="alert" { (sentence) } }
                form.card method="post" action="/ui/login" {
                    label for="token" { "Your bulkhead token" }
                    input #token type="password" name="token" autocomplete="off" required autofocus;
                    button type="submit" { "Sign in" }
                    p.muted {
                        "A token of your own, as " code { "bulkhead token create --principal NAME" }
                        " prints it. The dashboard keeps a session cookie, not the token."
                    }
                }
            }
        },
    )
}
