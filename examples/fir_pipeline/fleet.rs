//! `REDIS_URL`: this replica joins a fleet coordinated through Redis (the
//! demo is built with `redis`): one replica at a time recovers each
//! dependency, the others wait on it and probe at its success, `/reliability`
//! shows the fleet, admin POSTs take `?scope=fleet`.
//!
//! `FLEET_REPLICA_ID` names this replica (default `$HOSTNAME-pid`),
//! `FLEET_LEASE_TTL` is a recovery lease's time to live in seconds (default
//! 10), `FLEET_FALLBACK=local|wait` what to do while Redis is unreachable
//! (default `local`: recover on this replica's own).

use tower_recovery::admin::Admin;
use tower_recovery::recovery::Builder;

#[cfg(feature = "redis")]
pub(crate) type Membership = Option<tower_recovery::fleet::Fleet>;
#[cfg(not(feature = "redis"))]
pub(crate) type Membership = ();

/// Joins the fleet `REDIS_URL` names, if set; else the settings' errors.
#[cfg(feature = "redis")]
pub(crate) fn join() -> Result<Membership, Vec<String>> {
    use std::time::Duration;
    use tower_recovery::fleet::{Fallback, Fleet, RedisCoordinator};

    let Ok(url) = std::env::var("REDIS_URL") else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let coordinator = RedisCoordinator::new(url.trim())
        .map_err(|e| problems.push(format!("REDIS_URL: {e}")))
        .ok();
    let ttl = match std::env::var("FLEET_LEASE_TTL") {
        Err(_) => None,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && (0.1..=3600.0).contains(&s) => {
                Some(Duration::from_secs_f64(s))
            }
            _ => {
                problems.push(format!(
                    "invalid FLEET_LEASE_TTL={v:?}: expected seconds, from 0.1 to 3600"
                ));
                None
            }
        },
    };
    let fallback = match std::env::var("FLEET_FALLBACK").as_deref().map(str::trim) {
        Err(_) | Ok("local") => Fallback::Local,
        Ok("wait") => Fallback::Wait,
        Ok(other) => {
            problems.push(format!(
                "invalid FLEET_FALLBACK={other:?}: expected local or wait"
            ));
            Fallback::Local
        }
    };
    let Some(coordinator) = coordinator.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    let mut builder = Fleet::builder(coordinator).fallback(fallback);
    if let Ok(id) = std::env::var("FLEET_REPLICA_ID") {
        builder = builder.replica_id(id.trim());
    }
    if let Some(ttl) = ttl {
        builder = builder.lease_ttl(ttl);
    }
    let fleet = builder.spawn();
    tracing::info!(replica = fleet.replica_id(), "joining the fleet at {url}");
    Ok(Some(fleet))
}

/// `REDIS_URL` needs the `redis` feature.
#[cfg(not(feature = "redis"))]
pub(crate) fn join() -> Result<Membership, Vec<String>> {
    match std::env::var("REDIS_URL") {
        Ok(_) => Err(vec![
            "REDIS_URL is set, but this demo was built without the redis feature \
             (cargo run --features redis --example fir_pipeline)"
                .to_string(),
        ]),
        Err(_) => Ok(()),
    }
}

/// The recovery, coordinated with the fleet when there is one.
pub(crate) fn recovery(builder: Builder, _fleet: &Membership) -> Builder {
    #[cfg(feature = "redis")]
    if let Some(fleet) = _fleet {
        return builder.fleet(fleet);
    }
    builder
}

/// The admin routes, reporting the fleet when there is one.
pub(crate) fn admin(admin: Admin, _fleet: &Membership) -> Admin {
    #[cfg(feature = "redis")]
    if let Some(fleet) = _fleet {
        return admin.fleet(fleet);
    }
    admin
}
