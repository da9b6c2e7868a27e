//! `?scope=fleet` on the admin POSTs: the action is applied here (by the
//! route, as without the parameter), then, if that succeeded, broadcast to
//! every replica of the fleet, which applies it at once and reports it in
//! its own `/reliability` (`fleet.commands_applied`).
//!
//! Without it, a reset, force-open or disable of a dependency for which a
//! fleet-wide manual state stands is applied here alone, as asked (the
//! fleet does not fight an operator's local decision), and its answer says
//! that the fleet's state stands and whether this replica now diverges
//! from it.

use axum::RequestExt;
use axum::body::Body;
use axum::extract::{RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::{Action, Fleet};

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// The middleware on the admin router.
pub(crate) async fn fleet_scope(
    State(fleet): State<Option<Fleet>>,
    mut request: Request,
    next: Next,
) -> Response {
    // `scope=fleet`, `scope=local` (the default) or nothing: any other
    // scope is refused, so that a typo is not applied here alone while the
    // operator believes it went fleet-wide. On a POST, so is any other
    // query parameter (a mistyped key: none of these routes takes one) and
    // a second scope.
    let query = request.uri().query().unwrap_or("");
    let pairs = query.split('&').filter(|kv| !kv.is_empty());
    if request.method() == Method::POST {
        let mut scopes = 0;
        for kv in pairs.clone() {
            let key = kv.split_once('=').map_or(kv, |(k, _)| k);
            if key != "scope" || !kv.contains('=') {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("?{kv}: expected scope=fleet or scope=local"),
                );
            }
            scopes += 1;
        }
        if scopes > 1 {
            return refuse(StatusCode::BAD_REQUEST, "scope given more than once");
        }
    }
    let scope = pairs
        .clone()
        .find_map(|kv| kv.strip_prefix("scope="))
        .map(str::to_owned);
    let fleet_scope = match scope.as_deref() {
        None | Some("local") => false,
        Some("fleet") => request.method() == Method::POST,
        Some(_) if request.method() != Method::POST => false,
        Some(other) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("scope={other}: expected scope=fleet or scope=local"),
            );
        }
    };
    // The route's last segment says which action (the name before it is
    // taken decoded from the route's captures).
    let action = action_of(request.uri().path());
    if !fleet_scope {
        return match (&fleet, action) {
            (Some(fleet), Some(action))
                if request.method() == Method::POST && action.is_manual_state() =>
            {
                local(fleet, action, request, next).await
            }
            _ => next.run(request).await,
        };
    }
    let Some(action) = action else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "scope=fleet applies to trigger, reset, force-open and disable only",
        );
    };
    let Some(fleet) = fleet else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "scope=fleet: this replica is in no fleet (Admin::fleet)",
        );
    };
    let Some(name) = name_of(&mut request).await else {
        return refuse(StatusCode::BAD_REQUEST, "no dependency named");
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let (mut parts, mut value) = json_of(response).await;
    match fleet.broadcast(&name, action).await {
        Ok(subscribed) => {
            value["fleet"] = json!({
                "scope": "fleet",
                "sent": true,
                "action": action.as_str(),
                "replicas_subscribed": subscribed,
            });
        }
        Err(e) => {
            parts.status = StatusCode::SERVICE_UNAVAILABLE;
            value["error"] = json!(format!("applied on this replica only: {e}"));
            value["fleet"] = json!({
                "scope": "fleet",
                "sent": false,
                "action": action.as_str(),
            });
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}

/// The fleet action an admin POST's path names, if any.
fn action_of(path: &str) -> Option<Action> {
    let segments: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(3).collect();
    Some(match segments.as_slice() {
        ["trigger", _, "auto-recovery"] => Action::Trigger,
        ["reset", _, "circuit-breaker"] => Action::Reset,
        ["force-open", _, "circuit-breaker"] => Action::ForceOpen,
        ["disable", _, "circuit-breaker"] => Action::Disable,
        _ => return None,
    })
}

/// The dependency the route names (decoded).
async fn name_of(request: &mut Request) -> Option<String> {
    match request.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "name")
            .map(|(_, v)| v.to_owned()),
        Err(_) => None,
    }
}

/// A route's answer, as JSON to add to.
async fn json_of(response: Response) -> (http::response::Parts, Value) {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
    (parts, value)
}

/// A local reset, force-open or disable: applied as asked; if a fleet-wide
/// manual state stands for the dependency, the answer says so and whether
/// this replica now diverges from it (and a diverging one is logged).
async fn local(fleet: &Fleet, action: Action, mut request: Request, next: Next) -> Response {
    let Some(name) = name_of(&mut request).await else {
        return next.run(request).await;
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let status = fleet.status();
    let Some(standing) = status
        .dependencies
        .iter()
        .find(|d| *d.name == *name)
        .and_then(|d| d.standing.clone())
    else {
        return response;
    };
    let diverges = standing.diverges();
    if diverges {
        tracing::warn!(
            dependency = name.as_str(),
            action = action.as_str(),
            standing = standing.command.action.as_str(),
            command = standing.command.id,
            from = &*standing.command.from,
            "Local {} of '{name}' while the fleet-wide {} from replica '{}' stands: \
             this replica now diverges from the fleet (reported in /reliability)",
            action.as_str(),
            standing.command.action.as_str(),
            standing.command.from
        );
    }
    let (mut parts, mut value) = json_of(response).await;
    value["fleet"] = json!({
        "scope": "local",
        "standing": standing.command.action.as_str(),
        "command": standing.command.id,
        "from": &*standing.command.from,
        "diverges": diverges,
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}
